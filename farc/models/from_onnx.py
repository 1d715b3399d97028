"""An ONNX file -> GraphModel (farc.models.graph): every node mapped to farc modules or
digital steps, nothing of the file executed.

The graph is read as protobuf data. Weights in external data files (torch's default
exporter writes them, `<model>.onnx.data`) are read only from files inside the model's
folder: a location that is absolute, climbs out ("..") or resolves outside it (a symlink),
a byte range past the file's end, or a length that does not match the tensor's shape is
refused in one line before anything is allocated; the model's recorded sha256 covers those
files too, so verify notices a changed weights file. Every node's op is checked
against `SUPPORTED` before anything is built, so an unsupported graph is refused with one
line naming every unsupported op, its first node and its node count
(farc.models.onnx_scan, which `farc compile` also runs on the file before importing onnx).
Shape arithmetic (Shape, Gather, Concat, Unsqueeze, Cast, ... on constants) is folded here
at batch 1; a symbolic dimension is allowed only on the input's batch axis. Expand of a constant
is folded to a constant (within the memory budget); Expand of a computed tensor only where
it leaves the shape unchanged. Erf counts as
supported only inside the exact-GELU pattern 0.5 * x * (1 + erf(x / sqrt 2)) (any
association of the two products), which becomes one gelu. LSTM: forward, reverse or
bidirectional, layout 0 or 1, with or without B, initial_h/initial_c absent, zero or
constant (the same for every batch row; the Expand of a constant torch's default
exporter writes for a zero state is folded here), default activations, no peepholes, clip or
sequence lengths; each direction becomes one single-direction nn.LSTM (gates reordered from
ONNX's i, o, f, c to PyTorch's i, f, g, o). GRU: the same directions, layouts, B and
initial_h, linear_before_reset 0 or 1; each direction one farc.models.gru.GRU (gates
reordered from ONNX's z, r, h to PyTorch's r, z, n)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch

from farc.errors import CheckpointError
from farc.limits import check_memory
from farc.models.graph import (
    FinalCellState,
    GraphBuilder,
    GraphModel,
    NotATensor,
    UnsupportedModelError,
    Val,
    as_val,
)
from farc.models.onnx_scan import (
    SUPPORTED,  # noqa: F401 (re-exported)
    OnnxGraph,
    OnnxNode,
    check_graph,
)

SQRT1_2 = float(np.sqrt(0.5))


def load_onnx(path: str | Path) -> GraphModel:
    """Read `path` (an ONNX model; weights inside the file or in external data files in
    its folder) as a GraphModel."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{path}: not a readable ONNX model ({type(exc).__name__})"
                              ) from None
    folder = path.resolve().parent
    files = sorted({_external_file(t, folder, where)
                    for t, where in _external_tensors(proto.graph)})
    return from_onnx_proto(proto, {"format": "onnx", "path": str(path.resolve()),
                                   "sha256": _sha256([path.resolve(), *files])},
                           folder)


def _sha256(files: list[Path]) -> str:
    """sha256 of the model file alone (no external data: the plain file hash), else of
    the model file and each external data file in turn (their names, sizes and bytes)."""
    from farc.models.checkpoint import file_sha256

    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _external_tensors(graph: Any) -> Iterator[tuple[Any, str]]:
    """(TensorProto, where) of every tensor stored in an external file: initializers and
    Constant nodes' values."""
    for t in graph.initializer:
        if t.data_location == 1:  # EXTERNAL
            yield t, f"initializer {t.name}"
    for i, node in enumerate(graph.node):
        for a in node.attribute:
            if a.HasField("t") and a.t.data_location == 1:
                yield a.t, f"node {_node_name(node, i)}"


def _external_file(tensor: Any, folder: Path, where: str) -> Path:
    """The file holding `tensor`'s external data, which must lie inside `folder`."""
    loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
    rel = PurePosixPath(loc.replace("\\", "/"))
    if not loc or rel.is_absolute() or PureWindowsPath(loc).drive or ".." in rel.parts:
        raise CheckpointError(f"{where}: external data location {loc!r} is not a file "
                              f"inside the model's folder {folder}")
    file = (folder / rel).resolve()
    if not file.is_relative_to(folder):
        raise CheckpointError(f"{where}: external data {loc!r} resolves to {file}, outside "
                              f"the model's folder {folder}")
    if not file.is_file():
        raise CheckpointError(f"{where}: external data file {loc!r} not found in {folder}")
    return file


def _read_external(tensor: Any, folder: Path | None, where: str) -> np.ndarray:
    """`tensor`'s data from its external file: the byte range is checked against the
    tensor's shape and the file's size, and the budget, before anything is read."""
    from onnx import helper

    if folder is None:
        raise UnsupportedModelError(f"{where}: weights in an external data file and no "
                                    "model folder to read it from")
    file = _external_file(tensor, folder, where)
    info = {e.key: e.value for e in tensor.external_data}
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        offset, length = int(info.get("offset", 0)), info.get("length")
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{where}: external data of an unreadable type or offset "
                              f"(data_type {tensor.data_type}, offset "
                              f"{info.get('offset')!r})") from None
    if dtype.kind not in "biuf":
        raise UnsupportedModelError(f"{where}: external data of type {dtype}")
    if any(d < 0 for d in tensor.dims):
        raise CheckpointError(f"{where}: external tensor of shape {list(tensor.dims)}")
    nbytes = math.prod(int(d) for d in tensor.dims) * dtype.itemsize
    size = file.stat().st_size
    if length is not None and (not length.isdigit() or int(length) != nbytes):
        raise CheckpointError(f"{where}: external data length {length} bytes, its shape "
                              f"{list(tensor.dims)} of {dtype} needs {nbytes}")
    if offset < 0 or offset + nbytes > size:
        raise CheckpointError(f"{where}: external data bytes {offset}..{offset + nbytes} "
                              f"out of range, {file.name} holds {size} bytes")
    check_memory(nbytes, where)
    with open(file, "rb") as f:
        f.seek(offset)
        buf = f.read(nbytes)
    return np.frombuffer(buf, dtype.newbyteorder("<")).astype(dtype).reshape(
        [int(d) for d in tensor.dims])


NUMERIC = {1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data",
           5: "int32_data", 6: "int32_data", 7: "int64_data", 9: "int32_data",
           10: "int32_data", 11: "double_data", 12: "uint64_data", 13: "uint64_data"}
"""ONNX data types farc reads (FLOAT ... UINT64, no strings, complex or sub-byte floats)
-> the TensorProto field holding their values when not stored as raw bytes."""


def _read_embedded(tensor: Any, where: str) -> np.ndarray:
    """A tensor stored inside the model file. Its declared shape is checked against the
    data it holds and the memory budget before numpy builds it: a declared [4, 3] with no
    values behind it is a broken file, not a reshape error."""
    from onnx import helper, numpy_helper

    field = NUMERIC.get(tensor.data_type)
    if field is None:
        kind = helper.tensor_dtype_to_string(tensor.data_type).split(".")[-1] \
            if tensor.data_type in helper.get_all_tensor_dtypes() else tensor.data_type
        raise UnsupportedModelError(f"{where}: a tensor of type {kind}; farc reads numeric "
                                    "tensors (float, int, bool) only")
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{where}: tensor of shape {dims}")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    n = math.prod(dims)
    check_memory(n * dtype.itemsize, where)
    held = len(tensor.raw_data) // dtype.itemsize if tensor.HasField("raw_data") \
        else len(getattr(tensor, field))
    if held != n or (tensor.HasField("raw_data") and len(tensor.raw_data) % dtype.itemsize):
        raise CheckpointError(f"{where}: declares shape {dims} ({n:,} {dtype} values) and "
                              f"holds {held:,}; the file is truncated or corrupt")
    return np.asarray(numpy_helper.to_array(tensor))


def _node_name(node: Any, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def from_onnx_proto(proto: Any, source: dict, folder: Path | None = None) -> GraphModel:
    """Rebuild `proto` as a GraphModel; external data is read from files in `folder`."""
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    check_graph(_summary(graph))  # every unsupported op in one line, before any work
    conv = _Converter(GraphBuilder(source), opset, folder)
    for node in graph.node:
        for name in node.input:
            conv.uses[name] = conv.uses.get(name, 0) + 1
    for o in graph.output:
        conv.uses[o.name] = conv.uses.get(o.name, 0) + 1
    for init in graph.initializer:
        conv.env[init.name] = conv.array(init, f"initializer {init.name}")
    inputs = [v for v in graph.input if v.name not in conv.env]  # one (check_graph)
    axis = _input_batch_axis(graph, inputs[0].name)
    shape = _input_shape(inputs[0], axis)
    conv.batch = shape[axis]
    conv.env[inputs[0].name] = conv.b.input(_safe(inputs[0].name) or "input", shape, axis)
    for i, node in enumerate(graph.node):
        conv.node(node, f"node {_node_name(node, i)}", _node_name(node, i))
    outs = []
    for o in graph.output:
        v = conv.env.get(o.name)
        if not isinstance(v, Val):
            raise UnsupportedModelError(f"output {o.name} is not a tensor computed from the "
                                        "input (or is an unfinished Erf)")
        outs.append((v, o.name))
    return conv.b.finish(outs)


def _summary(graph: Any) -> OnnxGraph:
    """The parts of a GraphProto that farc.models.onnx_scan checks."""
    nodes = [OnnxNode(n.op_type, n.name, n.domain, list(n.input),
                      next((len(a.ints) for a in n.attribute if a.name == "kernel_shape"),
                           None))
             for n in graph.node]
    return OnnxGraph(nodes, {t.name: len(t.dims) for t in graph.initializer},
                     [v.name for v in graph.input])


PASS_THROUGH = {"Identity", "Cast", "Dropout", "Relu", "Sigmoid", "Tanh", "Add", "Sub",
                "Mul", "Div", "MatMul", "LayerNormalization"}
"""Ops that leave the input's time and batch axes where they are (elementwise, or over the
last axis), followed from the input to its recurrent layer."""


def _input_batch_axis(graph: Any, name: str) -> int:
    """The input's batch axis, found from the recurrent layer that reads it: 1 when an LSTM
    of layout 0 (ONNX's default, time-major [T, B, F], torch's batch_first=False) reads it
    directly or through PASS_THROUGH ops, else 0."""
    reach, found = {name}, 0
    for node in graph.node:  # graph order: producers first
        if not reach.intersection(node.input):
            continue
        if node.op_type in ("LSTM", "GRU", "RNN") and node.input[0] in reach:
            layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
            return 1 if layout == 0 else 0
        if node.op_type in PASS_THROUGH:
            reach.update(o for o in node.output if o)
    return found


def _input_shape(vi: Any, batch_axis: int = 0) -> list[int]:
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        raise UnsupportedModelError(f"input {vi.name} has no shape")
    if batch_axis >= len(dims):
        raise UnsupportedModelError(f"input {vi.name} of rank {len(dims)} feeds a "
                                    f"recurrent layer that reads its axis {batch_axis} as "
                                    "the batch")
    shape = []
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif k == batch_axis:
            shape.append(1)  # a symbolic batch
        else:
            raise UnsupportedModelError(f"input {vi.name}: dimension {k} ({d.dim_param or '?'}"
                                        f") is symbolic; only the batch axis ({batch_axis}) "
                                        "may be")
    check_memory(4 * math.prod(s for k, s in enumerate(shape) if k != batch_axis),
                 f"input {vi.name} (one sample)")
    return shape


def _name_scopes(node: Any) -> list[str]:
    """The module path torch's default exporter records for a node: metadata
    pkg.torch.onnx.name_scopes "['', 'rnn', 'lstm']" -> ["rnn"] (the root and the op left
    out); [] when absent or not in that form."""
    raw = next((p.value for p in node.metadata_props
                if p.key == "pkg.torch.onnx.name_scopes"), "")
    parts = re.findall(r"'([^']*)'", raw)
    return [p for p in parts[1:-1] if p] if raw.startswith("[") else []


def _whole_axis(v: Val, axis: int, start: int, stop: int, step: int) -> bool:
    """A slice start=0, stop="to the end", step 1: the whole axis, the batch axis included
    (exporters write x[:, -1] as such a slice of axis 0, then a select)."""
    return start == 0 and stop >= 2**62 and step == 1 and -v.ndim <= axis < v.ndim


def _batch_position(v: Val, target: list[int], batch: int) -> int | None:
    """Where the batch axis lands in a reshape whose target the exporter computed or folded
    (torch's default exporter writes [T, B, D*H] for an LSTM's output, [B, 64] for a
    flatten): the one axis of size 1, -1 or the exported batch after as many elements as
    come before the input's batch axis; None when there is none or more than one."""
    before = math.prod(v.shape[:v.batch_axis])
    found = [q for q, s in enumerate(target) if s in (1, -1, batch) and
             math.prod(target[:q]) == before]
    return found[0] if len(found) == 1 else None


def _safe(name: str) -> str:
    """A module/buffer-safe identifier from an ONNX name ("/fc1/Gemm" -> "fc1_Gemm")."""
    s = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")
    return ("n_" + s) if s and s[0].isdigit() else s


def _initial_state(t: np.ndarray | None, what: str, layout: int, n_dir: int, hidden: int,
                   where: str, op: str = "LSTM") -> np.ndarray | None:
    """An LSTM's constant initial_h / initial_c as [num_directions, hidden], or None when
    absent or all zero (the zero-state program). The tile program broadcasts one initial
    vector per direction over the batch, so every batch row must hold the same one; a
    batch-dependent state is refused."""
    if t is None or not np.any(t != 0):
        return None
    if t.ndim != 3:
        raise UnsupportedModelError(f"{where}: {op} {what} of rank {t.ndim}; expected 3")
    s = np.asarray(t if layout == 0 else t.transpose(1, 0, 2), np.float32)  # [D, B, H]
    if s.shape[0] != n_dir or s.shape[2] != hidden:
        raise UnsupportedModelError(f"{where}: {op} {what} of shape {list(t.shape)} does "
                                    f"not fit {n_dir} direction(s) of {hidden} units")
    if np.any(s != s[:, :1]):
        raise UnsupportedModelError(f"{where}: {op} with a batch-dependent {what} (its "
                                    "batch rows differ); only an initial state shared by "
                                    "every batch row can be compiled")
    return s[:, 0]


class _Erf(NotATensor):
    """erf(base / sqrt 2), and the GELU pattern's partial products around it."""

    def __init__(self, base: Val, stage: str, where: str) -> None:
        self.base, self.stage, self.where = base, stage, where  # erf, 1+erf, x(1+erf)

    def refusal(self, where: str) -> str:
        return (f"{self.where}: Erf is supported only as part of GELU, "
                "0.5 * x * (1 + erf(x / sqrt(2)))")


class _DigitalOps:
    """ONNX converters of the digital ops around crossbar layers (docs/byom.md), mixed
    into `_Converter`: pooling, reductions, LogSoftmax, Clip and its kin, Pad, and Where of
    constants (folded)."""

    b: GraphBuilder
    opset: int
    output_names: list[str]
    uses: dict[str, int]

    def _pool(self, ins, a, where, mode: str):
        if a.get("ceil_mode", 0):
            raise UnsupportedModelError(f"{where}: pooling with ceil_mode = 1")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise UnsupportedModelError(f"{where}: pooling with auto_pad {a['auto_pad']}")
        if len(self.output_names) > 1 and self.uses.get(self.output_names[1], 0):
            raise UnsupportedModelError(f"{where}: MaxPool's Indices output is used")
        ones = [1] * len(a["kernel_shape"])  # ONNX's default strides (torch's: the kernel)
        return self.b.pool(as_val(ins[0], where), mode, a["kernel_shape"],
                           a.get("strides", ones),
                           a.get("pads"), a.get("dilations"),
                           bool(a.get("count_include_pad", 0)), where)

    def _MaxPool(self, ins, a, where, name):
        return self._pool(ins, a, where, "max")

    def _AveragePool(self, ins, a, where, name):
        return self._pool(ins, a, where, "avg")

    def _GlobalAveragePool(self, ins, a, where, name):
        v = as_val(ins[0], where)
        return self.b.reduce(v, "mean", list(range(2, v.ndim)), True, where)

    def _GlobalMaxPool(self, ins, a, where, name):
        v = as_val(ins[0], where)
        return self.b.reduce(v, "max", list(range(2, v.ndim)), True, where)

    def _reduce(self, ins, a, where, mode: str):
        x, axes = ins[0], self._axes(ins, a)
        keep = bool(a.get("keepdims", 1))
        if not axes and a.get("noop_with_empty_axes", 0):
            return x
        if isinstance(x, np.ndarray):
            fn = {"mean": np.mean, "sum": np.sum, "max": np.max}[mode]
            return fn(x, axis=tuple(axes) if axes else None, keepdims=keep).astype(x.dtype)
        return self.b.reduce(as_val(x, where), mode, axes or None, keep, where)

    def _ReduceMean(self, ins, a, where, name):
        return self._reduce(ins, a, where, "mean")

    def _ReduceSum(self, ins, a, where, name):
        return self._reduce(ins, a, where, "sum")

    def _ReduceMax(self, ins, a, where, name):
        return self._reduce(ins, a, where, "max")

    def _LogSoftmax(self, ins, a, where, name):
        v = as_val(ins[0], where)
        axis = a.get("axis", -1 if self.opset >= 13 else 1)
        if self.opset < 13 and axis % v.ndim != v.ndim - 1:
            raise UnsupportedModelError(f"{where}: LogSoftmax (opset < 13) over several axes")
        return self.b.log_softmax(v, axis, where)

    def _Clip(self, ins, a, where, name):
        bounds = list(ins[1:3]) + [None] * (3 - len(ins))
        if self.opset < 11:
            bounds = [a.get("min"), a.get("max")]
        if any(c is not None and not isinstance(c, np.ndarray | float) for c in bounds):
            raise UnsupportedModelError(f"{where}: Clip with computed min or max")
        lo, hi = (None if c is None else float(np.asarray(c).reshape(())) for c in bounds[:2])
        return self.b.elementwise("clip", as_val(ins[0], where), min=lo, max=hi)

    def _LeakyRelu(self, ins, a, where, name):
        return self.b.elementwise("leaky_relu", as_val(ins[0], where),
                                  alpha=float(a.get("alpha", 0.01)))

    def _HardSigmoid(self, ins, a, where, name):
        return self.b.elementwise("hardsigmoid", as_val(ins[0], where),
                                  alpha=float(a.get("alpha", 0.2)),
                                  beta=float(a.get("beta", 0.5)))

    def _HardSwish(self, ins, a, where, name):
        return self.b.elementwise("hardswish", as_val(ins[0], where))

    def _Pad(self, ins, a, where, name):
        if a.get("mode", "constant") != "constant":
            raise UnsupportedModelError(f"{where}: Pad with mode {a['mode']}; only constant")
        v = as_val(ins[0], where)
        args = list(ins[1:]) + [None] * (4 - len(ins))
        pads, value, axes = (a.get("pads"), a.get("value", 0.0), None) if self.opset < 11 \
            else args[:3]
        if any(c is not None and not isinstance(c, np.ndarray | float | list)
               for c in (pads, value, axes)):
            raise UnsupportedModelError(f"{where}: Pad with computed pads or value")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        if axes is not None:  # opset 18: pads only for `axes`
            axes = [int(k) % v.ndim for k in np.asarray(axes).reshape(-1)]
            full = [0] * (2 * v.ndim)
            for i, k in enumerate(axes):
                full[k], full[v.ndim + k] = pads[i], pads[len(axes) + i]
            pads = full
        value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
        return self.b.pad(v, pads, value, where)

    def _Where(self, ins, a, where, name):
        if not all(isinstance(x, np.ndarray) for x in ins):
            raise UnsupportedModelError(f"{where}: Where of a computed tensor; only Where "
                                        "of constants (folded)")
        return np.where(*ins)


class _Converter(_DigitalOps):
    def __init__(self, b: GraphBuilder, opset: int, folder: Path | None = None) -> None:
        self.b, self.opset, self.folder = b, opset, folder
        self.batch = 1
        """The input's batch as exported (1 when symbolic): a static batch in a computed
        reshape target stands for the batch axis."""
        self.scopes: list[str] = []
        """The current node's module path (torch's default exporter records it)."""
        self.env: dict[str, Any] = {}
        self.n_outputs = 1
        self.input_names: list[str] = []
        self.uses: dict[str, int] = {}
        """ONNX value name -> how many node inputs and graph outputs read it."""
        self.bias_free: dict[str, Any] = {}
        """Value name -> the bias-less nn.Linear that computed it (a MatMul)."""
        self.output_names: list[str] = []
        self.scaled: dict[str, tuple[Val, float]] = {}
        """Value name -> (base, factor) for a value that is base times a scalar."""

    def layer_path(self, name: str) -> str:
        """The crossbar layer's name: its weight initializer's module path when it has one
        ("fc1.weight" -> "fc1", as torch exports name them), else the module path torch's
        default exporter records (name_scopes ['', 'rnn', 'lstm'] -> "rnn"), else the
        node's name."""
        w = self.input_names[1] if len(self.input_names) > 1 else ""
        if re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\.weight", w):
            return w[: -len(".weight")]
        return self.module_path(name)

    def module_path(self, name: str) -> str:
        """The node's module path when torch's default exporter recorded one, else its
        name made safe."""
        if self.scopes and all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in self.scopes):
            return ".".join(self.scopes)
        return _safe(name)

    def array(self, tensor: Any, where: str) -> np.ndarray:
        if tensor.data_location == 1:  # EXTERNAL
            return _read_external(tensor, self.folder, where)
        return _read_embedded(tensor, where)

    def get(self, name: str) -> Any:
        if name == "":
            return None
        if name not in self.env:
            raise UnsupportedModelError(f"value {name} is used before it is defined")
        return self.env[name]

    def node(self, node: Any, where: str, name: str) -> None:
        attrs = {a.name: _attr(a, self) for a in node.attribute}
        self.n_outputs = len(node.output)
        self.output_names = list(node.output)
        self.input_names = list(node.input)
        self.scopes = _name_scopes(node)
        ins = [self.get(i) for i in node.input]
        out = getattr(self, "_" + node.op_type)(ins, attrs, where, name)
        outs = out if isinstance(out, list) else [out]
        for o_name, o in zip(node.output, outs):
            if o_name:
                self.env[o_name] = np.asarray(o) if isinstance(o, np.generic) else o

    # ---- constants and shape arithmetic
    def _Constant(self, ins, a, where, name):
        for k in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if k in a:
                return np.asarray(a[k])
        raise UnsupportedModelError(f"{where}: Constant of an unsupported kind")

    def _ConstantOfShape(self, ins, a, where, name):
        if not isinstance(ins[0], np.ndarray):
            raise UnsupportedModelError(f"{where}: ConstantOfShape of a computed shape")
        value = a.get("value", np.zeros(1, np.float32))
        check_memory(math.prod(int(d) for d in ins[0].reshape(-1)) * value.itemsize, where)
        return np.full([int(d) for d in ins[0].reshape(-1)], value.reshape(-1)[0],
                       value.dtype)

    def _Expand(self, ins, a, where, name):
        """Broadcast to a shape (numpy rules): what torch's default exporter writes for
        torch.zeros(batch, ...) (an LSTM's zero state), folded at batch 1."""
        x, shape = ins
        if not isinstance(shape, np.ndarray):
            raise UnsupportedModelError(f"{where}: Expand to a computed shape")
        dims = [int(d) for d in shape.reshape(-1)]
        if isinstance(x, np.ndarray):
            try:
                out = np.broadcast_shapes(x.shape, tuple(dims))
            except ValueError:
                raise UnsupportedModelError(f"{where}: Expand of shape {list(x.shape)} to "
                                            f"{dims}, which do not broadcast") from None
            check_memory(math.prod(out) * x.itemsize, where)
            return np.broadcast_to(x, out).copy()
        v = as_val(x, where)
        try:
            same = np.broadcast_shapes(v.shape, tuple(dims)) == tuple(v.shape)
        except ValueError:
            same = False
        if not same:
            raise UnsupportedModelError(f"{where}: Expand of a computed tensor of shape "
                                        f"{list(v.shape)} to {dims}; only constants are "
                                        "expanded")
        return v

    def _Identity(self, ins, a, where, name):
        return ins[0]

    def _Dropout(self, ins, a, where, name):
        return ins[0]

    def _Cast(self, ins, a, where, name):
        if isinstance(ins[0], np.ndarray):
            from onnx import helper

            return ins[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        if a["to"] != 1:  # FLOAT
            raise UnsupportedModelError(f"{where}: Cast of a tensor to a non-float type")
        return ins[0]

    def _Shape(self, ins, a, where, name):
        x = ins[0]
        shape = np.asarray(x.shape if isinstance(x, Val | np.ndarray) else (), np.int64)
        return shape[a.get("start", 0):a.get("end", None)]

    def _Gather(self, ins, a, where, name):
        data, idx = ins
        axis = a.get("axis", 0)
        if not isinstance(idx, np.ndarray):
            raise UnsupportedModelError(f"{where}: Gather with computed indices")
        if isinstance(data, np.ndarray):
            return np.take(data, idx, axis=axis)
        if idx.ndim != 0:
            raise UnsupportedModelError(f"{where}: Gather of a tensor with more than one "
                                        "index")
        return self.b.select(as_val(data, where), axis, int(idx), where)

    def _axes(self, ins, a) -> list[int] | None:
        if len(ins) > 1 and ins[1] is not None:
            return [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        return a.get("axes")

    def _Unsqueeze(self, ins, a, where, name):
        x, axes = ins[0], self._axes(ins, a)
        if isinstance(x, np.ndarray):
            return np.expand_dims(x, tuple(axes))
        v = as_val(x, where)
        nd = v.ndim + len(axes)
        for ax in sorted(k % nd for k in axes):
            v = self.b.unsqueeze(v, ax, where)
        return v

    def _Squeeze(self, ins, a, where, name):
        x, axes = ins[0], self._axes(ins, a)
        if isinstance(x, np.ndarray):
            return np.squeeze(x, tuple(axes) if axes else None)
        v = as_val(x, where)
        if not axes:
            axes = [k for k, s in enumerate(v.shape) if s == 1 and k != v.batch_axis]
        return self.b.squeeze(v, axes, where)

    def _Concat(self, ins, a, where, name):
        axis = a["axis"]
        if all(isinstance(x, np.ndarray) for x in ins):
            return np.concatenate(ins, axis=axis)
        return self.b.concat([as_val(x, where) for x in ins], axis, where)

    def _Reshape(self, ins, a, where, name):
        x, shape = ins[0], np.asarray(ins[1], np.int64).reshape(-1)
        if isinstance(x, np.ndarray):
            shape = [x.shape[k] if s == 0 and not a.get("allowzero") else s
                     for k, s in enumerate(shape)]
            return x.reshape(shape)
        v = as_val(x, where)
        target = [v.shape[k] if s == 0 and not a.get("allowzero") else int(s)
                  for k, s in enumerate(shape)]
        copies = [k for k, s in enumerate(shape) if s == 0]
        batch_out = v.batch_axis if v.batch_axis in copies else None
        if batch_out is None and target and target[0] not in (1, -1):
            batch_out = _batch_position(v, target, self.batch)
            if batch_out is not None:
                target[batch_out] = 1
        return self.b.reshape(v, target, where, batch_out=batch_out)

    def _Flatten(self, ins, a, where, name):
        axis = a.get("axis", 1)
        if isinstance(ins[0], np.ndarray):
            x = ins[0]
            return x.reshape(math.prod(x.shape[:axis]), -1)
        v = as_val(ins[0], where)
        if axis % v.ndim != 1 or v.batch_axis != 0:
            raise UnsupportedModelError(f"{where}: Flatten that does not keep the batch axis"
                                        " first (axis must be 1)")
        return self.b.reshape(v, [1, math.prod(v.shape[1:])], where)

    def _Transpose(self, ins, a, where, name):
        if isinstance(ins[0], np.ndarray):  # shape arithmetic (TorchScript's F.pad pads)
            return np.transpose(ins[0], a.get("perm"))
        v = as_val(ins[0], where)
        return self.b.transpose(v, a.get("perm", list(range(v.ndim))[::-1]), where)

    def _Slice(self, ins, a, where, name):
        x = ins[0]
        starts, ends = (np.asarray(ins[k]).reshape(-1) for k in (1, 2))
        nd = x.ndim if isinstance(x, Val | np.ndarray) else 0
        axes = np.asarray(ins[3]).reshape(-1) if len(ins) > 3 and ins[3] is not None \
            else np.arange(len(starts))
        steps = np.asarray(ins[4]).reshape(-1) if len(ins) > 4 and ins[4] is not None \
            else np.ones(len(starts), np.int64)
        if any(not isinstance(t, np.ndarray) for t in ins[1:] if t is not None):
            raise UnsupportedModelError(f"{where}: Slice with computed bounds")
        if isinstance(x, np.ndarray):
            idx = [slice(None)] * nd
            for s, e, ax, st in zip(starts, ends, axes, steps):
                idx[int(ax)] = slice(int(s), int(e), int(st))
            return x[tuple(idx)]
        v = as_val(x, where)
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if _whole_axis(v, int(ax), int(s), int(e), int(st)):
                continue
            v = self.b.slice(v, int(ax), int(s), min(int(e), 2**62), int(st), where)
        return v

    def _Split(self, ins, a, where, name):
        v = as_val(ins[0], where)
        axis = a.get("axis", 0)
        n = v.shape[axis % v.ndim]
        if len(ins) > 1 and ins[1] is not None:
            sizes = [int(s) for s in np.asarray(ins[1]).reshape(-1)]
        elif "split" in a:
            sizes = list(a["split"])
        else:
            k = a.get("num_outputs") or self.n_outputs
            step = -(-n // k)
            sizes = [min(step, n - s) for s in range(0, n, step)]
        out, start = [], 0
        for s in sizes:
            out.append(self.b.slice(v, axis, start, start + s, 1, where))
            start += s
        return out

    # ---- crossbar layers
    def _MatMul(self, ins, a, where, name):
        x, w = ins
        if isinstance(w, np.ndarray) and not isinstance(x, np.ndarray):
            if w.ndim != 2:
                raise UnsupportedModelError(f"{where}: MatMul by a constant of rank {w.ndim}")
            out = self.b.linear(as_val(x, where), w.T, None, self.layer_path(name), where)
            self.bias_free[out.name] = (self.b.modules[self.b.nodes[-1].attrs["module"]],
                                        self.uses.get(self.output_names[0], 0))
            return out
        if isinstance(x, np.ndarray):
            raise UnsupportedModelError(f"{where}: MatMul with a constant left operand")
        return self.b.matmul(as_val(x, where), as_val(w, where), where)

    def _Gemm(self, ins, a, where, name):
        """Y = alpha * A' @ B' + beta * C with a constant B: one linear layer. transA reads A
        transposed (free in the builder: only the value's axis order changes); the batch
        must then be A's second axis, else the line names transA."""
        x, w = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if not isinstance(w, np.ndarray):
            raise UnsupportedModelError(f"{where}: Gemm needs a constant B")
        v = as_val(x, where)
        if a.get("transA", 0):
            if v.ndim != 2 or v.batch_axis != 1:
                raise UnsupportedModelError(f"{where}: Gemm with transA = 1 on an A whose "
                                            "batch is not its second axis")
            v = self.b.transpose(v, [1, 0], where)
        weight = (w if a.get("transB", 0) else w.T) * np.float32(a.get("alpha", 1.0))
        bias = None
        if c is not None:
            if not isinstance(c, np.ndarray) or (c.ndim == 2 and c.shape[0] != 1):
                raise UnsupportedModelError(f"{where}: Gemm with a C that is not a bias row")
            bias = np.broadcast_to(c.reshape(-1) * np.float32(a.get("beta", 1.0)),
                                   (weight.shape[0],)).astype(np.float32)
        return self.b.linear(v, weight.astype(np.float32), bias, self.layer_path(name), where)

    def _Conv(self, ins, a, where, name):
        x, w = as_val(ins[0], where), ins[1]
        b = ins[2] if len(ins) > 2 else None
        if not isinstance(w, np.ndarray) or w.ndim not in (3, 4):
            raise UnsupportedModelError(f"{where}: only 1-d and 2-d Conv with constant weights")
        spatial = w.ndim - 2
        kernel = list(w.shape[2:])
        strides = [int(s) for s in a.get("strides", [1] * spatial)]
        dilations = [int(d) for d in a.get("dilations", [1] * spatial)]
        auto = a.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], kernel, strides, dilations, auto == "SAME_UPPER")
        elif auto in ("NOTSET", "VALID"):
            pads = [int(p) for p in a.get("pads", [0] * 2 * spatial)] if auto == "NOTSET" \
                else [0] * 2 * spatial
        else:
            raise UnsupportedModelError(f"{where}: Conv with auto_pad {auto}")
        return self.b.conv(x, w, b, strides, pads, dilations, a.get("group", 1),
                           self.layer_path(name), where)

    def _BatchNormalization(self, ins, a, where, name):
        if int(a.get("training_mode", 0)):
            raise UnsupportedModelError(f"{where}: BatchNormalization in training mode")
        params = ins[1:5]
        if len(params) != 4 or not all(isinstance(p, np.ndarray) for p in params):
            raise UnsupportedModelError(f"{where}: BatchNormalization with computed "
                                        "parameters")
        fold = self.uses.get(self.input_names[0], 0) == 1
        return self.b.batch_norm(as_val(ins[0], where), *params,
                                 float(a.get("epsilon", 1e-5)), fold, where)

    def _LSTM(self, ins, a, where, name):
        ins = ins + [None] * (8 - len(ins))
        x, w, r, b, seq_lens, h0, c0, peep = ins[:8]
        direction = a.get("direction", "forward")
        hidden = int(a["hidden_size"])
        if any(k in a for k in ("clip", "activations", "activation_alpha", "activation_beta"))\
                and (a.get("activations") not in (None, ["Sigmoid", "Tanh", "Tanh"] *
                                                  (2 if direction == "bidirectional" else 1))
                     or "clip" in a or "activation_alpha" in a or "activation_beta" in a):
            raise UnsupportedModelError(f"{where}: LSTM with clip or non-default activations")
        if a.get("input_forget", 0):
            raise UnsupportedModelError(f"{where}: LSTM with input_forget")
        if not all(isinstance(t, np.ndarray) for t in (w, r) if t is not None) or \
                (b is not None and not isinstance(b, np.ndarray)):
            raise UnsupportedModelError(f"{where}: LSTM with computed weights")
        if seq_lens is not None:
            raise UnsupportedModelError(f"{where}: LSTM with sequence_lens")
        for t, what in ((h0, "initial_h"), (c0, "initial_c"), (peep, "P (peepholes)")):
            if t is None:
                continue
            if not isinstance(t, np.ndarray):
                raise UnsupportedModelError(f"{where}: LSTM with a computed {what}")
            if what.startswith("P") and np.any(t != 0):
                raise UnsupportedModelError(f"{where}: LSTM with non-zero peepholes")
        layout = a.get("layout", 0)
        n_dir = 2 if direction == "bidirectional" else 1
        h0, c0 = (_initial_state(t, what, layout, n_dir, hidden, where)
                  for t, what in ((h0, "initial_h"), (c0, "initial_c")))
        v = as_val(x, where)
        time_axis = 0 if layout == 0 else 1
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
            direction]
        gates = [0, 2, 3, 1]  # ONNX i, o, f, c -> PyTorch i, f, g(c), o

        def reorder(m: np.ndarray) -> np.ndarray:
            return m.reshape(4, hidden, *m.shape[1:])[gates].reshape(4 * hidden, *m.shape[1:])

        seqs = []
        for d, reverse in enumerate(dirs):
            bias = np.zeros(8 * hidden, np.float32) if b is None else b[d]
            path = f"{self.module_path(name)}.{'bwd' if reverse else 'fwd'}"
            seqs.append(self.b.lstm_direction(
                v, time_axis, reorder(w[d]), reorder(r[d]), reorder(bias[:4 * hidden]),
                reorder(bias[4 * hidden:]), reverse, path, where,
                None if h0 is None else h0[d], None if c0 is None else c0[d]))
        return [*self._recurrent_outputs(seqs, dirs, layout, where),
                FinalCellState("Y_c (final cell state)")]

    def _GRU(self, ins, a, where, name):
        ins = ins + [None] * (6 - len(ins))
        x, w, r, b, seq_lens, h0 = ins[:6]
        direction = a.get("direction", "forward")
        hidden = int(a["hidden_size"])
        n_dir = 2 if direction == "bidirectional" else 1
        if a.get("activations") not in (None, ["Sigmoid", "Tanh"] * n_dir) or \
                any(k in a for k in ("clip", "activation_alpha", "activation_beta")):
            raise UnsupportedModelError(f"{where}: GRU with clip or non-default activations")
        if not all(isinstance(t, np.ndarray) for t in (w, r)) or \
                (b is not None and not isinstance(b, np.ndarray)):
            raise UnsupportedModelError(f"{where}: GRU with computed weights")
        if seq_lens is not None:
            raise UnsupportedModelError(f"{where}: GRU with sequence_lens")
        if h0 is not None and not isinstance(h0, np.ndarray):
            raise UnsupportedModelError(f"{where}: GRU with a computed initial_h")
        layout = a.get("layout", 0)
        h0 = _initial_state(h0, "initial_h", layout, n_dir, hidden, where, "GRU")
        v = as_val(x, where)
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
            direction]

        def reorder(m: np.ndarray) -> np.ndarray:  # ONNX z, r, h -> PyTorch r, z, n
            return m.reshape(3, hidden, *m.shape[1:])[[1, 0, 2]].reshape(3 * hidden,
                                                                        *m.shape[1:])

        seqs = []
        for d, reverse in enumerate(dirs):
            bias = np.zeros(6 * hidden, np.float32) if b is None else b[d]
            seqs.append(self.b.gru_direction(
                v, 0 if layout == 0 else 1, reorder(w[d]), reorder(r[d]),
                reorder(bias[:3 * hidden]), reorder(bias[3 * hidden:]),
                bool(a.get("linear_before_reset", 0)), reverse,
                f"{self.module_path(name)}.{'bwd' if reverse else 'fwd'}", where,
                None if h0 is None else h0[d]))
        return self._recurrent_outputs(seqs, dirs, layout, where)[:2]

    def _recurrent_outputs(self, seqs: list[Val], dirs: list[bool], layout: int,
                           where: str) -> list[Val]:
        """Y and Y_h of an ONNX LSTM or GRU from its directions' [B, T, H] sequences."""
        y = self.b.concat([self.b.unsqueeze(s, 2, where) for s in seqs], 2, where)
        last = [self.b.unsqueeze(self.b.select(s, 1, 0 if rev else -1, where), 1, where)
                for s, rev in zip(seqs, dirs)]
        y_h = self.b.concat(last, 1, where)  # [B, D, H]
        if layout == 0:  # Y [B, T, D, H] stored; layout 0 wants [T, D, B, H]
            y, y_h = self.b.transpose(y, [1, 2, 0, 3], where), \
                self.b.transpose(y_h, [1, 0, 2], where)
        return [y, y_h]

    # ---- elementwise and the rest
    def _unary(self, op: str, ins, where):
        return self.b.unary(op, as_val(ins[0], where))

    def _Relu(self, ins, a, where, name):
        return self._unary("relu", ins, where)

    def _Sigmoid(self, ins, a, where, name):
        return self._unary("sigmoid", ins, where)

    def _Tanh(self, ins, a, where, name):
        return self._unary("tanh", ins, where)

    def _Gelu(self, ins, a, where, name):
        if a.get("approximate", "none") != "none":
            raise UnsupportedModelError(f"{where}: Gelu(approximate=tanh); only the erf form")
        return self._unary("gelu", ins, where)

    def _Softmax(self, ins, a, where, name):
        v = as_val(ins[0], where)
        axis = a.get("axis", -1 if self.opset >= 13 else 1)
        if self.opset < 13 and axis % v.ndim != v.ndim - 1:
            raise UnsupportedModelError(f"{where}: Softmax (opset < 13) over several axes")
        return self.b.softmax(v, axis, where)

    def _LayerNormalization(self, ins, a, where, name):
        ins = ins + [None] * (3 - len(ins))
        x, scale, bias = ins[:3]
        return self.b.layer_norm(as_val(x, where), scale, bias, a.get("epsilon", 1e-5),
                                 a.get("axis", -1), where)

    def _Erf(self, ins, a, where, name):
        x = ins[0]
        rec = self.scaled.get(x.name) if isinstance(x, Val) else None
        if rec is None or not math.isclose(rec[1], SQRT1_2, rel_tol=1e-6):
            raise UnsupportedModelError(f"{where}: Erf is supported only as part of GELU, "
                                        "0.5 * x * (1 + erf(x / sqrt(2)))")
        return _Erf(rec[0], "erf", where)

    def _binary(self, op: str, ins, where):
        x, y = ins
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
            return fn[op](x, y)
        gelu = self._gelu_step(op, x, y, where)
        if gelu is not None:
            return gelu
        out = self.b.binary(op, as_val(x, where) if not isinstance(x, np.ndarray) else x,
                            as_val(y, where) if not isinstance(y, np.ndarray) else y, where)
        # remember base * scalar (for the GELU pattern)
        if isinstance(x, Val) and isinstance(y, np.ndarray) and y.size == 1 and \
                op in ("mul", "div"):
            k = float(y.reshape(())) if op == "mul" else 1.0 / float(y.reshape(()))
            self.scaled[out.name] = (x, k)
        elif isinstance(y, Val) and isinstance(x, np.ndarray) and x.size == 1 and op == "mul":
            self.scaled[out.name] = (y, float(x.reshape(())))
        return out

    def _gelu_step(self, op: str, x: Any, y: Any, where: str) -> Any:
        """One step of 0.5 * x * (1 + erf(x / sqrt 2)); None when not part of it."""
        if not isinstance(x, _Erf) and not isinstance(y, _Erf):
            return None
        e, other = (x, y) if isinstance(x, _Erf) else (y, x)
        one = isinstance(other, np.ndarray) and other.size == 1
        if e.stage == "erf" and op == "add" and one and float(other.reshape(())) == 1.0:
            return _Erf(e.base, "1+erf", e.where)
        if e.stage == "1+erf" and op == "mul" and isinstance(other, Val):
            if other.name == e.base.name:
                return _Erf(e.base, "x(1+erf)", e.where)
            rec = self.scaled.get(other.name)
            if rec and rec[0].name == e.base.name and rec[1] == 0.5:
                return self.b.unary("gelu", e.base)
        if e.stage == "x(1+erf)" and op == "mul" and one and float(other.reshape(())) == 0.5:
            return self.b.unary("gelu", e.base)
        if e.stage == "x(1+erf)" and op == "div" and one and float(other.reshape(())) == 2.0 \
                and x is e:
            return self.b.unary("gelu", e.base)
        raise UnsupportedModelError(f"{e.where}: Erf is supported only as part of GELU, "
                                    "0.5 * x * (1 + erf(x / sqrt(2)))")

    def _Add(self, ins, a, where, name):
        """MatMul + Add(bias) as exporters write nn.Linear on 3-d inputs: the bias joins
        the crossbar layer (as for Gemm), so the layer's outputs are the model's."""
        x, c = ins
        if isinstance(c, Val) and isinstance(x, np.ndarray):
            x, c = c, x
        if isinstance(x, Val) and isinstance(c, np.ndarray) and x.name in self.bias_free:
            lin, uses = self.bias_free.pop(x.name)
            if uses == 1 and c.size == lin.out_features and c.shape[-1:] == (c.size,) and \
                    x.order[-1] == x.ndim - 1:
                lin.bias = torch.nn.Parameter(torch.tensor(np.array(c, np.float32)
                                                           .reshape(-1)))
                return x
        return self._binary("add", ins, where)

    def _Sub(self, ins, a, where, name):
        return self._binary("sub", ins, where)

    def _Mul(self, ins, a, where, name):
        return self._binary("mul", ins, where)

    def _Div(self, ins, a, where, name):
        return self._binary("div", ins, where)


def _same_pads(size: Any, kernel: list[int], strides: list[int], dilations: list[int],
               upper: bool) -> list[int]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER as explicit pads (begin..., end...): the output
    is ceil(input / stride), the odd pad at the end (UPPER) or the beginning (LOWER)."""
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((-(-int(n) // s) - 1) * s + (k - 1) * d + 1 - int(n), 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin + end


def _attr(a: Any, conv: _Converter) -> Any:
    from onnx import helper

    value = helper.get_attribute_value(a)
    if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
        return conv.array(value, f"attribute {a.name}")
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value
