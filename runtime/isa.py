"""The instruction set of docs/tile-program.md as data: arity and typed attributes of every
opcode. The validator, the emulator's handler table and the counters all read this one
table, so an opcode cannot be known to one and unknown to another."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMAT = "farc-tile-program"
VERSION = 1


@dataclass(frozen=True)
class OpSpec:
    """Shape of one opcode's instruction dict."""

    n_in: int | None
    """Number of input registers; None = one or more."""
    has_out: bool = True
    attrs: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    """Required attributes and their JSON types."""


_NUM = (int, float)
OPS: dict[str, OpSpec] = {
    "input": OpSpec(0, attrs={"name": str}),
    "output": OpSpec(1, has_out=False, attrs={"name": str}),
    "const": OpSpec(0, attrs={"name": str}),
    "mvm": OpSpec(1, attrs={"layer": int}),
    "add": OpSpec(2),
    "sub": OpSpec(2),
    "mul": OpSpec(2),
    "sigmoid": OpSpec(1),
    "tanh": OpSpec(1),
    "gelu": OpSpec(1),
    "layernorm": OpSpec(3, attrs={"eps": _NUM}),
    "softmax": OpSpec(1, attrs={"axis": int}),
    "matmul": OpSpec(2),
    "scale": OpSpec(1, attrs={"value": _NUM}),
    "reshape": OpSpec(1, attrs={"shape": list}),
    "transpose": OpSpec(1, attrs={"perm": list}),
    "concat": OpSpec(None, attrs={"axis": int}),
    "slice": OpSpec(1, attrs={"axis": int, "start": int, "stop": int}),
    "zeros": OpSpec(1, attrs={"shape": list}),
    "loop": OpSpec(0, has_out=False,
                   attrs={"count": dict, "carry": list, "gather": list, "body": list,
                          "scatter": list}),
}

ELEMENTWISE = ("add", "sub", "mul", "sigmoid", "tanh", "gelu", "scale")
DATA_MOVES = ("reshape", "transpose", "concat", "slice", "zeros", "input", "output", "const")
