"""Lockstep execution of a loop body: the same instruction of every LSTM in one numpy call.

A FAR block's loop body holds one chain of ~14 instructions per head and direction. Run one
by one, a step costs hundreds of tiny numpy calls and Python dominates. `plan_body` orders
the body into dependency levels (read-after-write, write-after-read and write-after-write
all respected) and, within a level, groups instructions that do the same thing to
same-shaped registers: elementwise ops, slices, concats and fast-path MVMs of compatible
layers (same K, N and quantization; different weights are a batched matmul). The emulator
stacks a group's inputs along a new leading axis (reusing the stack when the inputs are the
views a previous group produced, in order), runs one call, and hands out views.

Grouping changes no arithmetic: every element goes through the same float32 operations, and
the fast-path matmul is exact. Anything else (data moves with shapes, bit-level or noisy
MVMs, nested loops) runs one instruction at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .crossbar import PreparedLayer

GROUPABLE = ("add", "sub", "mul", "sigmoid", "tanh", "gelu", "scale", "slice", "concat", "mvm")
AXIS_OPS = ("slice", "concat")


@dataclass
class MvmStack:
    """Per-group stacked layer constants for a batched fast-path MVM."""

    q: np.ndarray
    """[G, K, N] rebuilt weights."""
    in_scale: np.ndarray
    """[G, 1, 1] float32 input scales."""
    scale: np.ndarray
    """[G, 1, N] float32 rescales."""
    bias: np.ndarray | None
    """[G, 1, N] float32 biases."""
    layers: list[PreparedLayer]


@dataclass
class Group:
    """Instructions (with their body indices) run as one call."""

    op: str
    members: list[tuple[int, dict[str, Any]]]
    mvm: MvmStack | None = None
    axis_ins: dict[str, Any] = field(default_factory=dict)
    """The first member with its axis shifted past the stacking axis (slice, concat)."""
    stackable: dict[tuple, bool] = field(default_factory=dict)
    """Memo of the emulator's shape check, keyed by the first member's input shapes."""
    inputs: list[list[str]] = field(default_factory=list)
    """Input registers by position: inputs[k][m] is member m's k-th input."""
    outs: list[str] = field(default_factory=list)
    """Output register of each member."""

    def __post_init__(self) -> None:
        n_in = len(self.members[0][1].get("in", []))
        self.inputs = [[ins["in"][k] for _, ins in self.members] for k in range(n_in)]
        self.outs = [ins.get("out") for _, ins in self.members]


def plan_body(body: list[dict[str, Any]], layers: list[PreparedLayer], fast_mvm: bool,
              gathers: list[dict[str, Any]] = ()) -> list[list[Group]] | None:
    """Dependency levels of grouped instructions, or None when the body holds a loop.

    Members of a group are ordered like the producers of their first input (gathers first,
    forward before reverse, then earlier groups), so a group's stacked inputs are mostly
    slices of one earlier stacked output and need no copy."""
    if any(ins["op"] == "loop" for ins in body):
        return None
    levels = _levels(body)
    pos: dict[str, tuple] = {g["dst"]: (-1, int(bool(g.get("reverse"))), j)
                             for j, g in enumerate(gathers)}
    plan: list[list[Group]] = []
    for lv in range(max(levels, default=-1) + 1):
        buckets: dict[Any, list[tuple[int, dict]]] = {}
        for i, ins in enumerate(body):
            if levels[i] == lv:
                buckets.setdefault(_signature(i, ins, layers, fast_mvm), []).append((i, ins))
        groups = []
        for bucket in buckets.values():
            members = sorted(bucket, key=lambda m: _producer(m[1], pos))
            groups.append(_group(members, layers))
            for k, (_, ins) in enumerate(members):
                if ins.get("out"):
                    pos[ins["out"]] = (len(plan), len(groups), k)
        plan.append(groups)
    return plan


def _producer(ins: dict[str, Any], pos: dict[str, tuple]) -> tuple:
    ins_regs = ins.get("in", [])
    return pos.get(ins_regs[0], (1 << 30,)) if ins_regs else (1 << 30,)


def _levels(body: list[dict[str, Any]]) -> list[int]:
    """Level of each instruction: one more than every earlier instruction it must follow."""
    levels: list[int] = []
    for i, ins in enumerate(body):
        reads, writes = set(ins.get("in", [])), {ins.get("out")} - {None}
        lv = 0
        for j in range(i):
            prev = body[j]
            p_reads, p_writes = set(prev.get("in", [])), {prev.get("out")} - {None}
            if p_writes & reads or p_reads & writes or p_writes & writes or \
                    prev["op"] == "output" or ins["op"] == "output":
                lv = max(lv, levels[j] + 1)
        levels.append(lv)
    return levels


def _signature(i: int, ins: dict[str, Any], layers: list[PreparedLayer],
               fast_mvm: bool) -> Any:
    op = ins["op"]
    if op not in GROUPABLE:
        return ("single", i)
    attrs = tuple(sorted((k, repr(v)) for k, v in ins.items()
                         if k not in ("in", "out", "layer", "op")))
    key = (op, len(ins.get("in", [])), attrs)
    if op != "mvm":
        return key
    pl = layers[ins["layer"]]
    if not (fast_mvm and pl.lossless):
        return ("single", i)
    return (*key, pl.K, pl.N, pl.input_bits, pl.dac_bits, pl.in_zero, pl.col_tiles,
            str(pl.q.dtype), pl.bias is None)


def _group(members: list[tuple[int, dict[str, Any]]], layers: list[PreparedLayer]) -> Group:
    first = members[0][1]
    g = Group(op=first["op"], members=members)
    if len(members) > 1 and g.op == "mvm":
        pls = [layers[ins["layer"]] for _, ins in members]
        g.mvm = MvmStack(
            q=np.stack([pl.q for pl in pls]),
            in_scale=np.array([np.float32(pl.in_scale) for pl in pls],
                              dtype=np.float32)[:, None, None],
            scale=np.stack([pl.scale for pl in pls])[:, None, :],
            bias=None if pls[0].bias is None else np.stack([pl.bias for pl in pls])[:, None, :],
            layers=pls)
    if g.op in AXIS_OPS:
        axis = first["axis"]
        g.axis_ins = dict(first, axis=axis + 1 if axis >= 0 else axis)
    return g


def mvm_stacked(st: MvmStack, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Batched fast-path MVM of G layers on x [G, ..., K]: (y [G, ..., N], DAC pulses).
    Element for element the same float32 operations as crossbar.quantize_input_f32,
    mvm_fast and dequantize."""
    pl = st.layers[0]
    G, K = x.shape[0], x.shape[-1]
    flat = x.reshape(G, -1, K)
    qx = np.float32(2 ** (pl.input_bits - 1) - 1)
    xq = np.rint(flat / st.in_scale)
    np.clip(xq, -qx, qx, out=xq)
    y_int = xq.astype(st.q.dtype, copy=False) @ st.q
    y = y_int.astype(np.float32, copy=False) * st.scale
    if st.bias is not None:
        y += st.bias
    pulses = int(pl.pulse_table[(xq + pl.in_zero).astype(np.intp)].sum()) * pl.col_tiles
    return y.reshape(*x.shape[:-1], pl.N), pulses
