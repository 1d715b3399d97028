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
starts from the last token."""

from __future__ import annotations

from dataclasses import dataclass
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


def critical_path(instructions: list[dict], steps: list[Any], costs: dict[tuple, Any]
                  ) -> tuple[float, list[Span]]:
    """(latency of one inference in ns, spans of the top-level instructions)."""
    info = {s.path: s for s in steps}
    spans: list[Span] = []
    end = _schedule(instructions, (), {}, info, costs, spans)
    return end, spans


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
              first: dict[str, float] | None = None) -> float:
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
            if spans is not None:
                spans.append(Span(str(costs[p].group) if ins["op"] == "mvm" else ins["op"],
                                  costs[p].kind, begin, end))
            last = max(last, end)
            continue
        if ins["op"] == "loop":
            step = info[p]
            body = _schedule(ins["body"], p, {}, info, costs, None)
            per_step_io = costs[p].latency_ns / max(step.count, 1)
            end = start + step.count * (body + per_step_io)
            for r in writes(ins):
                ready[r] = end
            label = f"loop x{step.count}"
        else:
            end = start + costs[p].latency_ns
            if "out" in ins:
                ready[ins["out"]] = end
            label = str(costs[p].group) if ins["op"] == "mvm" else ins["op"]
        if spans is not None:
            spans.append(Span(label, costs[p].kind if ins["op"] != "loop" else "loop",
                              start, end))
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
