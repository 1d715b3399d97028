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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .crossbar import PreparedLayer, dac_pulses
from .isa import AXIS_OPS, LOCKSTEP_OPS
from .numerics import qmax
from .split import SplitPlan, SplitStack, stack_key, stack_plans, stacked_errors

GROUPABLE = LOCKSTEP_OPS
"""Opcodes that may be grouped: those the opcode table marks `lockstep`."""


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
    split: SplitStack | None = None
    """Lossy members (runtime/split.py): the ADC-error term added to the exact matmul."""


@dataclass
class Hoist:
    """An LSTM input projection moved out of its loop. For a member mvm(concat([x_t, h])),
    x_t gathered from `src`, the integer result splits exactly into x_int_t @ q_x +
    h_int @ q_h: the x part is one large matmul over all steps before the loop, only the
    h part runs per step. Same integers, same quantization, same events."""

    gathers: list[dict[str, Any]]
    """Per member, the gather that produces x_t."""
    others: list[str]
    """Per member, the register concatenated with x_t (h)."""
    concat_axes: list[int]
    x_first: bool
    """x_t comes first in the concat (it holds the first rows of the layer)."""


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
    hoist: Hoist | None = None
    src_runs: list[list[tuple[Group, int, int]] | None] = field(default_factory=list)
    """Per input position, when every member's input is produced earlier in the same step
    by a group: runs (producer group, start, stop) of its stacked output to slice."""
    keep_origin: list[bool] = field(default_factory=list)
    """Per member, whether its output is read through the generic stacking path (carry,
    scatter, or consumers without src_runs) and must be registered for it."""

    def __post_init__(self) -> None:
        n_in = len(self.members[0][1].get("in", []))
        self.inputs = [[ins["in"][k] for _, ins in self.members] for k in range(n_in)]
        self.outs = [ins.get("out") for _, ins in self.members]


def plan_body(body: list[dict[str, Any]], layers: list[PreparedLayer], fast_mvm: bool,
              gathers: list[dict[str, Any]] = (), live_out: set[str] | None = None,
              split: Callable[[int], SplitPlan | None] | None = None,
              ) -> list[list[Group]] | None:
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
                buckets.setdefault(_signature(i, ins, layers, fast_mvm, split),
                                   []).append((i, ins))
        groups = []
        for sig, bucket in buckets.items():  # the key is every member's signature
            members = sorted(bucket, key=lambda m: _producer(m[1], pos))
            groups.append(_group(members, layers, stack_mvm=sig[0] != "single", split=split))
            for k, (_, ins) in enumerate(members):
                if ins.get("out"):
                    pos[ins["out"]] = (len(plan), len(groups), k)
        plan.append(groups)
    for groups in plan:
        for g in groups:
            if g.mvm is not None:
                g.hoist = _find_hoist(g, body, levels, gathers)
    _link_producers(plan, body, live_out)
    return plan


def _link_producers(plan: list[list[Group]], body: list[dict[str, Any]],
                    live_out: set[str] | None) -> None:
    """Fill src_runs (inputs produced earlier in the step by a group) and keep_origin."""
    where = {i: (g, k) for groups in plan for g in groups for k, (i, _) in enumerate(g.members)}
    last: dict[str, int] = {}
    producer: dict[tuple[int, str], int] = {}
    for i, ins in enumerate(body):
        for r in ins.get("in", []):
            if r in last:
                producer[(i, r)] = last[r]
        if ins.get("out"):
            last[ins["out"]] = i
    generic = set(live_out) if live_out is not None else {r for ins in body
                                                          for r in ins.get("in", [])}
    for groups in plan:
        for g in groups:
            g.src_runs = [_runs([where.get(producer.get((i, ins["in"][p]), -1))
                                 for i, ins in g.members]) for p in range(len(g.inputs))]
            for p, runs in enumerate(g.src_runs):
                if runs is None:
                    generic.update(g.inputs[p])
            if g.hoist is not None:
                generic.update(g.hoist.others)
    for groups in plan:
        for g in groups:
            g.keep_origin = [name in generic for name in g.outs]


def _runs(sources: list[tuple[Group, int] | None]) -> list[tuple[Group, int, int]] | None:
    if not sources or any(s is None for s in sources):
        return None
    runs: list[list] = []
    for grp, k in sources:
        if runs and runs[-1][0] is grp and runs[-1][2] == k:
            runs[-1][2] += 1
        else:
            runs.append([grp, k, k + 1])
    return [tuple(r) for r in runs]


def _find_hoist(g: Group, body: list[dict[str, Any]], levels: list[int],
                gathers: list[dict[str, Any]]) -> Hoist | None:
    """A Hoist when every member reads concat([gathered x_t, h]) (or [h, x_t], the same
    order for all) and nothing rewrites x_t or h between the concat and the mvm."""
    gdst = {gt["dst"]: gt for gt in gathers}
    writers: dict[str, list[int]] = {}
    for i, ins in enumerate(body):
        if ins.get("out"):
            writers.setdefault(ins["out"], []).append(i)
    found = []
    for i, ins in g.members:
        cat = [j for j in writers.get(ins["in"][0], []) if j < i]
        if len(writers.get(ins["in"][0], [])) != 1 or not cat:
            return None
        c = body[cat[0]]
        if c["op"] != "concat" or len(c["in"]) != 2:
            return None
        xs = [k for k, r in enumerate(c["in"]) if r in gdst]
        if len(xs) != 1:
            return None
        x_reg, other = c["in"][xs[0]], c["in"][1 - xs[0]]
        if x_reg in writers or any(levels[w] <= levels[i] for w in writers.get(other, [])
                                   if w > cat[0]):
            return None
        found.append((gdst[x_reg], other, c["axis"], xs[0] == 0))
    if len({f[3] for f in found}) != 1:
        return None
    return Hoist(gathers=[f[0] for f in found], others=[f[1] for f in found],
                 concat_axes=[f[2] for f in found], x_first=found[0][3])


def _producer(ins: dict[str, Any], pos: dict[str, tuple]) -> tuple:
    ins_regs = ins.get("in", [])
    return pos.get(ins_regs[0], (1 << 30,)) if ins_regs else (1 << 30,)


def _levels(body: list[dict[str, Any]]) -> list[int]:
    """Level of each instruction: one more than every earlier instruction it must follow
    (read after write, write after read, write after write; `output` is a barrier).
    Linear time: the last writer of a register outranks its earlier writers and readers."""
    last_write: dict[str, int] = {}
    max_read: dict[str, int] = {}
    levels: list[int] = []
    barrier = top = -1
    for ins in body:
        reads, out = ins.get("in", []), ins.get("out")
        lv = max([barrier, *(last_write.get(r, -1) for r in reads)]) + 1
        if out:
            lv = max(lv, last_write.get(out, -1) + 1, max_read.get(out, -1) + 1)
        if ins["op"] == "output":
            lv = barrier = max(lv, top + 1)
        levels.append(lv)
        top = max(top, lv)
        for r in reads:
            max_read[r] = max(max_read.get(r, -1), lv)
        if out:
            last_write[out] = lv
            max_read[out] = -1
    return levels


def _levels_quadratic(body: list[dict[str, Any]]) -> list[int]:
    """The definition _levels implements (kept for its test)."""
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
               fast_mvm: bool, split: Callable[[int], SplitPlan | None] | None = None) -> Any:
    op = ins["op"]
    if op not in GROUPABLE:
        return ("single", i)
    attrs = tuple(sorted((k, repr(v)) for k, v in ins.items()
                         if k not in ("in", "out", "layer", "op")))
    key = (op, len(ins.get("in", [])), attrs)
    if op != "mvm":
        return key
    pl = layers[ins["layer"]]
    if not fast_mvm:
        return ("single", i)
    lossy = None
    if not pl.lossless:  # lossy layers stack on the split path, if alike
        lossy = stack_key(pl, split(ins["layer"])) if split is not None else None
        if lossy is None:
            return ("single", i)
    return (*key, pl.K, pl.N, pl.params.quant, pl.params.dac, pl.col_tiles, str(pl.q.dtype),
            pl.bias is None, lossy)


def _group(members: list[tuple[int, dict[str, Any]]], layers: list[PreparedLayer],
           stack_mvm: bool, split: Callable[[int], SplitPlan | None] | None = None) -> Group:
    first = members[0][1]
    g = Group(op=first["op"], members=members)
    if stack_mvm and g.op == "mvm":
        pls = [layers[ins["layer"]] for _, ins in members]
        g.mvm = MvmStack(
            q=np.stack([pl.q for pl in pls]),
            in_scale=np.array([np.float32(pl.in_scale) for pl in pls],
                              dtype=np.float32)[:, None, None],
            scale=np.stack([pl.scale for pl in pls])[:, None, :],
            bias=None if pls[0].bias is None else np.stack([pl.bias for pl in pls])[:, None, :],
            layers=pls)
        if not pls[0].lossless:
            g.mvm.split = stack_plans(pls, [split(ins["layer"]) for _, ins in members])
    if g.op in AXIS_OPS:
        axis = first["axis"]
        g.axis_ins = dict(first, axis=axis + 1 if axis >= 0 else axis)
    return g


def mvm_stacked(st: MvmStack, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Batched fast-path MVM of G layers on x [G, ..., K]: (y [G, ..., N], DAC pulses).
    Element for element the same float32 operations as numerics.quantize_input (float32),
    mvm_fast and dequantize."""
    pl = st.layers[0]
    xq = _quantize(st, x)
    y = _rescale(st, xq.astype(st.q.dtype, copy=False) @ st.q, xq)
    return y.reshape(*x.shape[:-1], pl.N), dac_pulses(pl, xq)


def _quantize(st: MvmStack, x: np.ndarray) -> np.ndarray:
    """x [G, ..., K] -> x_int [G, V, K] in float32, as numerics.quantize_input (float32)."""
    xq = np.rint(x.reshape(x.shape[0], -1, x.shape[-1]) / st.in_scale)
    qx = np.float32(qmax(st.layers[0].params.quant.input_bits))
    return np.clip(xq, -qx, qx, out=xq)


def _rescale(st: MvmStack, y_int: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """y_int [G, V, N] (plus the ADC-error term of the whole input xq on the split path)
    -> y float32, as crossbar.dequantize."""
    if st.split is not None:
        y_int = y_int.astype(np.float64) + stacked_errors(st.split, xq)
    y = y_int.astype(np.float32, copy=False) * st.scale
    if st.bias is not None:
        y += st.bias
    return y


@dataclass
class HoistedInputs:
    """The x part of a hoisted group for one loop run: y_x[t] is [G, ..., N] for step t."""

    y_x: np.ndarray
    q_h: np.ndarray
    """[G, K - d, N] weights of the per-step part."""


def hoist_inputs(g: Group, regs: dict[str, np.ndarray], T: int
                 ) -> tuple[HoistedInputs | None, int]:
    """Quantize every gathered x of the loop and multiply it by its rows of q at once.
    Returns (None, 0) when run-time shapes do not fit the pattern; else the hoisted part and
    the DAC pulses of all the x digits (their share of the loop's pulses)."""
    st, h = g.mvm, g.hoist
    y_x, pulses, d = None, 0, None
    for m, (gt, axis) in enumerate(zip(h.gathers, h.concat_axes)):
        src = regs[gt["src"]]
        ga = gt["axis"] % src.ndim
        if ga == src.ndim - 1 or axis % (src.ndim - 1) != src.ndim - 2 or \
                (d is not None and src.shape[-1] != d) or src.shape[-1] > st.layers[m].K:
            return None, 0  # (x wider than the layer: the plain path reports the mismatch)
        d = src.shape[-1]
        pl = st.layers[m]
        rows = slice(0, d) if h.x_first else slice(pl.K - d, pl.K)
        qx = np.float32(qmax(pl.params.quant.input_bits))
        xq = np.clip(np.rint(src / st.in_scale[m]), -qx, qx)
        pulses += dac_pulses(pl, xq)
        xs = np.moveaxis(xq, ga, 0)  # [T, ..., d]: step t reads index t (T-1-t reversed)
        xs = (xs[::-1] if gt.get("reverse") else xs).astype(st.q.dtype, copy=False)
        if y_x is None:  # written in place, member by member: no stacked copy
            y_x = np.empty((T, len(h.gathers), *xs.shape[1:-1], st.q.shape[2]), st.q.dtype)
        np.matmul(xs, st.q[m, rows], out=y_x[:, m])  # exact: integers, whatever the order
    other = slice(d, None) if h.x_first else slice(0, st.q.shape[1] - d)
    return HoistedInputs(y_x=y_x, q_h=np.ascontiguousarray(st.q[:, other])), pulses


def mvm_hoisted(st: MvmStack, hx: HoistedInputs, t: int, h: np.ndarray,
                full: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Step t of a hoisted group: y_int = y_x[t] + h_int @ q_h (exact), then the rescale.
    Element for element the same float32 operations as mvm_stacked. Lossy members add
    the ADC-error term of the whole input `full` (the concat [x_t, h], stacked)."""
    pl = st.layers[0]
    hq = _quantize(st, h)
    y_int = hx.y_x[t].reshape(h.shape[0], -1, pl.N) + hq.astype(st.q.dtype, copy=False) @ hx.q_h
    y = _rescale(st, y_int, None if st.split is None else _quantize(st, full))
    return y.reshape(*h.shape[:-1], pl.N), dac_pulses(pl, hq)
