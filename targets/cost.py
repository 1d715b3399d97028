"""The cost model: a tile program (its manifest) + a Target -> latency, energy and area.

Per executed instruction of the one static walk (`dataflow.walk`, i.e. farc.runtime.walk),
the emulator's own event rule (farc.runtime.counters.record, via events.py) counts MVMs per
layer, input cycles, ADC conversions, DAC pulses, digital ops by kind and bytes moved, and
the counts are multiplied by the target's per-event costs; latency is the critical
path of the dataflow (`timeline.critical_path`). Attention's activation x activation
`matmul` is costed under a stated assumption, `attention`:
- "digital": a digital matmul unit ([digital] matmul_mac_pj, matmul_macs_per_cycle);
- "rewrite": the right operand is programmed into crossbars each time ([write] row_ns,
  cell_pj, endurance), then the left operand's rows stream through them as MVMs.
See docs/cost-model.md for every assumption."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from farc.runtime.counters import BYTES_PER_ELEMENT
from farc.runtime.isa import DIGITAL_EVENTS, IN_PLACE_OPS, OPS
from farc.runtime.numerics import XbarParams
from farc.targets.dataflow import Step, manifest_of, numel, walk
from farc.targets.derived import adc_area_mm2, adcs_per_crossbar
from farc.targets.events import (
    DIGITAL_KEY,
    accumulate,
    finalize,
    instruction_events,
    loop_events,
    mvm_layer_events,
    new_events,
    price,
)
from farc.targets.interconnect import (
    crossbars_used,
    input_hops,
    layer_tiles,
    network_capacity_bytes_per_ns,
    tiles_used,
    transfer_ns,
)
from farc.targets.mvm import Geometry, activation_bytes, mvm_latency_ns, write_latency_ns
from farc.targets.schedule import (
    ReplicaVerdict,
    Throughput,
    layer_load,
    plan_replicas,
    replica_verdicts,
    steady_state,
)
from farc.targets.target import Target
from farc.targets.timeline import Span, critical_path

from farc.errors import ConfigError

COMPONENTS = ("crossbar", "dac", "adc", "shift_add", "digital", "buffer", "interconnect",
              "write")
ATTENTION_MODES = ("digital", "rewrite")
FREE = IN_PLACE_OPS
"""Opcodes with no data-movement latency (isa: views, stored constants, program output)."""


@dataclass
class OpCost:
    """Cost of one instruction for ONE execution (multiply by `trips`)."""

    kind: str
    """Op kind for the per-kind breakdown (mvm, add, matmul, move, ...)."""
    group: str
    """Row of the per-layer breakdown: the crossbar layer's name, or the digital group."""
    latency_ns: float = 0.0
    energy_pj: dict[str, float] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    rewrite_crossbars: int = 0
    stream_rows: int = 0
    """Rows (token vectors) the op emits one after another at an even pace, so that a
    token-wise consumer can start on the first (timeline.py); 0 = all at the end."""
    transfer_ns: float = 0.0
    """Of `latency_ns`, the network transfer of an mvm's input before the crossbars start."""


@dataclass
class CostReport:
    """Everything `farc report` shows, for one inference (batch 1)."""

    target: str
    attention: str
    latency_ns: float
    """Critical path of one inference."""
    energy_pj: dict[str, float]
    """Energy by component."""
    area_mm2: dict[str, float]
    """Area of the crossbars and periphery the program uses, by component."""
    by_layer: dict[str, dict[str, float]]
    """group -> {energy_pj, busy_ns, <component>...}."""
    by_kind: dict[str, dict[str, float]]
    """op kind -> {energy_pj, busy_ns, count}."""
    events: dict[str, Any]
    """Static event counts (same names as the emulator's counters)."""
    timeline: list[Span]
    crossbars_used: int
    rewrite: dict[str, float] = field(default_factory=dict)
    """attention = rewrite: cell_writes, writes_per_cell, lifetime_inferences, crossbars."""
    throughput: Throughput | None = None
    """Steady state with several images in flight (targets/schedule.py)."""
    replication: list[ReplicaVerdict] = field(default_factory=list)
    """For each replicated layer: do its replicas cut latency, raise throughput, neither."""
    tiles_used: int = 1
    """Tiles the program's crossbars occupy (packed)."""
    replication_reason: str = ""
    """Why the replication rule (schedule.plan_replicas) gives no further replica on this
    chip: what `--replicate` stopped at, or would stop at."""
    schedule: list[Span] = field(default_factory=list)
    """With `cost_program(..., schedule=True)`: the full schedule of one image (every executed
    instruction, loop steps unrolled; timeline.critical_path's `detail`), each span with the
    resource it occupies (`unit`: the throughput model's resource names). Its last end is
    `latency_ns`. `farc report --trace` writes it out (farc/report/trace.py)."""
    layer_tiles: dict[str, int] = field(default_factory=dict)
    """Crossbar layer name -> tile of its first crossbar (interconnect.layer_tiles)."""

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())

    @property
    def area_total_mm2(self) -> float:
        return sum(self.area_mm2.values())


def cost_program(program: Any, target: Target, attention: str = "digital",
                 schedule: bool = False) -> CostReport:
    """Latency, energy and area of one inference of `program` (Program or manifest dict);
    with `schedule`, also the full schedule the latency is read from (`CostReport.schedule`)."""
    if attention not in ATTENTION_MODES:
        raise ConfigError(f"attention = {attention!r} must be one of {', '.join(ATTENTION_MODES)}")
    manifest = manifest_of(program)
    layers = {int(lay["id"]): lay for lay in manifest["layers"]}
    steps = list(walk(manifest))
    hops = input_hops(manifest, target)
    costs = {s.path: op_cost(s, target, layers, attention, hops.get(s.path, 0)) for s in steps}
    detail: list[Span] | None = [] if schedule else None
    latency, spans = critical_path(manifest["instructions"], steps, costs, detail)
    report = _assemble(manifest, layers, target, attention, steps, costs, latency, spans)
    if detail is not None:
        info = {s.path: s for s in steps}
        report.schedule = [replace(d, unit=resource(info[d.path], costs[d.path], layers),
                                   transfer_ns=costs[d.path].transfer_ns if d.kind == "mvm"
                                   else 0.0) for d in detail]
        report.layer_tiles = {str(layers[i]["name"]): tile
                              for i, tile in layer_tiles(manifest, target).items() if i in layers}
    return report


def resource(step: Step, cost: OpCost, layers: dict[int, dict]) -> str:
    """The resource an instruction occupies, as the throughput model names it: a crossbar
    layer's crossbars, an attention matmul's rewrite crossbars, the digital matmul units,
    the buffers (moves, loop gathers/scatters) or the digital vector units."""
    op = step.instr["op"]
    if op == "mvm":
        return f"crossbars {layers[int(step.instr['layer'])]['name']}"
    if op == "matmul":
        return (f"rewrite crossbars of matmul @{step.path[-1]}" if cost.rewrite_crossbars
                else "digital matmul units")
    return "buffers" if cost.kind == "move" else "digital vector units"


def static_events(program: Any, target: Target | None = None) -> dict[str, Any]:
    """Event counts of one inference derived from the program alone (the emulator's counters
    must agree; DAC pulses here are slots, an upper bound of the emulator's non-zero
    digits). `target` only sets bytes per activation (default: the program's target)."""
    manifest = manifest_of(program)
    target = target or Target.from_dict(manifest["target"], source="program target")
    return cost_program(manifest, target).events


# ---------------------------------------------------------------- one instruction
def op_cost(step: Step, target: Target, layers: dict[int, dict], attention: str,
            hops: int = 0) -> OpCost:
    """Events, energy and latency of one execution of `step`; an `mvm`'s input travels
    `hops` network hops (interconnect.input_hops) before it."""
    op = step.instr["op"]
    if op == "loop":
        ev = loop_events(step.loop_io, step.count)
        # the gathers/scatters of all T steps; timeline spreads them over the steps
        lat = (step.loop_io * step.count * activation_bytes(target)
               / target.latency.buffer_bytes_per_ns)
        return _priced(OpCost("move", f"loop@{step.path[-1]} gates+moves", lat, events=ev), target)
    layer = layers[int(step.instr["layer"])] if op == "mvm" else None
    ev = instruction_events(step.instr, step.in_shapes, step.out_shape, layer)
    if op == "mvm":
        p = XbarParams.from_layer(layer)  # the layer's own sections: its ADC prices its events
        g = p.geometry(int(layer["K"]), int(layer["N"]), int(layer.get("replicas", 1)))
        n_in = numel(step.in_shapes[0])
        ev["interconnect_byte_hops"] = n_in * BYTES_PER_ELEMENT * hops
        v = numel(step.in_shapes[0][:-1])
        move = transfer_ns(target, hops, n_in * activation_bytes(target))
        return _priced(OpCost("mvm", str(layer["name"]),
                              mvm_latency_ns(target, g, v, p.adc) + move,
                              events=ev, stream_rows=math.ceil(v / g.replicas),
                              transfer_ns=move), target, p.adc.bits)
    if op == "matmul":
        return _priced(_matmul_cost(step, target, attention, ev), target)
    if OPS[op].event in DIGITAL_EVENTS:
        d = target.digital
        n = sum(ev["digital_ops"].values())
        cycles = n * getattr(d, f"{DIGITAL_KEY[op]}_cycles") / d.vector_lanes
        rows = numel(step.out_shape[:-1]) if step.out_shape else 0
        return _priced(OpCost(op, _group(step), cycles / d.clock_ghz, events=ev,
                              stream_rows=rows), target)
    lat = 0.0 if op in FREE else \
        numel(step.out_shape) * activation_bytes(target) / target.latency.buffer_bytes_per_ns
    return _priced(OpCost("move", _group(step), lat, events=ev), target)


def _priced(c: OpCost, target: Target, adc_bits: int | None = None) -> OpCost:
    c.energy_pj = {k: v for k, v in price(c.events, target, adc_bits).items() if v}
    return c


def _group(step: Step) -> str:
    ins = step.instr
    if "group" in ins:
        return str(ins["group"])
    return f"loop@{step.path[-2]} gates+moves" if len(step.path) > 1 else "digital"


def _matmul_cost(step: Step, target: Target, attention: str, ev: dict) -> OpCost:
    a, b = step.in_shapes
    m, k, n = a[-2], a[-1], b[-1]
    instances = numel(step.out_shape[:-2])
    if attention == "digital":
        d = target.digital
        macs = ev["digital_ops"]["matmul_mac"]
        return OpCost("matmul", "attention matmul",
                      macs / d.matmul_macs_per_cycle / d.clock_ghz, events=ev)
    # rewrite: program b [k, n] into crossbars, then stream a's m rows through them
    g = Geometry.for_matrix(target, k, n)
    ev["digital_ops"].pop("matmul_mac")
    accumulate(ev, mvm_layer_events(g, m), times=instances)
    ev["mvms_per_layer"].clear()
    ev["mvms_per_crossbar"].clear()
    ev["cell_writes"] = instances * g.cells
    latency = write_latency_ns(target, g) + mvm_latency_ns(target, g, m)
    return OpCost("matmul", "attention matmul", latency, events=ev,
                  rewrite_crossbars=instances * g.crossbars)


# ---------------------------------------------------------------- totals
def _assemble(manifest: dict, layers: dict[int, dict], target: Target, attention: str,
              steps: list[Step], costs: dict[tuple, OpCost], latency: float,
              spans: list[Span]) -> CostReport:
    energy: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)
    by_layer: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    events = new_events()
    for s in steps:
        c = costs[s.path]
        for comp, pj in c.energy_pj.items():
            energy[comp] += pj * s.trips
            by_layer[c.group][comp] += pj * s.trips
            by_layer[c.group]["energy_pj"] += pj * s.trips
            by_kind[c.kind]["energy_pj"] += pj * s.trips
        by_layer[c.group]["busy_ns"] += c.latency_ns * s.trips
        by_kind[c.kind]["busy_ns"] += c.latency_ns * s.trips
        by_kind[c.kind]["count"] += s.trips
        accumulate(events, c.events, s.trips)
    used = crossbars_used(manifest)
    rewrite = _rewrite_summary(steps, costs, target) if attention == "rewrite" else {}
    area = area_mm2(target, manifest["layers"], int(rewrite.get("crossbars", 0)))
    tiles = tiles_used(target, used)
    occ, parallel = _occupancy(layers, target, steps, costs, events, tiles)
    thr = steady_state(latency, occ)
    per_replica = {str(lay["name"]): Geometry.from_layer(lay).crossbars
                   for lay in manifest["layers"]}
    verdicts = replica_verdicts(manifest["layers"], parallel, occ, thr.interval_ns, per_replica)
    vectors = {str(lay["name"]): events["mvms_per_layer"].get(int(lay["id"]), 0)
               for lay in manifest["layers"]}
    calls: dict[str, int] = defaultdict(int)
    for s in steps:
        if s.instr["op"] == "mvm":
            calls[str(layers[int(s.instr["layer"])]["name"])] += s.trips
    cycles = {str(lay["name"]): Geometry.from_layer(lay).cycles for lay in manifest["layers"]}
    loads = {n: layer_load(v, calls[n], cycles[n],
                           target.latency.mvm_pipeline_cycles) for n, v in vectors.items()}
    spare = target.crossbars - sum(per_replica.values())
    reason = plan_replicas(per_replica, loads, spare, caps=vectors).reason if per_replica else ""
    return CostReport(target.name, attention, latency, energy, area,
                      {k: dict(v) for k, v in by_layer.items()},
                      {k: dict(v) for k, v in by_kind.items()}, finalize(events), spans, used,
                      rewrite, thr, verdicts, tiles, reason)


def _occupancy(layers: dict[int, dict], target: Target, steps: list[Step], costs: dict,
               events: dict, tiles: int) -> tuple[dict[str, float], dict[str, bool]]:
    """Busy ns per image of every resource (targets/schedule.py), and for each crossbar
    layer whether one image's vectors can be split over its replicas."""
    occ: dict[str, float] = defaultdict(float)
    parallel: dict[str, bool] = {}
    for s in steps:
        c, op, unit = costs[s.path], s.instr["op"], resource(s, costs[s.path], layers)
        if op == "mvm":
            lay = layers[int(s.instr["layer"])]
            g = Geometry.from_layer(lay)
            v = numel(s.in_shapes[0][:-1])
            one = mvm_latency_ns(target, replace(g, replicas=1), v,
                                 XbarParams.from_layer(lay).adc)
            occ[unit] += one * s.trips / g.replicas
            parallel[str(lay["name"])] = parallel.get(str(lay["name"]), False) or v > 1
        elif c.rewrite_crossbars:
            occ[unit] += c.latency_ns * s.trips
        else:  # digital matmul units, buffers, digital vector units: one set per tile
            occ[unit] += c.latency_ns * s.trips / tiles
    byte_hops = events["interconnect_byte_hops"] * activation_bytes(target) / BYTES_PER_ELEMENT
    if byte_hops:
        occ["network"] = byte_hops / network_capacity_bytes_per_ns(target, tiles)
    return dict(occ), parallel


def _rewrite_summary(steps: list[Step], costs: dict, target: Target) -> dict[str, float]:
    mm = [(s, costs[s.path]) for s in steps if s.instr["op"] == "matmul"]
    if not mm:
        return {"cell_writes": 0, "writes_per_cell": 0, "lifetime_inferences": math.inf,
                "crossbars": 0}
    per_cell = max(s.trips for s, _ in mm)  # each matmul has its own crossbars
    return {"cell_writes": sum(c.events["cell_writes"] * s.trips for s, c in mm),
            "writes_per_cell": per_cell,
            "lifetime_inferences": target.write.endurance / per_cell,
            "crossbars": sum(c.rewrite_crossbars for _, c in mm)}


def area_mm2(target: Target, layers: list[dict], extra_crossbars: int = 0) -> dict[str, float]:
    """Area of the crossbars a program occupies and their periphery, by component: each used
    crossbar with its DACs (one per row), ADCs and sample-and-holds, plus the IMAs and tiles
    the crossbars fill (packed densely). Chip-level periphery ([area] chip_overhead_mm2) is
    not part of it (see `chip_area_mm2`)."""
    a, c = target.area, target.crossbar
    n = extra_crossbars + sum(Geometry.from_layer(lay).all_crossbars for lay in layers)
    adcs = adcs_per_crossbar(target)
    imas = math.ceil(n / target.chip.crossbars_per_ima)
    tiles = math.ceil(imas / target.chip.imas_per_tile)
    return {"crossbar": n * a.crossbar_mm2, "dac": n * c.rows * a.dac_mm2,
            "adc": n * adcs * adc_area_mm2(target), "sample_hold": n * c.cols * a.sample_hold_mm2,
            "ima": imas * a.ima_overhead_mm2, "tile": tiles * a.tile_overhead_mm2}


def chip_area_mm2(target: Target) -> float:
    """Area of the whole chip: every crossbar with its periphery plus the chip-level part
    (targets/chip.py, which also gives the chip's peak power)."""
    from farc.targets.chip import chip_totals

    return chip_totals(target).total_area_mm2("chip")
