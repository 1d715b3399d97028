"""Assemble `farc report`: cost every program on the target it was compiled for, then the
tables, the charts and the HTML page."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from typing import Any

from farc.errors import ConfigError
from farc.report.charts import energy_by_layer_png, energy_compare_png, timeline_png
from farc.report.cost_tables import Section, has_attention, inferences_per_s, report_sections
from farc.report.html import report_html
from farc.report.tiling import program_target
from farc.targets.cost import CostReport, cost_program
from farc.targets.dataflow import manifest_of
from farc.targets.target import COST_SECTIONS

KIND_LABEL = {"far": "FAR", "deit": "DeiT"}


def program_name(program: Any, fallback: str) -> str:
    model = manifest_of(program).get("model", {})
    kind, name = model.get("kind", ""), model.get("name", "")
    return f"{name} ({kind})" if name and kind and kind not in name else (name or fallback)


def short_labels(programs: list[tuple[str, Any]]) -> list[str]:
    """Column labels: the model kinds (FAR, DeiT) when they tell the programs apart, else
    the names."""
    kinds = [manifest_of(p).get("model", {}).get("kind", "") for _, p in programs]
    if len(programs) > 1 and all(kinds) and len(set(kinds)) == len(kinds):
        return [KIND_LABEL.get(k, k) for k in kinds]
    return [n for n, _ in programs]


def is_image_model(program: Any) -> bool:
    """DeiT and FAR models, and user models whose input is one image [channels, H, W]."""
    model = manifest_of(program).get("model", {})
    if model.get("kind") in KIND_LABEL:
        return True
    shape = (model.get("config") or {}).get("input_shape")
    return isinstance(shape, list) and len(shape) == 3


def inference_unit(programs: list[Any]) -> str:
    """What one inference of these programs is called: "image" for image models only."""
    return "image" if programs and all(is_image_model(p) for p in programs) else "inference"


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """'energy.adc_conversion_pj=1.5625' -> {'energy.adc_conversion_pj': 1.5625}. Only the
    cost sections may change: the architecture is fixed by the compiled program."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section = key.partition(".")[0]
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        if section not in COST_SECTIONS:
            raise ConfigError(f"--set {item!r}: only cost sections can be changed after "
                              f"compiling ({', '.join(COST_SECTIONS)}), not [{section}]")
        try:
            out[key] = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            raise ConfigError(f"--set {item!r}: {raw!r} is not a number") from None
    return out


def cost_all(programs: list[tuple[str, Any]], attention: str,
             overrides: dict[str, Any] | None = None,
             schedule: bool = False) -> list[tuple[str, CostReport]]:
    """(name, program) -> (name, report) on each program's own target (with cost-section
    `overrides`); refuses programs built for different targets. `schedule`: the first
    report also carries its full schedule (for `--trace`)."""
    out = []
    targets = {manifest_of(p)["target"].get("target", {}).get("name") for _, p in programs}
    if len(targets) > 1:
        raise ConfigError(f"--compare needs programs compiled for the same target, got "
                          f"{', '.join(sorted(str(t) for t in targets))}")
    for name, p in programs:
        target = program_target(manifest_of(p))
        if overrides:
            target = target.with_overrides(**overrides)
        out.append((name, cost_program(p, target, attention, schedule=schedule and not out)))
    return out


def charts(reports: list[tuple[str, CostReport]]) -> list[tuple[str, bytes]]:
    out = []
    if len(reports) > 1:
        out.append(("energy by component", energy_compare_png(reports)))
    out.append(("latency timeline", timeline_png(reports)))
    for name, r in reports:
        out.append((f"energy by layer role: {name}",
                    energy_by_layer_png(r, f"{name}: energy by layer role (summed over "
                                           "blocks) and component")))
    return out


def build_html(reports: list[tuple[str, CostReport]], sections: list[Section],
               full_names: list[str] | None = None) -> str:
    names = " vs ".join(n for n, _ in reports)
    r0 = reports[0][1]
    models = f"models: {', '.join(full_names)} · " if full_names else ""
    attention = r0.attention if has_attention(reports) else None
    return report_html(f"farc report: {names}", f"{models}target {r0.target}", attention,
                       sections, charts(reports))


def to_json(reports: list[tuple[str, CostReport]]) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    data = {name: {**asdict(replace(r, schedule=[])),  # the schedule is --trace's
                   "energy_total_pj": r.energy_total_pj,
                   "area_total_mm2": r.area_total_mm2,
                   "images_per_s": inferences_per_s(r), "inferences_per_s": inferences_per_s(r)}
            for name, r in reports}
    return json.dumps(clean(data), indent=1)


def report_for(programs: list[tuple[str, Any]], attention: str,
               overrides: dict[str, Any] | None = None, schedule: bool = False
               ) -> tuple[list[tuple[str, CostReport]], list[Section]]:
    """Cost the programs and build the tables; columns carry `short_labels`, the summary
    names the full models. `schedule`: keep the first program's full schedule."""
    labels = short_labels(programs)
    reports = cost_all([(lab, p) for lab, (_, p) in zip(labels, programs)], attention,
                       overrides, schedule)
    sections = report_sections(reports, inference_unit([p for _, p in programs]))
    sections[0].rows.insert(0, ["model", *(n for n, _ in programs)] +
                            ([""] if len(sections[0].header) > len(programs) + 1 else []))
    return reports, sections
