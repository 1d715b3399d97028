"""Critical path of a tile program's dataflow.

Registers are SSA-like names: an instruction starts when the producers of its inputs have
finished, and independent instructions overlap (weight-stationary: every layer has its own
crossbars; digital units are assumed on every tile). A `loop` is a recurrence: it starts
when every register it reads from outside is ready and lasts T x (its body's critical path +
its per-step gathers/scatters), since step t+1 needs step t's carries. Independent heads and
directions inside one body overlap, so the body's critical path is that of its slowest
chain."""

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


def _schedule(instrs: list[dict], path: tuple, ready: dict[str, float], info: dict,
              costs: dict, spans: list[Span] | None) -> float:
    last = 0.0
    for i, ins in enumerate(instrs):
        p = (*path, i)
        start = max((ready.get(r, 0.0) for r in reads(ins)), default=0.0)
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
