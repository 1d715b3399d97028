"""The tables of `farc report`, as plain data (`Section`) rendered to the terminal (rich) or
to HTML by html.py, so both show the same numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table

from farc.report.units import count, mm2, ns, pj
from farc.targets.cost import COMPONENTS, CostReport

ATTENTION_NOTE = {
    "digital": "attention's activation x activation matmuls run on a digital matmul unit "
               "([digital] matmul_mac_pj, matmul_macs_per_cycle)",
    "rewrite": "attention's activation x activation matmuls program their right operand "
               "(K^T or V) into crossbars every time they run ([write] row_ns, cell_pj, "
               "endurance), then stream the left operand through them as MVMs",
}


@dataclass
class Section:
    """A titled table: header and rows of formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def _share(x: float, total: float) -> str:
    return f"{x / total:.1%}" if total else "-"


def has_attention(reports: list[tuple[str, CostReport]]) -> bool:
    """Whether any program has activation x activation matmuls (attention's QK^T and AV),
    the only ops the --attention assumption is about."""
    return any(r.by_kind.get("matmul", {}).get("count", 0) for _, r in reports)


def summary(report: CostReport, unit: str = "inference",
            attention: bool = True) -> list[tuple[str, str]]:
    """The summary rows; `unit`: what one inference is called ("image" for image models),
    `attention`: whether to show the attention rows (see has_attention)."""
    rows = [("target", report.target)]
    if attention:
        rows.append(("attention", report.attention))
    rows += [("latency (critical path)", ns(report.latency_ns)),
             ("energy per inference", pj(report.energy_total_pj)),
             ("area used", mm2(report.area_total_mm2)),
             ("crossbars used", count(report.crossbars_used))]
    if attention:
        rows.append(("act x act matmuls (not weight-stationary)",
                     count(report.by_kind.get("matmul", {}).get("count", 0))))
    thr = report.throughput
    if thr is not None:
        ips = thr.images_per_s  # inferences per second, whatever the model's input
        rate = f"{ips:,.0f}" if ips >= 10 else f"{ips:.3g}"
        rows += [(throughput_label(unit), f"{rate} {unit}s/s ({thr.in_flight} in flight)"),
                 ("throughput bottleneck",
                  f"{thr.bottleneck} ({ns(thr.interval_ns)} per {unit})"),
                 ("power at that throughput",
                  f"{report.energy_total_pj * ips * 1e-12:.3g} W"),
                 ("tiles used", count(report.tiles_used))]
    if report.latency_ns:
        rows.append(("average power", f"{report.energy_total_pj / report.latency_ns:.3g} mW"))
    if report.attention == "rewrite" and attention:
        rw = report.rewrite
        rows += [("cell writes per inference", count(rw.get("cell_writes", 0))),
                 ("writes per cell per inference", count(rw.get("writes_per_cell", 0))),
                 ("lifetime (inferences)", count(rw.get("lifetime_inferences", 0))),
                 ("lifetime at back-to-back inferences",
                  ns(rw.get("lifetime_inferences", 0) * report.latency_ns)),
                 ("rewrite crossbars", count(rw.get("crossbars", 0)))]
    return rows


def throughput_label(unit: str) -> str:
    return f"throughput ({unit}s in flight)"


def summary_section(reports: list[tuple[str, CostReport]],
                    unit: str = "inference") -> Section:
    attn = has_attention(reports)
    names = [n for n, _ in reports]
    keys = [k for k, _ in summary(reports[0][1], unit, attn)]
    for _, r in reports[1:]:
        keys += [k for k, _ in summary(r, unit, attn) if k not in keys]
    vals = [dict(summary(r, unit, attn)) for _, r in reports]
    rows = [[k, *(v.get(k, "-") for v in vals)] for k in keys]
    if len(reports) == 2:
        a, b = reports[0][1], reports[1][1]
        ratio = {"latency (critical path)": (b.latency_ns, a.latency_ns),
                 throughput_label(unit): (inferences_per_s(b), inferences_per_s(a)),
                 "energy per inference": (b.energy_total_pj, a.energy_total_pj),
                 "area used": (b.area_total_mm2, a.area_total_mm2),
                 "crossbars used": (b.crossbars_used, a.crossbars_used)}
        for row in rows:
            x, y = ratio.get(row[0], (None, None))
            row.append(f"{x / y:.3g}x" if x is not None and y else "")
        return Section("summary", ["", *names, f"{names[1]} / {names[0]}"], rows)
    return Section("summary", ["", *names], rows)


def inferences_per_s(r: CostReport) -> float | None:
    """Steady-state inferences per second of a report (None without a throughput model)."""
    return r.throughput.images_per_s if r.throughput is not None else None


def replication_section(reports: list[tuple[str, CostReport]]) -> Section | None:
    """What each replicated layer's replicas buy: one image's latency (its tokens split),
    throughput (without them the layer would be the bottleneck), or neither."""
    rows = [[n, v.layer, str(v.replicas), count(v.crossbars), v.verdict]
            for n, r in reports for v in r.replication]
    if not rows:
        return None
    why = "; ".join(f"{n}: the rule stops because the {r.replication_reason}"
                    for n, r in reports if r.replication and r.replication_reason)
    return Section("replicas", ["program", "layer", "replicas", "extra crossbars", "they"],
                   rows, note="an LSTM cell's steps are a recurrence: one inference uses one "
                              "replica; its replicas serve other inferences in flight. " + why)


def layer_section(name: str, r: CostReport) -> Section:
    total = r.energy_total_pj
    rows = []
    for group, v in sorted(r.by_layer.items(), key=lambda kv: -kv[1].get("energy_pj", 0)):
        e = v.get("energy_pj", 0.0)
        rows.append([group, ns(v.get("busy_ns", 0.0)), pj(e), _share(e, total),
                     pj(v.get("crossbar", 0.0)), pj(v.get("adc", 0.0)),
                     pj(v.get("digital", 0.0)), pj(v.get("buffer", 0.0) +
                                                   v.get("interconnect", 0.0)),
                     pj(v.get("write", 0.0))])
    return Section(f"{name}: per layer", ["layer / group", "busy time", "energy", "share",
                                          "crossbar", "ADC", "digital", "buffer+network",
                                          "writes"], rows,
                   note="busy time = summed latency of the layer's instructions; they "
                        "overlap on the critical path")


def role_section(reports: list[tuple[str, CostReport]]) -> Section:
    """Energy and busy time per layer role (summed over blocks and heads), side by side."""
    from farc.report.charts import by_role

    roles = [by_role(r) for _, r in reports]
    names = sorted({k for ro in roles for k in ro},
                   key=lambda k: -max(ro.get(k, {}).get("energy_pj", 0.0) for ro in roles))
    header = ["layer role"]
    for n, _ in reports:
        header += [f"{n} busy", f"{n} energy", f"{n} share"]
    rows = []
    for k in names:
        row = [k]
        for ro, (_, r) in zip(roles, reports):
            v = ro.get(k, {})
            row += [ns(v.get("busy_ns", 0.0)), pj(v.get("energy_pj", 0.0)),
                    _share(v.get("energy_pj", 0.0), r.energy_total_pj)]
        rows.append(row)
    return Section("per layer role (summed over blocks and heads)", header, rows)


def kind_section(reports: list[tuple[str, CostReport]]) -> Section:
    kinds = sorted({k for _, r in reports for k in r.by_kind},
                   key=lambda k: -max(r.by_kind.get(k, {}).get("energy_pj", 0) for _, r in reports))
    header = ["op kind"]
    for n, _ in reports:
        header += [f"{n} count", f"{n} busy", f"{n} energy", f"{n} share"]
    rows = []
    for k in kinds:
        row = [k]
        for _, r in reports:
            v = r.by_kind.get(k, {})
            row += [count(v.get("count", 0)), ns(v.get("busy_ns", 0.0)),
                    pj(v.get("energy_pj", 0.0)),
                    _share(v.get("energy_pj", 0.0), r.energy_total_pj)]
        rows.append(row)
    return Section("per op kind", header, rows)


def component_section(reports: list[tuple[str, CostReport]]) -> Section:
    header = ["component"]
    for n, _ in reports:
        header += [f"{n} energy", f"{n} share"]
    rows = []
    for c in COMPONENTS:
        row = [c]
        for _, r in reports:
            row += [pj(r.energy_pj.get(c, 0.0)), _share(r.energy_pj.get(c, 0.0),
                                                        r.energy_total_pj)]
        rows.append(row)
    return Section("energy by component", header, rows)


def area_section(reports: list[tuple[str, CostReport]]) -> Section:
    comps = list(reports[0][1].area_mm2)
    rows = [[c, *(mm2(r.area_mm2.get(c, 0.0)) for _, r in reports)] for c in comps]
    rows.append(["total", *(mm2(r.area_total_mm2) for _, r in reports)])
    return Section("area of the crossbars and periphery used", ["component",
                                                                 *(n for n, _ in reports)],
                   rows, note="ima / tile: periphery of the IMAs and tiles the used crossbars "
                              "fill (packed densely); chip-level periphery excluded")


def events_section(reports: list[tuple[str, CostReport]]) -> Section:
    keys = ("dac_cycles", "dac_conversions", "adc_conversions", "bytes_moved",
            "interconnect_bytes", "interconnect_byte_hops", "step_multiplies", "cell_writes",
            "instructions")
    rows = [[k, *(count(r.events.get(k, 0)) for _, r in reports)] for k in keys]
    kinds = sorted({k for _, r in reports for k in r.events["digital_ops"]})
    rows += [[f"digital_ops.{k}", *(count(r.events["digital_ops"].get(k, 0))
                                    for _, r in reports)] for k in kinds]
    rows.append(["MVM vectors", *(count(sum(r.events["mvms_per_layer"].values()))
                                  for _, r in reports)])
    return Section("event counts per inference (the emulator's counters)",
                   ["event", *(n for n, _ in reports)], rows)


def report_sections(reports: list[tuple[str, CostReport]],
                    unit: str = "inference") -> list[Section]:
    """Every table of the report, for one program or a comparison; `unit` names one
    inference in the summary ("image" when every program is an image model)."""
    out = [summary_section(reports, unit), component_section(reports), kind_section(reports),
           role_section(reports)]
    out += [layer_section(n, r) for n, r in reports]
    rep = replication_section(reports)
    out += [rep] if rep is not None else []
    out += [area_section(reports), events_section(reports)]
    return out


def to_rich(section: Section) -> Table:
    from rich.markup import escape

    table = Table(title=escape(section.title), title_justify="left",
                  caption=escape(section.note) if section.note else None)
    for i, h in enumerate(section.header):
        # cells fold rather than being cut with an ellipsis in narrow consoles
        table.add_column(escape(h), justify="left" if i == 0 else "right", overflow="fold")
    for row in section.rows:
        table.add_row(*(escape(c) for c in row))
    return table
