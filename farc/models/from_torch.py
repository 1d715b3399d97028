"""A saved `torch.export` program (`.pt2`) -> GraphModel, reading the graph as data.

Trust model. `torch.export.load` alone is not safe on an untrusted file: for weights and
constants saved in pickle form it calls `torch.load(..., weights_only=False)`, for opaque
constants `pickle.loads`, and its legacy path falls back to a full unpickle when the
weights-only one fails (torch 2.13, torch/export/pt2_archive/_package.py and
torch/_export/serde/serialize.py). `load_pt2` therefore runs it with every `torch.load`
forced to `weights_only=True` and every other unpickler refused, so a hostile file fails
with a one-line error instead of running code. The deserialized graph is then never run:
its nodes are read one by one and rebuilt from farc's own modules (farc.models.graph), and
every op outside the supported list is refused in one line, naming each op, the module its
first node sits in and its node count.

Supported ATen ops (inference graphs of torch.export, not decomposed): linear, conv1d and
conv2d (any kernel, stride, padding, dilation; one group), batch_norm (inference;
folded into the convolution or linear layer before it), lstm (any layers and directions,
batch_first or not, zero initial state, with bias; h_n[i] and the output sequence may be
used), gru (the same forms; torch's GRU is ONNX's linear_before_reset = 1), relu, gelu
(erf), sigmoid, tanh, softmax, layer_norm (last axis), add, sub, mul, div (by a constant),
matmul (of two activations, or by a constant: a crossbar layer), view/reshape/flatten,
permute,
transpose, cat, slice (step 1), select, split/chunk, squeeze/unsqueeze, and the no-ops
clone/contiguous/dropout/alias/detach.

A dynamic batch (`torch.export.export(..., dynamic_shapes={"x": {0: Dim("batch")}})`) is
read as batch 1, like a symbolic batch in ONNX: its sym_size is the batch, and shapes
recorded with it are taken at batch 1. Any other symbolic dimension (a dynamic sequence
length) is refused in one line."""

from __future__ import annotations

import contextlib
import operator
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farc.errors import CheckpointError
from farc.models.checkpoint import file_sha256
from farc.models.graph import (
    FinalCellState,
    GraphBuilder,
    GraphModel,
    UnsupportedModelError,
    Val,
    as_val,
    per_axis,
)
from farc.models.pt2_scan import (
    ALTERNATIVES,
    BINARY,
    IDENTITY,
    NO_MODULE,
    SHOWN,
    SUPPORTED,
    UNARY,
)
from farc.models.refusal import refuse


def load_pt2(path: str | Path) -> GraphModel:
    """Read a torch.export.save file into a GraphModel (never executing pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    _check_archive(path)
    try:
        with _no_unpickling(), _quiet_export_log():
            ep = torch.export.load(str(path))
    except UnsupportedModelError:
        raise
    except Exception as exc:  # torch raises many types on a bad archive
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable torch.export program ({msg[:200]})"
                              ) from None
    return from_exported_program(ep, {"format": "pt2", "path": str(path.resolve()),
                                      "sha256": file_sha256(path)})


def _check_archive(path: Path) -> None:
    """A .pt2 is a zip archive holding a serialized program (`<name>/models/*.json`, as
    torch.export.save writes it); anything else is refused here in one line, before
    torch's loader reports it as a multi-line warning with a traceback. The members'
    declared sizes are checked against the memory budget before torch reads any."""
    import zipfile

    from farc.limits import check_memory

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            unpacked = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a torch.export program (.pt2 files are zip "
                              f"archives; {str(exc)[:120] or type(exc).__name__})") from None
    check_memory(unpacked, f"{path}: the archive's members (as declared, unpacked)")
    if not any("/models/" in n and n.endswith(".json") for n in names):
        raise CheckpointError(f"{path}: not a torch.export program (the archive holds no "
                              "serialized model, models/*.json; save it with "
                              "torch.export.save)")


@contextlib.contextmanager
def _quiet_export_log() -> Iterator[None]:
    """torch.export.load logs a failed legacy load as a warning with a traceback before
    raising; farc reports the failure itself in one line, so that log is muted."""
    import logging

    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    """torch.load forced to weights_only=True; plain and torchbind unpicklers refused."""
    import torch.export.pt2_archive._package as pkg

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CheckpointError("the .pt2 file holds pickled Python objects; farc loads "
                              "tensors only (weights_only)")

    real_load = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        return real_load(f, *args, **kwargs)

    saved = (torch.load, pkg.pickle, torch._C._pickle_load_obj)
    safe_pickle = type("SafePickle", (), {"loads": staticmethod(refuse),
                                          "load": staticmethod(refuse),
                                          "dumps": pickle.dumps})
    torch.load = weights_only_load
    pkg.pickle = safe_pickle
    torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pkg.pickle, torch._C._pickle_load_obj = saved


# ---------------------------------------------------------------- graph -> GraphModel
class _HN:
    """h_n of an LSTM or GRU: per (layer, direction) output sequences [B, T, H]; h_n[i] is the
    last step of a forward direction, the first of a reverse one."""

    def __init__(self, seqs: list[tuple[Val, bool]]) -> None:
        self.seqs = seqs


def from_exported_program(ep: torch.export.ExportedProgram, source: dict) -> GraphModel:
    """Rebuild `ep` (an inference graph with one tensor input) as a GraphModel."""
    from torch.export.graph_signature import InputKind, OutputKind

    state = {**ep.state_dict, **getattr(ep, "constants", {})}
    params: dict[str, str] = {}
    user_inputs = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(spec.arg.name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            params[spec.arg.name] = spec.target
        else:
            raise UnsupportedModelError(f"unsupported program input kind {spec.kind.name}")
    refuse("torch", _unsupported(ep.graph.nodes), SHOWN, user_inputs,  # all at once
           ALTERNATIVES)
    conv = _Converter(GraphBuilder(source), state, params)
    conv.input_axis = _input_batch_axis(ep.graph.nodes, user_inputs)
    outputs = []
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            conv.placeholder(node, node.name in user_inputs)
        elif node.op == "call_function":
            conv.env[node.name] = conv.call(node)
        elif node.op == "output":
            specs = [s for s in ep.graph_signature.output_specs]
            for arg, spec in zip(node.args[0], specs):
                if spec.kind != OutputKind.USER_OUTPUT:
                    raise UnsupportedModelError(f"unsupported program output kind "
                                                f"{spec.kind.name}")
                v = conv.value(arg)
                if not isinstance(v, Val):
                    raise UnsupportedModelError(f"output {arg} is not computed from the "
                                                "input")
                outputs.append((v, "output" if len(specs) == 1 else str(arg)))
        else:
            raise UnsupportedModelError(f"unsupported graph node {node.op} {node.name}")
    return conv.b.finish(outputs)


def _op_name(node: Any) -> str:
    return getattr(getattr(node.target, "overloadpacket", None), "__name__", None) or \
        str(node.target)


def _unsupported(nodes: Any) -> Iterator[tuple[str, str]]:
    """(op, where) of every call the converter has no handler for, in graph order."""
    for node in nodes:
        if node.op == "call_function" and node.target is not operator.getitem and \
                _op_name(node) not in SUPPORTED:
            yield _op_name(node), _where(node)


def _where(node: Any) -> str:
    """The module path a node sits in (its nn_module_stack), else its node name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        path = path.replace("L['self'].", "").replace("L['self']", "")
        if path and not path.startswith(NO_MODULE):
            return f"module {path} (node {node.name})"
    return f"node {node.name}"


PASS_THROUGH = {*IDENTITY, *UNARY, *BINARY, "linear", "layer_norm"}
"""ATen ops that leave the input's time and batch axes where they are, followed from the
input to its LSTM."""


def _input_batch_axis(nodes: Any, inputs: list[str]) -> int:
    """The user input's batch axis, found from the LSTM that reads it: 1 for a time-major
    one (`batch_first=False`, [T, B, F]) reading it directly or through PASS_THROUGH ops,
    else 0."""
    reach = set(inputs)
    for node in nodes:
        if node.op != "call_function":
            continue
        args = [a.name for a in node.all_input_nodes]
        if not reach.intersection(args):
            continue
        op = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        if op == "lstm" and getattr(node.args[0], "name", "") in reach:
            return 0 if len(node.args) == 9 and node.args[8] else 1
        if op in PASS_THROUGH:
            reach.add(node.name)
    return 0


def _shape_of(node: Any) -> tuple[int, ...]:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise UnsupportedModelError(f"{_where(node)}: no shape recorded")
    return tuple(int(s) if isinstance(s, int) else 1 for s in val.shape)


class _Converter:
    def __init__(self, b: GraphBuilder, state: dict, params: dict[str, str]) -> None:
        self.b, self.state, self.params = b, state, params
        self.env: dict[str, Any] = {}
        self.batch = 1
        """The batch size the program was exported with (1 when symbolic)."""
        self.input_axis = 0
        """The user input's batch axis (1 for a time-major LSTM's [T, B, F])."""
        self.param_of: dict[str, str] = {}
        """Value name of a constant -> its parameter name (for module paths)."""

    def placeholder(self, node: Any, user: bool) -> None:
        if user:
            dims = getattr(node.meta.get("val"), "shape", ())
            axis = self.input_axis if len(dims) > self.input_axis else 0
            symbolic = [k for k, s in enumerate(dims) if k != axis and not isinstance(s, int)]
            if symbolic:
                raise UnsupportedModelError(
                    f"input {node.name}: dimension {symbolic[0]} ({dims[symbolic[0]]}) is "
                    f"symbolic; only the batch axis ({axis}) may be dynamic")
            shape = _shape_of(node)
            self.batch = shape[axis] if shape else 1
            self.env[node.name] = self.b.input(node.name, shape, axis)
            return
        name = self.params[node.name]
        self.env[node.name] = self.state[name].detach().float().numpy()
        self.param_of[node.name] = name

    def value(self, arg: Any) -> Any:
        if hasattr(arg, "name") and hasattr(arg, "op"):
            return self.env[arg.name]
        if isinstance(arg, list | tuple):
            return [self.value(a) for a in arg]
        return arg

    def path_of(self, arg: Any, node: Any, suffix: str = ".weight") -> str:
        name = self.param_of.get(getattr(arg, "name", ""), "")
        if name.endswith(suffix):
            return name[: -len(suffix)]
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1][0].replace("L['self'].", "")
            if path and "[" not in path:
                return path
        return node.name

    def call(self, node: Any) -> Any:
        where = _where(node)
        if node.target is operator.getitem:
            seq, i = self.value(node.args[0]), node.args[1]
            if isinstance(seq, list | tuple):
                return seq[i]
            raise UnsupportedModelError(f"{where}: indexing a {type(seq).__name__}")
        op = _op_name(node)
        if op not in SUPPORTED:
            refuse("torch", [(op, where)], SHOWN, alternatives=ALTERNATIVES)
        args = [self.value(a) for a in node.args]
        kw = {k: self.value(v) for k, v in node.kwargs.items()}
        return getattr(self, f"_{op.strip('_')}", self._default)(node, op, args, kw, where)

    # ---- handlers
    def _default(self, node, op, args, kw, where):
        x = args[0]
        if op in IDENTITY:
            if op in ("dropout", "feature_dropout") and (len(args) > 2 and args[2]):
                raise UnsupportedModelError(f"{where}: dropout in training mode")
            return x
        if op in UNARY:
            if op == "gelu" and kw.get("approximate", "none") != "none":
                raise UnsupportedModelError(f"{where}: gelu(approximate="
                                            f"{kw['approximate']!r}); only the erf form")
            return self.b.unary(UNARY[op], as_val(x, where))
        if op in BINARY:
            if kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None:
                raise UnsupportedModelError(f"{where}: {op} with alpha or rounding_mode")
            a, c = args[0], args[1]
            return self.b.binary(BINARY[op], _operand(a), _operand(c), where)
        if op in ("view", "reshape", "_unsafe_view", "flatten"):
            target = list(_shape_of(node))
            if target and target[0] == self.batch:  # the exported batch -> batch 1
                target[0] = 1
            return self.b.reshape(as_val(x, where), target, where)
        raise UnsupportedModelError(f"unsupported torch op {op} at {where}")

    def _linear(self, node, op, args, kw, where):
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else kw.get("bias")
        if not isinstance(w, np.ndarray):
            raise UnsupportedModelError(f"{where}: linear with a computed weight")
        return self.b.linear(as_val(x, where), w, b, self.path_of(node.args[1], node), where)

    def _conv2d(self, node, op, args, kw, where):
        a = list(args) + [None, 1, 0, 1, 1][len(args) - 2:]
        x, w, b, stride, padding, dilation, groups = a[:7]
        if not isinstance(w, np.ndarray):
            raise UnsupportedModelError(f"{where}: {op} with a computed weight")
        spatial = w.ndim - 2
        if isinstance(padding, str):  # conv*.padding: "valid" or "same" (stride 1)
            dil = list(dilation) * spatial if len(list(dilation)) == 1 else list(dilation)
            totals = [d * (k - 1) for d, k in zip(dil, w.shape[2:])]
            padding = [0] * spatial if padding == "valid" else \
                [t // 2 for t in totals] + [t - t // 2 for t in totals]
        return self.b.conv(as_val(x, where), w, b, stride, padding, dilation, groups,
                           self.path_of(node.args[1], node), where)

    _conv1d = _conv2d

    def _batch_norm(self, node, op, args, kw, where):
        a = list(args) + [None] * (8 - len(args))
        x, weight, bias, mean, var, training, _, eps = a[:8]
        if training:
            raise UnsupportedModelError(f"{where}: batch_norm in training mode")
        if not all(isinstance(p, np.ndarray) for p in (mean, var)):
            raise UnsupportedModelError(f"{where}: batch_norm without running statistics")
        c = mean.shape[0]
        weight = np.ones(c, np.float32) if weight is None else weight
        bias = np.zeros(c, np.float32) if bias is None else bias
        fold = len(node.args[0].users) == 1
        return self.b.batch_norm(as_val(x, where), weight, bias, mean, var,
                                 float(1e-5 if eps is None else eps), fold, where)

    def _matmul(self, node, op, args, kw, where):
        a, w = args
        if isinstance(w, np.ndarray):
            if w.ndim != 2:
                raise UnsupportedModelError(f"{where}: matmul by a constant of rank {w.ndim}")
            return self.b.linear(as_val(a, where), w.T, None,
                                 self.path_of(node.args[1], node, suffix=""), where)
        return self.b.matmul(as_val(a, where), as_val(w, where), where)

    _bmm = _matmul

    def _softmax(self, node, op, args, kw, where):
        return self.b.softmax(as_val(args[0], where), int(args[1]), where)

    def _layer_norm(self, node, op, args, kw, where):
        a = list(args) + [None] * (5 - len(args))
        x, shape, w, b, eps = a[:5]
        if len(shape) != 1:
            raise UnsupportedModelError(f"{where}: layer norm over {len(shape)} axes; "
                                        "only the last")
        return self.b.layer_norm(as_val(x, where), w, b, 1e-5 if eps is None else eps,
                                 -1, where)

    def _permute(self, node, op, args, kw, where):
        return self.b.transpose(as_val(args[0], where), list(args[1]), where)

    def _transpose(self, node, op, args, kw, where):
        v = as_val(args[0], where)
        perm = list(range(v.ndim))
        i, j = (int(a) % v.ndim for a in args[1:3])
        perm[i], perm[j] = perm[j], perm[i]
        return self.b.transpose(v, perm, where)

    def _t(self, node, op, args, kw, where):
        return self._transpose(node, op, [args[0], 0, 1], kw, where)

    def _cat(self, node, op, args, kw, where):
        vals = [as_val(v, where) for v in args[0]]
        return self.b.concat(vals, int(args[1]) if len(args) > 1 else int(kw.get("dim", 0)),
                             where)

    def _slice(self, node, op, args, kw, where):
        a = list(args) + [0, None, None, 1][len(args) - 1:]
        x, dim, start, end, step = a[:5]
        v = as_val(x, where)
        big = 2**62
        start = 0 if start is None else int(start)
        end = big if end is None or end >= big else int(end)
        if (start, end, int(step or 1)) == (0, big, 1):  # x[:, ...]: the whole axis
            return v
        return self.b.slice(v, int(dim), start, end, int(step or 1), where)

    def _select(self, node, op, args, kw, where):
        x, dim, index = args
        if isinstance(x, _HN):
            if int(dim) != 0:
                raise UnsupportedModelError(f"{where}: h_n indexed along axis {dim}")
            seq, reverse = x.seqs[int(index)]
            return self.b.select(seq, 1, 0 if reverse else -1, where)
        return self.b.select(as_val(x, where), int(dim), int(index), where)

    def _split(self, node, op, args, kw, where):
        v = as_val(args[0], where)
        size = args[1]
        dim = int(args[2]) if len(args) > 2 else int(kw.get("dim", 0))
        n = v.shape[dim % v.ndim]
        if op == "chunk":
            step = -(-n // int(size))
            sizes = [min(step, n - s) for s in range(0, n, step)]
        elif isinstance(size, list):
            sizes = [int(s) for s in size]
        else:
            sizes = [min(int(size), n - s) for s in range(0, n, int(size))]
        out, start = [], 0
        for s in sizes:
            out.append(self.b.slice(v, dim, start, start + s, 1, where))
            start += s
        return out

    _split_with_sizes = _split
    _chunk = _split

    def _squeeze(self, node, op, args, kw, where):
        v = as_val(args[0], where)
        dims = args[1] if len(args) > 1 else [k for k, s in enumerate(v.shape) if s == 1
                                              and k != v.batch_axis]
        dims = dims if isinstance(dims, list) else [dims]
        return self.b.squeeze(v, [int(d) for d in dims], where)

    def _unsqueeze(self, node, op, args, kw, where):
        return self.b.unsqueeze(as_val(args[0], where), int(args[1]), where)

    def _sym_size(self, node, op, args, kw, where):
        """The size of a dynamic batch, read as 1 (the GraphModel is built at batch 1)."""
        v = as_val(args[0], where)
        if int(args[1]) % v.ndim != v.batch_axis:
            raise UnsupportedModelError(f"{where}: the size of axis {args[1]} is symbolic; "
                                        "only the batch axis may be dynamic")
        return 1

    def _zeros(self, node, op, args, kw, where):
        return np.zeros(_shape_of(node), np.float32)

    _zeros_like = _zeros
    _new_zeros = _zeros

    # ---- digital ops around the crossbar layers (GraphBuilder's DIGITAL nodes)
    def _max_pool2d(self, node, op, args, kw, where):
        n = 1 if op.endswith("1d") else 2
        a = _args(args, kw, ["input", "kernel_size", "stride", "padding", "dilation",
                             "ceil_mode"], [None, None, [], 0, 1, False])
        return self._pool(a, "max", n, a["dilation"], True, where)

    _max_pool1d = _max_pool2d

    def _avg_pool2d(self, node, op, args, kw, where):
        n = 1 if op.endswith("1d") else 2
        a = _args(args, kw, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                             "count_include_pad", "divisor_override"],
                  [None, None, [], 0, False, True, None])
        if a["divisor_override"] is not None:
            raise UnsupportedModelError(f"{where}: {op} with divisor_override")
        return self._pool(a, "avg", n, 1, bool(a["count_include_pad"]), where)

    _avg_pool1d = _avg_pool2d

    def _pool(self, a: dict, mode: str, n: int, dilation: Any, count_pad: bool,
              where: str) -> Val:
        if a["ceil_mode"]:
            raise UnsupportedModelError(f"{where}: pooling with ceil_mode=True")
        kernel = per_axis(a["kernel_size"], n)
        stride = per_axis(a["stride"], n) if a["stride"] else kernel
        pad = per_axis(a["padding"], n)
        return self.b.pool(as_val(a["input"], where), mode, kernel, stride, pad + pad,
                           per_axis(dilation, n), count_pad, where)

    def _adaptive_avg_pool2d(self, node, op, args, kw, where):
        """Global average pooling (output size 1 on every pooled axis): a mean."""
        v, size = as_val(args[0], where), per_axis(args[1], 1 if op.endswith("1d") else 2)
        if any(s != 1 for s in size):
            raise UnsupportedModelError(f"{where}: {op} to {size}; only to size 1 (global "
                                        "average pooling)")
        return self.b.reduce(v, "mean", list(range(-len(size), 0)), True, where)

    _adaptive_avg_pool1d = _adaptive_avg_pool2d

    def _mean(self, node, op, args, kw, where):
        a = _args(args, kw, ["input", "dim", "keepdim", "dtype"], [None, None, False, None])
        dims = a["dim"] if isinstance(a["dim"], list | tuple) or a["dim"] is None \
            else [a["dim"]]
        mode = {"mean": "mean", "sum": "sum", "amax": "max"}[op]
        return self.b.reduce(as_val(a["input"], where), mode, dims or None,
                             bool(a["keepdim"]), where)

    _sum = _mean
    _amax = _mean

    def _log_softmax(self, node, op, args, kw, where):
        return self.b.log_softmax(as_val(args[0], where), int(args[1]), where)

    def _clamp(self, node, op, args, kw, where):
        names = ["input", "min_val", "max_val"] if op == "hardtanh" else ["input", "min", "max"]
        default = [None, -1.0, 1.0] if op == "hardtanh" else [None, None, None]
        a = _args(args, kw, names, default)
        lo, hi = a[names[1]], a[names[2]]
        if not all(b is None or isinstance(b, int | float) for b in (lo, hi)):
            raise UnsupportedModelError(f"{where}: {op} with tensor bounds")
        return self.b.elementwise("clip", as_val(a["input"], where),
                                  min=None if lo is None else float(lo),
                                  max=None if hi is None else float(hi))

    _hardtanh = _clamp

    def _leaky_relu(self, node, op, args, kw, where):
        a = _args(args, kw, ["input", "negative_slope"], [None, 0.01])
        return self.b.elementwise("leaky_relu", as_val(a["input"], where),
                                  alpha=float(a["negative_slope"]))

    def _hardsigmoid(self, node, op, args, kw, where):
        return self.b.elementwise("hardsigmoid", as_val(args[0], where), alpha=1 / 6,
                                  beta=0.5)

    def _hardswish(self, node, op, args, kw, where):
        return self.b.elementwise("hardswish", as_val(args[0], where))

    def _constant_pad_nd(self, node, op, args, kw, where):
        if op == "pad":
            a = _args(args, kw, ["input", "pad", "mode", "value"],
                      [None, None, "constant", None])
            if a["mode"] != "constant":
                raise UnsupportedModelError(f"{where}: pad mode {a['mode']!r}; only constant")
        else:
            a = _args(args, kw, ["input", "pad", "value"], [None, None, 0.0])
        v = as_val(a["input"], where)
        torch_pads = [int(p) for p in a["pad"]]
        if len(torch_pads) % 2 or len(torch_pads) > 2 * v.ndim:
            raise UnsupportedModelError(f"{where}: {len(torch_pads)} pads for rank {v.ndim}")
        pads = [0] * (2 * v.ndim)
        for i in range(len(torch_pads) // 2):  # torch: (begin, end) of the last axis first
            pads[v.ndim - 1 - i], pads[2 * v.ndim - 1 - i] = torch_pads[2 * i:2 * i + 2]
        return self.b.pad(v, pads, float(a["value"] or 0.0), where)

    _pad = _constant_pad_nd

    def _lstm(self, node, op, args, kw, where):
        if len(args) != 9 or not isinstance(args[1], list):
            raise UnsupportedModelError(f"{where}: unsupported lstm overload (packed "
                                        "sequences?)")
        for h in args[1]:
            if not isinstance(h, np.ndarray) or np.any(h != 0):
                raise UnsupportedModelError(f"{where}: LSTM with a non-zero initial state; "
                                            "only zero initial states can be compiled")

        def direction(v, time_axis, w, b_ih, b_hh, reverse, path):
            return self.b.lstm_direction(v, time_axis, w[0], w[1], b_ih, b_hh, reverse, path,
                                         where)

        out, seqs = self._recurrent(node, args, where, "LSTM", direction,
                                    "LSTM with projections (proj_size) or computed weights")
        return [out, _HN(seqs), FinalCellState("final cell state c_n")]

    def _gru(self, node, op, args, kw, where):
        if len(args) != 9 or isinstance(args[1], list):
            raise UnsupportedModelError(f"{where}: unsupported gru overload (packed "
                                        "sequences?)")
        if not isinstance(args[1], np.ndarray) or np.any(args[1] != 0):
            raise UnsupportedModelError(f"{where}: GRU with a non-zero initial state; "
                                        "only zero initial states can be compiled")

        def direction(v, time_axis, w, b_ih, b_hh, reverse, path):  # torch's reset form
            return self.b.gru_direction(v, time_axis, w[0], w[1], b_ih, b_hh, True, reverse,
                                        path, where)

        out, seqs = self._recurrent(node, args, where, "GRU", direction,
                                    "GRU with computed weights")
        return [out, _HN(seqs)]

    def _recurrent(self, node, args, where: str, name: str, direction,
                   odd_weights: str) -> tuple[Val, list[tuple[Val, bool]]]:
        """aten.lstm / aten.gru (x, hx, flat weights, bias, layers, dropout, train,
        bidirectional, batch_first): one `direction(v, time_axis, [w_ih, w_hh, ...], b_ih,
        b_hh, reverse, path)` per layer and direction, the directions of a layer
        concatenated; (the output in the model's layout, every direction's sequence for
        h_n)."""
        x, _, flat, has_bias, layers, _dropout, train, bidir, batch_first = args
        if train:
            raise UnsupportedModelError(f"{where}: {name} in training mode")
        dirs = 2 if bidir else 1
        per = len(flat) // (layers * dirs)
        if per != (4 if has_bias else 2) or any(not isinstance(w, np.ndarray) for w in flat):
            raise UnsupportedModelError(f"{where}: {odd_weights}")
        base = self.path_of(node.args[2][0], node, suffix=".weight_ih_l0")
        v = as_val(x, where)
        time_axis = 1 if batch_first else 0
        seqs: list[tuple[Val, bool]] = []
        for layer in range(layers):
            outs = []
            for d in range(dirs):
                w = flat[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
                zero = np.zeros(w[0].shape[0], np.float32)
                b_ih, b_hh = (w[2], w[3]) if has_bias else (zero, zero)
                path = f"{base}.l{layer}" + ("_reverse" if d else "")
                o = direction(v, time_axis, w, b_ih, b_hh, bool(d), path)
                outs.append(o)
                seqs.append((o, bool(d)))
            v = outs[0] if dirs == 1 else self.b.concat(outs, 2, where)
            time_axis = 1
        return (v if batch_first else self.b.transpose(v, [1, 0, 2], where)), seqs


def _args(args: list, kw: dict, names: list[str], defaults: list) -> dict[str, Any]:
    """An ATen call's arguments by name: positional, then keyword, then the default."""
    out = dict(zip(names, defaults))
    out.update(zip(names, args))
    out.update({k: v for k, v in kw.items() if k in out})
    return out


def _operand(x: Any) -> Any:
    if isinstance(x, Val | np.ndarray):
        return x
    if isinstance(x, int | float):
        return np.float32(x)
    raise UnsupportedModelError(f"unsupported operand {type(x).__name__}")
