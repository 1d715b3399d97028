"""Tile program -> QDQ ONNX model: the exact, independent reference for the emulator.

`build_qdq_onnx(program)` translates every instruction of a tile program into ONNX, opcode
by opcode, without using the emulator's code. Each crossbar `mvm` becomes the quantized
matmul that docs/numerics.md says the hardware computes when its ADC is lossless:

    x_int = Clip(Round(Div(x, s_x)), -Qx, Qx)       the DAC's integer input (half to even)
    q     = int8/int16 initializer rebuilt from the conductance codes, Cast to float
    y     = MatMul(x_int, q) * (s_x * s_w) + bias     integer matmul, then the rescale

The integer weights are rebuilt from what the crossbars hold (codes + column maps, see
docs/tile-program.md), never from a float copy, so a packing bug in the compiler shows up as
a mismatch. Input quantization uses primitive ops (not QuantizeLinear) because they work for
any input bit width and clip to the symmetric range [-Qx, Qx] the DAC uses; see `_op_mvm`
for why the rescale follows the matmul instead of a DequantizeLinear preceding it.

`loop` becomes an ONNX `Loop`: carried registers are loop-carried state, `gather` is a
Gather on the iteration index (T-1-t when reversed), and `scatter` is a scan output that is
reversed if needed and transposed into place. The batch axis stays dynamic.

The model is plain float32 ONNX (opset 21), so any runtime can run it; verification uses
onnxruntime. `write_reference_models` writes it with the float golden model beside a
program under the names `reference_paths` defines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from farc.errors import ProgramError

OPSET = 21
IR_VERSION = 10
_INT64_MAX = 2**62  # "to the end" for Slice; ONNX clamps it
_INT64_MIN = -(2**62)


class ProgramLike(Protocol):
    """What the translator reads: farc.runtime.program.Program satisfies it."""

    manifest: dict[str, Any]
    arrays: Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------- file names
def reference_paths(program_path: str | Path) -> tuple[Path, Path]:
    """The reference models that live beside `model.farc`: (model.float.onnx, model.qdq.onnx).

    `farc compile --emit-onnx` writes them there and `farc verify` looks for them there."""
    p = Path(program_path)
    stem = p.with_suffix("") if p.suffix == ".farc" else p
    return stem.with_name(stem.name + ".float.onnx"), stem.with_name(stem.name + ".qdq.onnx")


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` atomically (temp file + rename), so a crash never leaves half a file."""
    from farc.atomic import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return path


def write_reference_models(program: ProgramLike, model: Any, program_path: str | Path,
                           ) -> tuple[Path, Path]:
    """Write the float golden ONNX of `model` (the nn.Module the program was compiled from)
    and the QDQ ONNX of `program` beside `program_path`; returns (float_path, qdq_path)."""
    from farc.check.onnx_export import (
        export_onnx,  # torch stays out of plain `import farc.check.qdq`
    )

    float_path, qdq_path = reference_paths(program_path)
    qdq = build_qdq_onnx(program)  # first: a program it cannot translate leaves no files
    export_onnx(model, float_path)  # atomic itself
    save_onnx(qdq, qdq_path)
    return float_path, qdq_path


# ----------------------------------------------------------------------------- weights
def layer_array(program: ProgramLike, layer: dict, role: str) -> np.ndarray | None:
    """The array a layer names for `role` (codes, w_scale, bias, ...), or None if absent.

    A layer's `arrays` maps roles to names in the program's array table; an inline array
    (hand-built programs) is accepted as well."""
    ref = layer.get("arrays", {}).get(role)
    if ref is None:
        return None
    if isinstance(ref, str):
        if ref not in program.arrays:
            raise ProgramError(f"layer {layer.get('name', layer.get('id'))}: array {ref!r} "
                               f"({role}) is missing from the program")
        return np.asarray(program.arrays[ref])
    return np.asarray(ref)


def weight_levels(layer: dict, codes: np.ndarray) -> np.ndarray:
    """The conductance level of every (row k, expanded column j): [K, N*slices*signs].

    Expanded column j sits in column tile j // cols, column j % cols; row k in row tile
    k // rows, row k % rows (docs/tile-program.md)."""
    rt, ct, rows, cols = codes.shape
    quant, cell_bits = layer["quant"], int(layer["crossbar"]["cell_bits"])
    differential = quant["mapping"] == "differential"  # G+/G- pair; the sign bit not stored
    magnitude_bits = int(quant["weight_bits"]) - (1 if differential else 0)
    slices = -(-magnitude_bits // cell_bits)
    K, E = int(layer["K"]), int(layer["N"]) * slices * (2 if differential else 1)
    if rt * rows < K or ct * cols < E:
        raise ProgramError(f"layer {layer.get('name')}: codes {list(codes.shape)} cannot hold "
                           f"K={K} rows and {E} expanded columns")
    dense = codes.transpose(0, 2, 1, 3).reshape(rt * rows, ct * cols)
    return dense[:K, :E].astype(np.int64)


def integer_weights(program: ProgramLike, layer: dict) -> np.ndarray:
    """Rebuild the signed integer weights q [K, N] from the codes and column maps.

    q[k, n] = sum over the columns j of output n of sign(j) * 2**(slice(j)*cell_bits) * g[k, j]
    (differential: G+ minus G-), minus Qw for the offset mapping."""
    name = layer.get("name", layer.get("id"))
    g = weight_levels(layer, layer_array(program, layer, "codes"))
    col_out = layer_array(program, layer, "col_out").astype(np.int64)
    col_slice = layer_array(program, layer, "col_slice").astype(np.int64)
    col_sign = layer_array(program, layer, "col_sign").astype(np.int64)
    K, N, cell_bits = int(layer["K"]), int(layer["N"]), int(layer["crossbar"]["cell_bits"])
    if not (len(col_out) == len(col_slice) == len(col_sign) == g.shape[1]):
        raise ProgramError(f"layer {name}: column maps have {len(col_out)} entries, "
                           f"expected {g.shape[1]}")
    coef = (2 ** (col_slice * cell_bits)) * np.where(col_sign == 0, 1, -1)
    q = np.zeros((K, N), np.int64)
    np.add.at(q.T, col_out, (g * coef).T)
    weight_bits = int(layer["quant"]["weight_bits"])
    qw = 2 ** (weight_bits - 1) - 1
    if layer["quant"]["mapping"] == "offset":
        q -= qw
    if np.abs(q).max(initial=0) > qw:
        raise ProgramError(f"layer {name}: rebuilt weight {int(np.abs(q).max())} exceeds "
                           f"Qw={qw} for {weight_bits}-bit weights")
    return q


# ----------------------------------------------------------------------------- translator
@dataclass
class _Scope:
    """One graph being built (the main graph or a loop body): its nodes and register map."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # register -> current ONNX value name
    rank: dict[str, int] = field(default_factory=dict)  # register -> rank (batch included)
    inner: dict[str, str] = field(default_factory=dict)  # register -> loop that last wrote it


class _Translator:
    """Walks the instruction list once, emitting ONNX nodes into the current scope.

    Registers may be rewritten; ONNX values may not, so every write gets a fresh value name
    (SSA) and `env` tracks which value a register currently holds. Ranks are tracked
    statically because Transpose needs full permutations."""

    def __init__(self, program: ProgramLike) -> None:
        self.program = program
        self.manifest = program.manifest
        self.layers = {int(layer["id"]): layer for layer in self.manifest.get("layers", [])}
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._weights: dict[int, tuple[str, str, str | None]] = {}
        self.scope = _Scope()

    # -- naming and emission
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}#{self._count}"

    def init(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def scalar(self, value: float, hint: str = "c") -> str:
        return self.init(np.array(value, np.float32), hint)

    def ints(self, values: list[int], hint: str = "i") -> str:
        return self.init(np.array(values, np.int64), hint)

    def emit(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.scope.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def read(self, reg: str, where: str) -> str:
        if reg in self.scope.inner:
            raise ProgramError(f"{where}: register {reg!r} was last written inside the loop at "
                               f"{self.scope.inner[reg]} without being carried or scattered")
        if reg not in self.scope.env:
            raise ProgramError(f"{where}: register {reg!r} is read before it is written")
        return self.scope.env[reg]

    def write(self, reg: str, value: str, rank: int) -> None:
        self.scope.inner.pop(reg, None)
        self.scope.env[reg] = value
        self.scope.rank[reg] = rank

    def batch_dim(self, value: str) -> str:
        """A [1] int64 tensor holding the batch size of `value`."""
        return self.emit("Shape", [value], "batch", start=0, end=1)

    # -- driver
    def run(self, instructions: list[dict], where: str = "instructions") -> None:
        for i, ins in enumerate(instructions):
            op = ins.get("op")
            handler = _HANDLERS.get(op)
            if handler is None:
                raise ProgramError(f"{where}[{i}]: opcode {op!r} has no ONNX translation")
            handler(self, ins, f"{where}[{i}] {op}")

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.scope.nodes, "farc_qdq", self.inputs, self.outputs,
                                  self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="farc.check.qdq")
        model.ir_version = IR_VERSION
        name = self.manifest.get("model", {}).get("name", "")
        model.doc_string = f"QDQ reference of farc tile program {name}".strip()
        return model


def _dims(shape: list | None) -> list:
    return ["batch" if d is None else int(d) for d in (shape or [None])]


def _in(t: _Translator, ins: dict, k: int, where: str) -> str:
    regs = ins.get("in", [])
    if k >= len(regs):
        raise ProgramError(f"{where}: needs at least {k + 1} input registers, has {len(regs)}")
    return t.read(regs[k], where)


def _rank_of(t: _Translator, ins: dict, k: int) -> int:
    return t.scope.rank.get(ins["in"][k], 0)


# ----------------------------------------------------------------------------- opcodes
def _op_input(t: _Translator, ins: dict, where: str) -> None:
    spec = {s["name"]: s for s in t.manifest.get("inputs", [])}.get(ins["name"])
    if spec is None:
        raise ProgramError(f"{where}: program has no input {ins['name']!r}")
    if all(i.name != spec["name"] for i in t.inputs):
        t.inputs.append(helper.make_tensor_value_info(spec["name"], TensorProto.FLOAT,
                                                      _dims(spec.get("shape"))))
    t.write(ins["out"], spec["name"], len(_dims(spec.get("shape"))))


def _op_output(t: _Translator, ins: dict, where: str) -> None:
    name = ins["name"]
    spec = {s["name"]: s for s in t.manifest.get("outputs", [])}.get(name, {})
    t.scope.nodes.append(helper.make_node("Identity", [_in(t, ins, 0, where)], [name],
                                          name=f"output:{name}"))
    t.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                   _dims(spec.get("shape"))))


def _op_const(t: _Translator, ins: dict, where: str) -> None:
    ref = t.manifest.get("constants", {}).get(ins["name"])
    if ref is None or ref not in t.program.arrays:
        raise ProgramError(f"{where}: constant {ins['name']!r} is not in the program")
    arr = np.asarray(t.program.arrays[ref], np.float32)
    t.write(ins["out"], t.init(arr, f"const/{ins['name']}"), arr.ndim)


def _layer_weights(t: _Translator, layer: dict) -> tuple[str, str, str | None]:
    """Initializers (integer weight, rescale s_x * s_w, bias) of a layer, built once even
    when a loop body or several instructions use the layer."""
    lid = int(layer["id"])
    if lid not in t._weights:
        q = integer_weights(t.program, layer)
        dtype = np.int8 if int(layer["quant"]["weight_bits"]) <= 8 else np.int16
        s_w = layer_array(t.program, layer, "w_scale").astype(np.float32)
        rescale = np.float32(layer["in_scale"]) * s_w
        bias = layer_array(t.program, layer, "bias")
        hint = f"{layer.get('name', lid)}"
        t._weights[lid] = (t.init(q.astype(dtype), f"{hint}/q"),
                           t.init(rescale.astype(np.float32), f"{hint}/rescale"),
                           None if bias is None else t.init(bias.astype(np.float32),
                                                             f"{hint}/bias"))
    return t._weights[lid]


def _op_mvm(t: _Translator, ins: dict, where: str) -> None:
    """x_int = clip(rint(x / s_x), -Qx, Qx); y = (x_int @ q) * (s_x * s_w) + b.

    The rescale comes after the matmul (docs/numerics.md's own formula) rather than as a
    DequantizeLinear before it: onnxruntime's extended optimizations rewrite
    DequantizeLinear -> MatMul into MatMulNBits, which re-quantizes the activations and so
    stops being a reference. The float32 matmul of integers is exact while |x_int @ q| < 2**24."""
    layer = t.layers.get(int(ins["layer"]))
    if layer is None:
        raise ProgramError(f"{where}: layer {ins['layer']} is not in the program")
    hint = str(layer.get("name", layer["id"]))
    q, rescale, bias = _layer_weights(t, layer)
    qx = float(2 ** (int(layer["quant"]["input_bits"]) - 1) - 1)
    s_x = t.scalar(float(layer["in_scale"]), f"{hint}/in_scale")
    x = t.emit("Div", [_in(t, ins, 0, where), s_x], f"{hint}/x_div")
    x = t.emit("Round", [x], f"{hint}/x_round")
    x = t.emit("Clip", [x, t.scalar(-qx, "qmin"), t.scalar(qx, "qmax")], f"{hint}/x_int")
    w = t.emit("Cast", [q], f"{hint}/q_float", to=TensorProto.FLOAT)
    y = t.emit("MatMul", [x, w], f"{hint}/acc")
    y = t.emit("Mul", [y, rescale], f"{hint}/rescale")
    if bias is not None:
        y = t.emit("Add", [y, bias], f"{hint}/bias_add")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _elementwise(onnx_op: str) -> Callable[[_Translator, dict, str], None]:
    def handler(t: _Translator, ins: dict, where: str) -> None:
        args = [_in(t, ins, k, where) for k in range(len(ins["in"]))]
        rank = max(_rank_of(t, ins, k) for k in range(len(ins["in"])))
        t.write(ins["out"], t.emit(onnx_op, args, f"{ins['out']}/{onnx_op}"), rank)
    return handler


def _op_gelu(t: _Translator, ins: dict, where: str) -> None:
    """GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))."""
    x = _in(t, ins, 0, where)
    e = t.emit("Erf", [t.emit("Div", [x, t.scalar(np.sqrt(2.0), "sqrt2")], "gelu/div")],
               "gelu/erf")
    e = t.emit("Add", [e, t.scalar(1.0, "one")], "gelu/add")
    y = t.emit("Mul", [t.emit("Mul", [x, t.scalar(0.5, "half")], "gelu/half"), e], "gelu")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_layernorm(t: _Translator, ins: dict, where: str) -> None:
    args = [_in(t, ins, k, where) for k in range(3)]
    y = t.emit("LayerNormalization", args, "layernorm", axis=-1,
               epsilon=float(ins.get("eps", 1e-5)))
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_softmax(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("Softmax", [_in(t, ins, 0, where)], "softmax", axis=int(ins.get("axis", -1)))
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_scale(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("Mul", [_in(t, ins, 0, where), t.scalar(float(ins["value"]), "scale")], "scale")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_reshape(t: _Translator, ins: dict, where: str) -> None:
    x = _in(t, ins, 0, where)
    shape = [int(d) for d in ins["shape"]]
    full = t.emit("Concat", [t.batch_dim(x), t.ints(shape, "shape")], "reshape/shape", axis=0)
    t.write(ins["out"], t.emit("Reshape", [x, full], "reshape"), 1 + len(shape))


def _op_transpose(t: _Translator, ins: dict, where: str) -> None:
    perm = [int(p) for p in ins["perm"]]
    if perm[0] != 0:
        raise ProgramError(f"{where}: perm {perm} moves the batch axis")
    y = t.emit("Transpose", [_in(t, ins, 0, where)], "transpose", perm=perm)
    t.write(ins["out"], y, len(perm))


def _op_concat(t: _Translator, ins: dict, where: str) -> None:
    args = [_in(t, ins, k, where) for k in range(len(ins["in"]))]
    y = t.emit("Concat", args, "concat", axis=int(ins["axis"]))
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_slice(t: _Translator, ins: dict, where: str) -> None:
    start = int(ins.get("start") or 0)
    stop = _INT64_MAX if ins.get("stop") is None else int(ins["stop"])
    y = t.emit("Slice", [_in(t, ins, 0, where), t.ints([start], "start"),
                         t.ints([stop], "stop"), t.ints([int(ins["axis"])], "axis")], "slice")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_zeros(t: _Translator, ins: dict, where: str) -> None:
    shape = [int(d) for d in ins["shape"]]
    full = t.emit("Concat", [t.batch_dim(_in(t, ins, 0, where)), t.ints(shape, "shape")],
                  "zeros/shape", axis=0)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    t.write(ins["out"], t.emit("ConstantOfShape", [full], "zeros", value=zero), 1 + len(shape))


def _op_im2col(t: _Translator, ins: dict, where: str) -> None:
    """Patches [B, P, C*K] of [B, C, *S] (K = prod(kernel), rows in (channel, offset)
    order), written as ONNX's own Conv: every channel alone (as batch rows, [B*C, 1, *S])
    through a one-hot kernel per offset ([K, 1, *kernel]: output k copies tap k), so the
    padding, stride and dilation are ONNX's. Multiplying by 1 and adding zeros is exact."""
    kernel = [int(k) for k in ins["kernel"]]
    taps = int(np.prod(kernel))
    x = _in(t, ins, 0, where)
    shape = t.emit("Shape", [x], "im2col/shape")
    lead = t.emit("Slice", [shape, t.ints([0], "s"), t.ints([2], "e")], "im2col/BC")
    tail = t.emit("Slice", [shape, t.ints([2], "s"), t.ints([_INT64_MAX], "e")], "im2col/S")
    flat = t.emit("Concat", [t.ints([-1, 1], "BC1"), tail], "im2col/flat_shape", axis=0)
    one_hot = np.eye(taps, dtype=np.float32).reshape(taps, 1, *kernel)
    y = t.emit("Conv", [t.emit("Reshape", [x, flat], "im2col/channels"),
                        t.init(one_hot, "im2col/one_hot")], "im2col/taps",
               kernel_shape=kernel, strides=[int(s) for s in ins["stride"]],
               pads=[int(p) for p in ins["pads"]] * 2,
               dilations=[int(d) for d in ins["dilation"]])
    split = t.emit("Concat", [lead, t.ints([taps, -1], "KP")], "im2col/split_shape", axis=0)
    y = t.emit("Reshape", [y, split], "im2col/BCKP")
    y = t.emit("Transpose", [y], "im2col/BPCK", perm=[0, 3, 1, 2])
    y = t.emit("Reshape", [y, t.ints([0, 0, -1], "BPR")], "im2col")
    t.write(ins["out"], y, 3)
def _op_pool(t: _Translator, ins: dict, where: str) -> None:
    """MaxPool or AveragePool on [B, C, *spatial], floor mode, the program's pads."""
    common = {"kernel_shape": [int(k) for k in ins["kernel"]],
              "strides": [int(s) for s in ins["stride"]], "pads": [int(p) for p in ins["pads"]],
              "dilations": [int(d) for d in ins["dilation"]]}
    if ins["mode"] == "max":
        y = t.emit("MaxPool", [_in(t, ins, 0, where)], "maxpool", **common)
    elif ins["mode"] == "avg":
        y = t.emit("AveragePool", [_in(t, ins, 0, where)], "avgpool",
                   count_include_pad=int(bool(ins["count_include_pad"])), **common)
    else:
        raise ProgramError(f"{where}: unknown pool mode {ins['mode']!r}")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


_REDUCE = {"mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax"}


def _op_reduce(t: _Translator, ins: dict, where: str) -> None:
    if ins["mode"] not in _REDUCE:
        raise ProgramError(f"{where}: unknown reduce mode {ins['mode']!r}")
    axes = [int(a) for a in ins["axes"]]
    keep = bool(ins["keepdims"])
    y = t.emit(_REDUCE[ins["mode"]], [_in(t, ins, 0, where), t.ints(axes, "axes")],
               f"reduce_{ins['mode']}", keepdims=int(keep))
    t.write(ins["out"], y, _rank_of(t, ins, 0) - (0 if keep else len(axes)))


def _op_log_softmax(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("LogSoftmax", [_in(t, ins, 0, where)], "log_softmax", axis=int(ins["axis"]))
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_clip(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("Clip", [_in(t, ins, 0, where), t.scalar(float(ins["min"]), "clip_min"),
                        t.scalar(float(ins["max"]), "clip_max")], "clip")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_leaky_relu(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("LeakyRelu", [_in(t, ins, 0, where)], "leaky_relu", alpha=float(ins["alpha"]))
    t.write(ins["out"], y, _rank_of(t, ins, 0))


def _op_pad(t: _Translator, ins: dict, where: str) -> None:
    y = t.emit("Pad", [_in(t, ins, 0, where), t.ints([int(p) for p in ins["pads"]], "pads"),
                       t.scalar(float(ins["value"]), "pad_value")], "pad", mode="constant")
    t.write(ins["out"], y, _rank_of(t, ins, 0))


# ----------------------------------------------------------------------------- loop
def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _op_loop(t: _Translator, ins: dict, where: str) -> None:
    """A recurrence -> ONNX Loop. Body inputs: (t, cond, *carry); outputs: (cond, *carry,
    *scatter sources). The body reads every other register from the enclosing scope."""
    outer = t.scope
    count = ins["count"]
    creg = t.read(count["reg"], where)
    cax = _norm_axis(int(count["axis"]), outer.rank.get(count["reg"], 0))
    trip = t.emit("Shape", [creg], "loop/T1", start=cax, end=cax + 1)
    trip = t.emit("Squeeze", [trip], "loop/T")
    last = t.emit("Sub", [trip, t.init(np.array(1, np.int64), "one")], "loop/T-1")
    carry = list(ins.get("carry", []))
    carry_init = [t.read(r, f"{where} carry") for r in carry]

    body = _Scope(env=dict(outer.env), rank=dict(outer.rank), inner=dict(outer.inner))
    it, cond_in = t.fresh("loop/t"), t.fresh("loop/cond")
    carry_in = [t.fresh(f"loop/{r}") for r in carry]
    for reg, name in zip(carry, carry_in):
        body.env[reg] = name
    t.scope = body
    try:
        _loop_gathers(t, ins, it, last, where)
        t.run(ins.get("body", []), f"{where} body")
        outs = [t.emit("Identity", [cond_in], "loop/cond_out")]
        outs += [t.emit("Identity", [t.read(r, f"{where} carry")], f"loop/{r}_out") for r in carry]
        scat = ins.get("scatter", [])
        outs += [t.emit("Identity", [t.read(s["src"], f"{where} scatter")], "loop/scan")
                 for s in scat]
        scat_rank = [body.rank.get(s["src"], 0) for s in scat]
    finally:
        t.scope = outer
    graph = _body_graph(body, it, cond_in, carry_in, outs)
    results = [t.fresh(f"loop/{r}_final") for r in carry] + [t.fresh("loop/stacked") for _ in scat]
    true = t.init(np.array(True), "true")
    outer.nodes.append(helper.make_node("Loop", [trip, true, *carry_init], results,
                                        name=t.fresh("loop"), body=graph))
    for reg in body.env:  # body-only values do not exist outside an ONNX Loop
        if body.env[reg] != outer.env.get(reg) and reg not in carry:
            outer.inner[reg] = where
    for reg, name in zip(carry, results):
        t.write(reg, name, outer.rank.get(reg, 0))
    for s, stacked, rank in zip(scat, results[len(carry):], scat_rank):
        _loop_scatter(t, s, stacked, rank)


def _loop_gathers(t: _Translator, ins: dict, it: str, last: str, where: str) -> None:
    for g in ins.get("gather", []):
        src = t.read(g["src"], f"{where} gather")
        rank = t.scope.rank.get(g["src"], 0)
        idx = t.emit("Sub", [last, it], "loop/rev_t") if g.get("reverse") else it
        out = t.emit("Gather", [src, idx], f"loop/{g['dst']}", axis=_norm_axis(int(g["axis"]),
                                                                                rank))
        t.write(g["dst"], out, rank - 1)


def _loop_scatter(t: _Translator, s: dict, stacked: str, src_rank: int) -> None:
    """Stacked scan output [T, *src] -> dst with T at `axis` (reversed when asked)."""
    if s.get("reverse"):
        stacked = t.emit("Slice", [stacked, t.ints([-1]), t.ints([_INT64_MIN]), t.ints([0]),
                                   t.ints([-1])], "loop/reverse")
    axis = _norm_axis(int(s["axis"]), src_rank + 1)
    perm = list(range(1, src_rank + 1))
    perm.insert(axis, 0)
    t.write(s["dst"], t.emit("Transpose", [stacked], f"loop/{s['dst']}", perm=perm), src_rank + 1)


def _body_graph(body: _Scope, it: str, cond_in: str, carry_in: list[str],
                outs: list[str]) -> onnx.GraphProto:
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(it, TensorProto.INT64, []),
              helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])]
    inputs += [helper.make_tensor_value_info(n, f32, None) for n in carry_in]
    outputs = [helper.make_tensor_value_info(outs[0], TensorProto.BOOL, [])]
    outputs += [helper.make_tensor_value_info(n, f32, None) for n in outs[1:]]
    return helper.make_graph(body.nodes, "loop_body", inputs, outputs)


# One translation per opcode. This module may not import farc.runtime (it is the independent
# reference), so tests/runtime/test_isa.py checks this key set against runtime/isa.py OPS.
_HANDLERS: dict[str, Callable[[_Translator, dict, str], None]] = {
    "input": _op_input,
    "output": _op_output,
    "const": _op_const,
    "mvm": _op_mvm,
    "add": _elementwise("Add"),
    "sub": _elementwise("Sub"),
    "mul": _elementwise("Mul"),
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "gelu": _op_gelu,
    "relu": _elementwise("Relu"),
    "layernorm": _op_layernorm,
    "softmax": _op_softmax,
    "matmul": _elementwise("MatMul"),
    "scale": _op_scale,
    "reshape": _op_reshape,
    "transpose": _op_transpose,
    "concat": _op_concat,
    "slice": _op_slice,
    "zeros": _op_zeros,
    "im2col": _op_im2col,
    "pool": _op_pool,
    "reduce": _op_reduce,
    "log_softmax": _op_log_softmax,
    "clip": _op_clip,
    "leaky_relu": _op_leaky_relu,
    "pad": _op_pad,
    "loop": _op_loop,
}


def build_qdq_onnx(program: ProgramLike) -> onnx.ModelProto:
    """The QDQ ONNX model of `program`: same graph, same quantization, no crossbars.

    With a lossless ADC the emulator must equal this model (run by onnxruntime) up to float32
    rounding; see docs/verify.md for the tolerances `farc verify` applies."""
    t = _Translator(program)
    t.run(list(program.manifest.get("instructions", [])))
    if not t.outputs:
        raise ProgramError("program has no output instruction")
    return t.model()
