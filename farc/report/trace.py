"""The cost model's schedule as a Chrome trace-event file (`farc report --trace FILE.json`),
which Perfetto (ui.perfetto.dev) and chrome://tracing open.

What it shows is `CostReport.schedule`: the spans `timeline.critical_path` lays out for one
image, the very walk whose last end is the report's latency, so the trace and the report
cannot disagree. Several images are drawn, each entering one steady-state interval
(`Throughput.interval_ns`) after the previous one, which is how the throughput model
(targets/schedule.py) streams them; a resource busy for two images at once in the drawing
is the overlap that model allows (it bounds the interval by each resource's total
occupancy, not by exact slots).

Layout: one process per resource class (crossbars, digital units, buffers, network, images)
and one thread per resource, named as the throughput model names it (a crossbar layer with
the tile of its first crossbar). Spans that overlap on one resource (independent heads and
directions, images in flight) go to numbered lanes of that resource. An mvm whose input
crosses the network starts with a transfer span on the network track. Times are in us
(the format's unit) rounded to 1 ps; zero-length spans (views, constants) are left out."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from farc.targets.cost import CostReport
from farc.targets.timeline import Span

MAX_IMAGES = 4
"""Images drawn at most: enough to show the steady state without a huge file."""
MAX_EVENTS = 500_000
"""Spans per file at most (about 60 MB of JSON, which Perfetto opens in seconds): fewer
images are drawn above it (FAR-T at 197 tokens has 225,000 spans per image: 2 images)."""
PROCESSES = {"images": 0, "crossbars": 1, "digital units": 2, "buffers": 3, "network": 4}


def _process(unit: str) -> str:
    if unit == "network" or unit == "images":
        return unit
    if "crossbars" in unit:
        return "crossbars"
    return "buffers" if unit == "buffers" else "digital units"


def _leaves(report: CostReport) -> list[Span]:
    """The schedule of one image with each mvm's input transfer split onto the network."""
    out: list[Span] = []
    for s in report.schedule:
        if s.end_ns <= s.start_ns:
            continue
        cut = s.start_ns + s.transfer_ns
        if s.transfer_ns > 0:
            out.append(Span(f"to {s.label}", "transfer", s.start_ns, cut, s.path, s.step,
                            "network"))
        out.append(replace(s, start_ns=cut, transfer_ns=0.0))
    return out


def images_to_draw(report: CostReport, leaves: int, images: int | None = None) -> int:
    """The images in flight plus one (at most MAX_IMAGES and MAX_EVENTS), or `images`."""
    thr = report.throughput
    n = images if images is not None else min(MAX_IMAGES, (thr.in_flight if thr else 1) + 1)
    return max(1, min(n, MAX_EVENTS // max(leaves, 1)))


def trace_events(report: CostReport, name: str, images: int | None = None) -> dict[str, Any]:
    """The Chrome trace-event document (a dict) of `report`'s schedule (a report costed with
    `cost_program(..., schedule=True)`)."""
    if not report.schedule:
        raise ValueError("the report has no schedule: cost it with schedule=True")
    leaves = _leaves(report)
    n = images_to_draw(report, len(leaves), images)
    interval = report.throughput.interval_ns if report.throughput else report.latency_ns
    placed = [(k, s) for k in range(n) for s in leaves]
    placed += [(k, Span(f"image {k}", "image", 0.0, report.latency_ns, (), -1, "images"))
               for k in range(n)]
    placed.sort(key=lambda ks: (ks[1].start_ns + ks[0] * interval, ks[1].end_ns))
    lanes: dict[str, list[float]] = {}
    tids: dict[tuple[str, int], int] = {}
    events: list[dict[str, Any]] = []
    for k, s in placed:
        t0, t1 = s.start_ns + k * interval, s.end_ns + k * interval
        ends = lanes.setdefault(s.unit, [])
        lane = next((i for i, e in enumerate(ends) if e <= t0 + 1e-9), len(ends))
        if lane == len(ends):
            ends.append(t1)
        ends[lane] = t1
        tid = tids.setdefault((s.unit, lane), len(tids) + 1)
        args: dict[str, Any] = {"image": k}
        if s.path:
            args["instruction"] = list(s.path)
        if s.step >= 0:
            args["step"] = s.step
        events.append({"name": s.label, "cat": s.kind, "ph": "X", "ts": round(t0 / 1e3, 6),
                       "dur": round((t1 - t0) / 1e3, 6), "pid": PROCESSES[_process(s.unit)],
                       "tid": tid, "args": args})
    return {"traceEvents": _metadata(report, tids) + events, "displayTimeUnit": "ns",
            "otherData": _summary(report, name, n, interval)}


def _metadata(report: CostReport, tids: dict[tuple[str, int], int]) -> list[dict[str, Any]]:
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": proc}}
            for proc, pid in PROCESSES.items()]
    meta += [{"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
              "args": {"sort_index": pid}} for pid in PROCESSES.values()]
    for (unit, lane), tid in sorted(tids.items(), key=lambda kv: kv[1]):
        label = unit
        layer = unit.removeprefix("crossbars ")
        if layer in report.layer_tiles:
            label = f"tile {report.layer_tiles[layer]}: {unit}"
        if lane:
            label += f" #{lane + 1}"
        pid = PROCESSES[_process(unit)]
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                     "args": {"name": label}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                     "args": {"sort_index": tid}})
    return meta


def _summary(report: CostReport, name: str, images: int, interval: float) -> dict[str, Any]:
    thr = report.throughput
    return {"program": name, "target": report.target, "attention": report.attention,
            "latency_ns": report.latency_ns, "interval_ns": interval,
            "images_per_s": thr.images_per_s if thr else None,
            "bottleneck": thr.bottleneck if thr else None,
            "in_flight": thr.in_flight if thr else 1, "images_drawn": images,
            "source": "farc report --trace: the cost model's schedule (targets/timeline.py)"}


def to_trace_json(report: CostReport, name: str, images: int | None = None) -> str:
    """The trace as JSON text (compact: a trace has many events)."""
    return json.dumps(trace_events(report, name, images), separators=(",", ":"))
