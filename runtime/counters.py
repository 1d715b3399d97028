"""Event counters: what the cost model multiplies by per-event latency and energy.

One counting rule (`record`) maps an executed instruction and its register shapes to events.
The emulator calls it with the shapes it sees at run time; `static_counts` calls it with
shapes inferred from the program alone, so both agree by construction and a test keeps the
shape inference honest. The only data-dependent count, `dac_pulses` (non-zero DAC digits),
is filled by the emulator and left None by `static_counts`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from farc.errors import ProgramError

from .crossbar import input_cycles

BYTES_PER_ELEMENT = 4  # registers are float32
DIGITAL = ("add", "sub", "mul", "sigmoid", "tanh", "gelu", "scale", "softmax", "layernorm")
DATA_DEPENDENT = ("dac_pulses",)


@dataclass
class Counters:
    """Events of one or more runs. Keys of the per-layer / per-crossbar maps are ids."""

    mvms_per_layer: dict[int, int] = field(default_factory=dict)
    """Input vectors applied to each crossbar layer."""
    mvms_per_crossbar: dict[int, int] = field(default_factory=dict)
    """MVMs (one vector, all its input cycles) run by each physical crossbar."""
    dac_cycles: int = 0
    """Crossbar input cycles: crossbar MVMs x ceil(input_bits / dac_bits)."""
    dac_conversions: int = 0
    """Row drives: crossbar MVMs x cycles x rows in use."""
    dac_pulses: int | None = 0
    """Row drives with a non-zero digit (data dependent; None when counted statically)."""
    adc_conversions: int = 0
    """ADC conversions: crossbar MVMs x cycles x columns in use."""
    digital_ops: dict[str, int] = field(default_factory=dict)
    """Digital work by kind, in elements (matmul: multiply-accumulates; mvm side work:
    quantize = inputs quantized, shift_add = ADC outputs accumulated, rescale = outputs)."""
    bytes_moved: int = 0
    """Bytes read and written between registers (float32 elements x 4)."""
    instructions: int = 0
    """Instructions executed (loop bodies count once per step)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mvms_per_layer"] = {str(k): v for k, v in sorted(self.mvms_per_layer.items())}
        d["mvms_per_crossbar"] = {str(k): v for k, v in sorted(self.mvms_per_crossbar.items())}
        d["digital_ops"] = dict(sorted(self.digital_ops.items()))
        return d

    def static_part(self) -> dict[str, Any]:
        """to_dict() without the data-dependent counts (what static_counts can know)."""
        return {k: v for k, v in self.to_dict().items() if k not in DATA_DEPENDENT}

    def add(self, other: Counters, times: int = 1) -> None:
        """Accumulate `times` copies of another set of counts (a loop body's)."""
        for k, v in other.mvms_per_layer.items():
            self.mvms_per_layer[k] = self.mvms_per_layer.get(k, 0) + v * times
        for k, v in other.mvms_per_crossbar.items():
            self.mvms_per_crossbar[k] = self.mvms_per_crossbar.get(k, 0) + v * times
        for k, v in other.digital_ops.items():
            self.bump(k, v * times)
        for name in ("dac_cycles", "dac_conversions", "adc_conversions", "bytes_moved",
                     "instructions"):
            setattr(self, name, getattr(self, name) + getattr(other, name) * times)
        if self.dac_pulses is not None and other.dac_pulses is not None:
            self.dac_pulses += other.dac_pulses * times
        else:
            self.dac_pulses = None

    def bump(self, kind: str, n: int) -> None:
        self.digital_ops[kind] = self.digital_ops.get(kind, 0) + int(n)


@dataclass(frozen=True)
class LayerGeometry:
    """What counting needs from a layer dict (no arrays)."""

    K: int
    N: int
    cycles: int
    crossbars: list[list[int]]
    used_rows: list[int]
    """Per crossbar of a replica (row tile major), rows in use."""
    used_cols: list[int]
    """Per crossbar of a replica, columns in use."""

    @classmethod
    def of(cls, L: dict[str, Any]) -> LayerGeometry:
        J = L["N"] * L["slices"] * L["signs"]
        rows = [min(L["rows"], L["K"] - r * L["rows"]) for r in range(L["row_tiles"])]
        cols = [min(L["cols"], J - c * L["cols"]) for c in range(L["col_tiles"])]
        return cls(K=L["K"], N=L["N"], cycles=input_cycles(L["input_bits"], L["dac_bits"]),
                   crossbars=L["crossbars"],
                   used_rows=[r for r in rows for _ in cols], used_cols=cols * len(rows))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def record(c: Counters, ins: dict[str, Any], in_shapes: list[tuple[int, ...]],
           out_shape: tuple[int, ...] | None, geom: LayerGeometry | None = None) -> None:
    """Count one executed (non-loop) instruction from its register shapes."""
    op = ins["op"]
    c.instructions += 1
    out_n = _numel(out_shape) if out_shape is not None else 0
    read = 0 if op == "zeros" else sum(_numel(s) for s in in_shapes)
    c.bytes_moved += BYTES_PER_ELEMENT * (read + out_n)
    if op in DIGITAL:
        c.bump(op, _numel(in_shapes[0]) if op == "layernorm" else out_n)
    elif op == "matmul":
        c.bump("matmul_mac", out_n * in_shapes[0][-1])
    elif op == "mvm":
        _record_mvm(c, ins["layer"], _numel(in_shapes[0][:-1]), geom)


def _record_mvm(c: Counters, layer: int, vectors: int, g: LayerGeometry) -> None:
    c.mvms_per_layer[layer] = c.mvms_per_layer.get(layer, 0) + vectors
    reps = len(g.crossbars)
    for r, ids in enumerate(g.crossbars):
        share = vectors // reps + (1 if r < vectors % reps else 0)
        for xb in ids:
            c.mvms_per_crossbar[xb] = c.mvms_per_crossbar.get(xb, 0) + share
    c.dac_cycles += vectors * len(g.used_rows) * g.cycles
    c.dac_conversions += vectors * sum(g.used_rows) * g.cycles
    adc = vectors * sum(g.used_cols) * g.cycles
    c.adc_conversions += adc
    c.bump("quantize", vectors * g.K)
    c.bump("shift_add", adc)
    c.bump("rescale", vectors * g.N)


def record_move(c: Counters, shape: tuple[int, ...]) -> None:
    """A loop gather or scatter of one step's slice: read once, written once."""
    c.bytes_moved += 2 * BYTES_PER_ELEMENT * _numel(shape)


# ---------------------------------------------------------------- static counting
def static_counts(program: Any, batch: int,
                  input_shapes: dict[str, tuple[int, ...]] | None = None) -> Counters:
    """Counts of one run on `batch` samples, from the program alone (no arithmetic).

    `input_shapes` gives full shapes (batch included) for inputs whose spec has unknown
    (null) dimensions beyond the batch."""
    m = program.manifest
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in m["inputs"]:
        given = (input_shapes or {}).get(spec["name"])
        shape = tuple(given) if given is not None else (batch, *spec["shape"][1:])
        if any(d is None for d in shape):
            raise ProgramError(f"static_counts: input {spec['name']!r} has unknown dims "
                               f"{spec['shape']}; pass input_shapes")
        shapes[spec["name"]] = shape
    ctx = {"inputs": shapes, "consts": {k: program.arrays[v].shape
                                        for k, v in m.get("constants", {}).items()},
           "geoms": [LayerGeometry.of(L) for L in m["layers"]]}
    c = Counters()
    c.dac_pulses = None
    _static_block(m["instructions"], {}, ctx, c)
    return c


def _static_block(block: list, regs: dict, ctx: dict, c: Counters) -> None:
    for ins in block:
        if ins["op"] == "loop":
            _static_loop(ins, regs, ctx, c)
            continue
        in_shapes = [regs[r] for r in ins.get("in", [])]
        out = infer_shape(ins, in_shapes, ctx)
        geom = ctx["geoms"][ins["layer"]] if ins["op"] == "mvm" else None
        record(c, ins, in_shapes, out, geom)
        if "out" in ins and out is not None:
            regs[ins["out"]] = out


def _static_loop(ins: dict, regs: dict, ctx: dict, c: Counters) -> None:
    T = regs[ins["count"]["reg"]][ins["count"]["axis"]]
    body_regs = dict(regs)
    step = Counters()
    for g in ins["gather"]:
        shape = list(regs[g["src"]])
        del shape[g["axis"]]
        body_regs[g["dst"]] = tuple(shape)
        record_move(step, tuple(shape))
    _static_block(ins["body"], body_regs, ctx, step)
    for s in ins["scatter"]:
        src = body_regs[s["src"]]
        record_move(step, src)
        axis = s["axis"] if s["axis"] >= 0 else s["axis"] + len(src) + 1
        regs[s["dst"]] = (*src[:axis], T, *src[axis:])
    for reg in ins["carry"]:
        regs[reg] = body_regs[reg]
    c.add(step, times=T)
    c.instructions += 1


def infer_shape(ins: dict, s: list[tuple[int, ...]], ctx: dict) -> tuple[int, ...] | None:
    """The output shape numpy would produce for one instruction (batch axis included)."""
    op = ins["op"]
    if op == "input":
        return ctx["inputs"][ins["name"]]
    if op == "output":
        return None
    if op == "const":
        return tuple(ctx["consts"][ins["name"]])
    if op == "mvm":
        return (*s[0][:-1], ctx["geoms"][ins["layer"]].N)
    if op in ("add", "sub", "mul"):
        return tuple(np.broadcast_shapes(s[0], s[1]))
    if op in ("sigmoid", "tanh", "gelu", "scale", "softmax", "layernorm"):
        return s[0]
    if op == "matmul":
        return (*np.broadcast_shapes(s[0][:-2], s[1][:-2]), s[0][-2], s[1][-1])
    return _infer_move(ins, s)


def _infer_move(ins: dict, s: list[tuple[int, ...]]) -> tuple[int, ...]:
    op = ins["op"]
    if op == "reshape":
        return _reshape(s[0], ins["shape"])
    if op == "transpose":
        return tuple(s[0][p] for p in ins["perm"])
    if op == "concat":
        axis = ins["axis"] % len(s[0])
        out = list(s[0])
        out[axis] = sum(x[axis] for x in s)
        return tuple(out)
    if op == "slice":
        axis = ins["axis"] % len(s[0])
        out = list(s[0])
        out[axis] = len(range(s[0][axis])[ins["start"]:ins["stop"]])
        return tuple(out)
    if op == "zeros":
        return (s[0][0], *ins["shape"])
    raise ProgramError(f"static_counts: no shape rule for opcode {op!r}")


def _reshape(src: tuple[int, ...], shape: list[int]) -> tuple[int, ...]:
    total = _numel(src[1:])
    known = _numel([d for d in shape if d != -1])
    return (src[0], *[total // known if d == -1 else d for d in shape])
