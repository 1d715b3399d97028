"""The instruction set of docs/tile-program.md as data: the one opcode table.

For every opcode `OPS` holds its arity, typed attributes, shape rule, event kind and
whether the emulator may run it in lockstep groups. Every other per-opcode table derives
from this one or is checked against it (tests/runtime/test_isa.py, via `disagreements`):
the validator, the emulator's handlers, the event counters (`counters.record`), the static
walker (`walk.py`, used by the counters and the cost model), lockstep grouping, the cost
model's pricing tables and the QDQ reference builder's handlers. An opcode therefore cannot
be known to one part and unknown to another."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farc.errors import ProgramError
from farc.windows import window_out

FORMAT = "farc-tile-program"
VERSION = 2

Shape = tuple[int, ...]

EVENT_KINDS = ("io", "mvm", "digital", "digital_in", "digital_window", "matmul", "move",
               "loop")
"""How an executed opcode is counted (`counters.record`); every kind also counts its
register bytes read and written and one instruction:
- io: program inputs, outputs and constants (bytes only);
- mvm: a crossbar MVM per input vector (cycles, DAC/ADC conversions, side work);
- digital: a digital vector op, one element per output element;
- digital_in: a digital vector op, one element per element of its first input (layernorm);
- digital_window: one element per element of every window (`pool`: output elements times
  the kernel's size, a compare or an add each; overlapping windows read an element again);
- matmul: activation x activation matmul, one multiply-accumulate per MAC;
- move: a data move (bytes only);
- loop: the recurrence itself (its gathers and scatters; the body counts its own)."""
DIGITAL_EVENTS = ("digital", "digital_in", "digital_window")
MATMUL_KIND = "matmul_mac"
"""digital_ops kind of a `matmul` event."""
MVM_SIDE_KINDS = ("quantize", "shift_add", "rescale")
"""digital_ops kinds of the digital work around a crossbar MVM: inputs quantized, ADC
outputs shifted and added, outputs rescaled."""


@dataclass(frozen=True)
class ShapeContext:
    """What a shape rule may read besides its input shapes (all batch axes included)."""

    inputs: Mapping[str, Shape]
    """Program inputs by name."""
    consts: Mapping[str, Shape]
    """Constants by name (no batch axis)."""
    layer_n: Mapping[int, int]
    """Outputs N of each crossbar layer, by layer id."""


ShapeRule = Callable[[tuple[Shape, ...], dict[str, Any], ShapeContext], Shape | None]


@dataclass(frozen=True)
class OpSpec:
    """One opcode: the shape of its instruction dict and what it means to the counters."""

    n_in: int | None
    """Number of input registers; None = one or more."""
    event: str
    """How an execution is counted, one of EVENT_KINDS."""
    shape: ShapeRule | None
    """Output shape from input shapes, instruction and context (None for `loop`, whose
    registers the walker follows itself)."""
    has_out: bool = True
    attrs: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    """Required attributes and their JSON types."""
    lockstep: bool = False
    """Same-shaped instances in one loop body may run as one stacked call
    (runtime/lockstep.py); an `axis` attribute is then shifted past the stacking axis."""
    reads_data: bool = True
    """False when only the input's shape is read (zeros): no input bytes are counted."""
    in_place: bool = False
    """The result is data already in place (a reshape view, a stored constant, the register
    handed out): the cost model charges no data-movement latency for it."""


# ---------------------------------------------------------------- shape rules
def _same(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return s[0]


def _broadcast(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return tuple(int(d) for d in np.broadcast_shapes(*s))


def _input(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return tuple(ctx.inputs[ins["name"]])


def _const(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return tuple(ctx.consts[ins["name"]])


def _none(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> None:
    return None


def _mvm(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return (*s[0][:-1], int(ctx.layer_n[int(ins["layer"])]))


def _matmul(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    batch = np.broadcast_shapes(s[0][:-2], s[1][:-2])
    return (*(int(d) for d in batch), s[0][-2], s[1][-1])


def _reshape(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    src, new = s[0], [int(d) for d in ins["shape"]]
    rest, known = math.prod(src[1:]), math.prod(d for d in new if d != -1)
    return (src[0], *[rest // known if d == -1 else d for d in new])


def _transpose(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return tuple(s[0][p] for p in ins["perm"])


def _concat(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    ax = ins["axis"] % len(s[0])
    return (*s[0][:ax], sum(x[ax] for x in s), *s[0][ax + 1:])


def _slice(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    ax = ins["axis"] % len(s[0])
    n = len(range(s[0][ax])[ins["start"]:ins["stop"]])
    return (*s[0][:ax], n, *s[0][ax + 1:])


def _im2col(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    """[B, C, *S] -> [B, P, C * prod(kernel)]: every output position's receptive field as a
    row, ordered (channel, kernel offsets) like a [D, C, *kernel] weight flattened."""
    b, c, *size = s[0]
    kernel = [int(k) for k in ins["kernel"]]
    out = [window_out(n, k, st, 2 * p, d) for n, k, st, p, d in
           zip(size, kernel, ins["stride"], ins["pads"], ins["dilation"])]
    if len(size) != len(kernel) or min(out, default=0) < 1:
        raise ProgramError(f"im2col: a {len(kernel)}-d kernel {kernel} on an input of shape "
                           f"{list(s[0])}")
    return (b, math.prod(out), c * math.prod(kernel))


def _zeros(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    return (s[0][0], *[int(d) for d in ins["shape"]])




def _pool(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    n = len(ins["kernel"])
    if len(s[0]) != n + 2:
        raise ValueError(f"pools {n} axes of a rank-{len(s[0])} tensor, needs [B, C, *spatial]")
    lead, sp = s[0][:-n], s[0][-n:]
    pads = ins["pads"]
    out = tuple(window_out(sp[i], ins["kernel"][i], ins["stride"][i], pads[i] + pads[n + i],
                         ins["dilation"][i]) for i in range(n))
    if min(out) < 1:
        raise ValueError(f"window {ins['kernel']} (dilation {ins['dilation']}) larger than "
                         f"the padded input {list(sp)}")
    return (*lead, *out)


def _reduce(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    r = len(s[0])
    if any(not -r <= a < r or a % r == 0 for a in ins["axes"]):
        raise ValueError(f"axes {ins['axes']} out of range or the batch axis (rank {r})")
    axes = {a % r for a in ins["axes"]}
    if ins["keepdims"]:
        return tuple(1 if k in axes else d for k, d in enumerate(s[0]))
    return tuple(d for k, d in enumerate(s[0]) if k not in axes)


def _pad(s: tuple[Shape, ...], ins: dict, ctx: ShapeContext) -> Shape:
    n, p = len(s[0]), ins["pads"]
    if len(p) != 2 * n:
        raise ValueError(f"{len(p)} pads for a rank-{n} tensor")
    return tuple(d + p[k] + p[n + k] for k, d in enumerate(s[0]))


# ---------------------------------------------------------------- the table
_NUM = (int, float)
POOL_MODES = ("max", "avg")
"""`pool` modes: max, or average (padding counted or not, `count_include_pad`)."""
REDUCE_MODES = ("mean", "sum", "max")
"""`reduce` modes."""
POOL_DIMS = (1, 2)
"""`pool` works over the last 1 or 2 axes of [B, C, *spatial]."""


def _digital(n_in: int, rule: ShapeRule = _same, **kw: Any) -> OpSpec:
    return OpSpec(n_in, "digital", rule, lockstep=True, **kw)


OPS: dict[str, OpSpec] = {
    "input": OpSpec(0, "io", _input, attrs={"name": str}),
    "output": OpSpec(1, "io", _none, has_out=False, attrs={"name": str}, in_place=True),
    "const": OpSpec(0, "io", _const, attrs={"name": str}, in_place=True),
    "mvm": OpSpec(1, "mvm", _mvm, attrs={"layer": int}, lockstep=True),
    "add": _digital(2, _broadcast),
    "sub": _digital(2, _broadcast),
    "mul": _digital(2, _broadcast),
    "sigmoid": _digital(1),
    "tanh": _digital(1),
    "gelu": _digital(1),
    "relu": _digital(1),
    "layernorm": OpSpec(3, "digital_in", _same, attrs={"eps": _NUM}),
    "softmax": OpSpec(1, "digital", _same, attrs={"axis": int}),
    "matmul": OpSpec(2, "matmul", _matmul),
    "scale": _digital(1, attrs={"value": _NUM}),
    "reshape": OpSpec(1, "move", _reshape, attrs={"shape": list}, in_place=True),
    "transpose": OpSpec(1, "move", _transpose, attrs={"perm": list}),
    "concat": OpSpec(None, "move", _concat, attrs={"axis": int}, lockstep=True),
    "slice": OpSpec(1, "move", _slice, attrs={"axis": int, "start": int, "stop": int},
                    lockstep=True),
    "zeros": OpSpec(1, "move", _zeros, attrs={"shape": list}, reads_data=False),
    "im2col": OpSpec(1, "move", _im2col,
                     attrs={"kernel": list, "stride": list, "pads": list, "dilation": list}),
    # digital ops users' models need around their crossbar layers (docs/byom.md)
    "pool": OpSpec(1, "digital_window", _pool,
                   attrs={"mode": str, "kernel": list, "stride": list, "pads": list,
                          "dilation": list, "count_include_pad": bool}),
    "reduce": OpSpec(1, "digital_in", _reduce,
                     attrs={"mode": str, "axes": list, "keepdims": bool}),
    "log_softmax": OpSpec(1, "digital", _same, attrs={"axis": int}),
    "clip": _digital(1, attrs={"min": _NUM, "max": _NUM}),
    "leaky_relu": _digital(1, attrs={"alpha": _NUM}),
    "pad": OpSpec(1, "move", _pad, attrs={"pads": list, "value": _NUM}),
    "loop": OpSpec(0, "loop", None, has_out=False,
                   attrs={"count": dict, "carry": list, "gather": list, "body": list,
                          "scatter": list}),
}


def ops_where(pred: Callable[[OpSpec], bool]) -> tuple[str, ...]:
    """Opcodes whose spec satisfies `pred`, in table order."""
    return tuple(op for op, spec in OPS.items() if pred(spec))


DIGITAL_OPS = ops_where(lambda s: s.event in DIGITAL_EVENTS)
"""Opcodes counted as digital vector work (digital_ops kind = the opcode)."""
DIGITAL_KINDS = (*DIGITAL_OPS, MATMUL_KIND, *MVM_SIDE_KINDS)
"""Every kind the counters put in digital_ops; the cost model must price each."""
HANDLED_OPS = ops_where(lambda s: s.event != "loop")
"""Opcodes an interpreter runs with a per-instruction handler (loop is structural)."""
LOCKSTEP_OPS = ops_where(lambda s: s.lockstep)
AXIS_OPS = ops_where(lambda s: s.lockstep and "axis" in s.attrs)
"""Groupable opcodes whose axis attribute shifts past the stacking axis."""
IN_PLACE_OPS = ops_where(lambda s: s.in_place)


def disagreements(table: str, keys: Iterable[str], expected: Iterable[str]) -> list[str]:
    """What a per-opcode table has that the opcode table does not expect, and the reverse,
    as one line each (empty when they agree). `expected` is the key set the opcode table
    implies for `table`."""
    keys, expected = set(keys), set(expected)
    lines = [f"{table}: {k!r} is not expected by runtime/isa.py" for k in sorted(keys - expected)]
    lines += [f"{table}: missing {k!r} (runtime/isa.py expects it)"
              for k in sorted(expected - keys)]
    return lines
