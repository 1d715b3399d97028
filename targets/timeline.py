"""Critical path of a tile program's dataflow.

Registers are SSA-like names: an instruction starts when the producers of its inputs have
finished, and independent instructions overlap (weight-stationary: every layer has its own
crossbars; digital units are assumed on every tile). A `loop` is a recurrence: it starts
when every register it reads from outside is ready and lasts T x (its body's critical path +
its per-step gathers/scatters), since step t+1 needs step t's carries. Independent heads and
directions inside one body overlap, so the body's critical path is that of its slowest
chain.

Token streams: an op that works row by row (an `mvm` over token vectors, an elementwise or
row-wise digital op) emits its rows at an even pace, so a row-wise consumer whose inputs
have the same leading (token) shape starts on the first row instead of waiting for the last:
each register has a `first` time (its first row) beside its `ready` time (all rows), and
such an op ends at max(inputs ready + one row's time, inputs' first row + its whole time).
Anything else (a loop, a reshape, a transpose, a matmul that needs all keys) waits for its
inputs' last rows. A bidirectional LSTM loop therefore is a barrier: its backward direction
starts from the last token.

The same walk also gives the schedule in full (`detail`): every non-loop instruction as a
span, a loop's body laid out step after step (each step its gathers/scatters, then its
body's own schedule), which `farc report --trace` writes out. The latency is the end of the
last of those spans, so a trace and the report cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Span:
    """One top-level instruction on the timeline."""

    label: str
    """Layer name for `mvm`, `loop xT` for loops, else the op."""
    kind: str
    """Op kind (the cost model's per-kind key)."""
    start_ns: float
    end_ns: float
    path: tuple = ()
    """Instruction path (farc.runtime.walk): (i,) at top level, (loop, j) in a loop body."""
    step: int = -1
    """Loop step of a span inside a loop body (-1: not in a loop)."""
    unit: str = ""
    """Resource the span occupies (cost.py fills it in the detailed schedule)."""
    transfer_ns: float = 0.0
    """Of the span, the network transfer of an mvm's input at its start (cost.py)."""


def critical_path(instructions: list[dict], steps: list[Any], costs: dict[tuple, Any],
                  detail: list[Span] | None = None) -> tuple[float, list[Span]]:
    """(latency of one inference in ns, spans of the top-level instructions). With a list
    as `detail`, it also receives the full schedule: every executed non-loop instruction,
    loop steps unrolled, and each step's gathers/scatters (kind 'move', label 'loop io')."""
    info = {s.path: s for s in steps}
    spans: list[Span] = []
    end = _schedule(instructions, (), {}, info, costs, spans, detail=detail)
    return end, spans


def _unroll(detail: list[Span], body: list[Span], path: tuple, start: float, count: int,
            body_ns: float, io_ns: float) -> None:
    """A loop's steps into `detail`: step t starts at start + t (io + body), gathers and
    scatters first, then the body's spans (computed once, relative to 0)."""
    for t in range(count):
        s = start + t * (body_ns + io_ns)
        detail.append(Span("loop io", "move", s, s + io_ns, path, t))
        detail.extend(replace(b, start_ns=s + io_ns + b.start_ns, end_ns=s + io_ns + b.end_ns,
                              step=t) for b in body)


def _stream_rows(ins: dict, step: Any, cost: Any) -> int:
    """Rows `ins` streams (0: none): a row-wise op whose same-rank inputs share its leading
    shape."""
    rows = int(getattr(cost, "stream_rows", 0) or 0)
    out = getattr(step, "out_shape", None)
    if rows <= 1 or out is None or len(out) < 2:
        return 0
    lead = tuple(out[:-1])
    for shp in step.in_shapes:
        if len(shp) == len(out) and tuple(shp[:-1]) != lead:
            return 0
    return rows


def _schedule(instrs: list[dict], path: tuple, ready: dict[str, float], info: dict,
              costs: dict, spans: list[Span] | None,
              first: dict[str, float] | None = None, detail: list[Span] | None = None) -> float:
    first = {} if first is None else first
    last = 0.0
    for i, ins in enumerate(instrs):
        p = (*path, i)
        start = max((ready.get(r, 0.0) for r in reads(ins)), default=0.0)
        rows = 0 if ins["op"] == "loop" else _stream_rows(ins, info[p], costs[p])
        if rows:
            lat = costs[p].latency_ns
            begin = max((first.get(r, ready.get(r, 0.0)) for r in reads(ins)), default=0.0)
            end = max(start + lat / rows, begin + lat)
            if "out" in ins:
                ready[ins["out"]] = end
                first[ins["out"]] = begin + lat / rows
            span = Span(str(costs[p].group) if ins["op"] == "mvm" else ins["op"],
                        costs[p].kind, begin, end, p)
            if spans is not None:
                spans.append(span)
            if detail is not None:
                detail.append(span)
            last = max(last, end)
            continue
        if ins["op"] == "loop":
            step = info[p]
            inner: list[Span] | None = [] if detail is not None else None
            body = _schedule(ins["body"], p, {}, info, costs, None, detail=inner)
            per_step_io = costs[p].latency_ns / max(step.count, 1)
            end = start + step.count * (body + per_step_io)
            if detail is not None and inner is not None:
                _unroll(detail, inner, p, start, step.count, body, per_step_io)
            for r in writes(ins):
                ready[r] = end
            label = f"loop x{step.count}"
        else:
            end = start + costs[p].latency_ns
            if "out" in ins:
                ready[ins["out"]] = end
            label = str(costs[p].group) if ins["op"] == "mvm" else ins["op"]
            if detail is not None:
                detail.append(Span(label, costs[p].kind, start, end, p))
        if spans is not None:
            spans.append(Span(label, costs[p].kind if ins["op"] != "loop" else "loop",
                              start, end, p))
        last = max(last, end)
    return last


def reads(ins: dict) -> set[str]:
    """Registers an instruction (a loop: its whole body) reads."""
    regs = set(ins.get("in", []))
    if ins["op"] == "loop":
        regs |= {ins["count"]["reg"], *ins["carry"], *(g["src"] for g in ins["gather"])}
        for b in ins["body"]:
            regs |= reads(b)
    return regs


def writes(ins: dict) -> set[str]:
    """Registers an instruction (a loop: its body and scatters) writes."""
    if ins["op"] != "loop":
        return {ins["out"]} if "out" in ins else set()
    regs = {s["dst"] for s in ins["scatter"]} | set(ins["carry"])
    for b in ins["body"]:
        regs |= writes(b)
    return regs
