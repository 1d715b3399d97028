"""`farc targets` views: one summary row per shipped target (raw and derived key figures)
and the detail of one target: every key with its value, unit/meaning and cited source."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from farc.report.units import mm2, mw, ns, pj
from farc.runtime.schema import DeviceSection
from farc.targets import Target, list_targets, load_target
from farc.targets.chip import chip_totals, published
from farc.targets.events import mvm_layer_events, price
from farc.targets.mvm import Geometry, cycle_ns, mvm_latency_ns
from farc.targets.target import ALL_SECTIONS, TARGET_DIR, field_docs


def full_crossbar(t: Target) -> Geometry:
    """The layer that fills one crossbar: K = rows, N = columns / (slices * signs)."""
    return Geometry.for_matrix(t, t.crossbar.rows, max(1, t.crossbar.cols // (t.xbar.slices *
                                                                            t.xbar.signs)))


def key_figures(t: Target) -> dict[str, str]:
    """Raw and derived figures of one target, formatted."""
    g = full_crossbar(t)
    e = price(mvm_layer_events(g), t)
    return {
        "crossbar": f"{t.crossbar.rows}x{t.crossbar.cols} {t.crossbar.cell_bits}b",
        "DAC/ADC": f"{t.dac.bits}b / {t.adc.bits}b{' signed' if t.xbar.adc_signed else ''} "
                   f"{t.adc.range}",
        "ADC ranges": "per slice" if t.xbar.per_slice else "per tile",
        "inputs": str(t.quant.input_encoding),
        "cols/ADC": str(t.adc.columns_per_adc),
        "W/X bits": f"{t.quant.weight_bits}/{t.quant.input_bits}",
        "mapping": t.quant.mapping,
        "slices x signs": f"{t.xbar.slices} x {t.xbar.signs}",
        "cycles": str(t.xbar.cycles),
        "ADC lossless": "yes" if t.xbar.full_range_lossless else f"no (max {t.xbar.pmax})",
        "crossbars": f"{t.crossbars:,}",
        "cycle": ns(cycle_ns(t, g)),
        "MVM": ns(mvm_latency_ns(t, g)),
        "MVM energy": pj(sum(e.values())),
        **chip_figures(t),
    }


def _vs(model: float, paper: float, fmt) -> str:
    """'65.8 W (paper 65.8 W, +0.0 %)', or the model's figure alone when none is published."""
    if not paper:
        return f"{fmt(model)} (no published total)"
    return f"{fmt(model)} (paper {fmt(paper)}, {100 * (model / paper - 1):+.1f} %)"


def chip_figures(t: Target) -> dict[str, str]:
    """Peak power and area of the chip from the component constants (targets/chip.py),
    beside the totals the target's paper publishes ([published])."""
    c, pub = chip_totals(t), published(t)
    out = {}
    for level in ("tile", "chip"):
        p_mw, a = pub[level]
        out[f"{level} power"] = _vs(c.total_power_mw(level), p_mw, mw)
        out[f"{level} area"] = _vs(c.total_area_mm2(level), a, mm2)
    return out


def targets_table() -> Table:
    names = list_targets()
    figs = {n: key_figures(load_target(n)) for n in names}
    table = Table(title="farc targets (MVM = one full crossbar, one input vector)")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right", style="bold" if n == "isaac" else None)
    for key in next(iter(figs.values())):
        table.add_row(key, *(figs[n][key] for n in names))
    return table


def source_comments(path: Path) -> dict[tuple[str, str], str]:
    """(section, key) -> the comment after `key = value` in a target TOML file."""
    out: dict[tuple[str, str], str] = {}
    section = ""
    for line in path.read_text().splitlines():
        head = re.match(r"^\s*\[([A-Za-z_]+)\]", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\"[^\"]*\"|[^#]*?)\s*#\s*(.*)$", line)
        if m:
            out[(section, m.group(1))] = m.group(3).strip()
    return out


def target_detail(t: Target, path: Path | None = None) -> list[Table]:
    """One table per section (key, value, meaning, source) and one of derived values."""
    path = path or TARGET_DIR / f"{t.name}.toml"
    comments = source_comments(path) if path.exists() else {}
    tables = []
    for sec, cls in ALL_SECTIONS.items():
        docs = field_docs(cls)
        table = Table(title=escape(f"[{sec}]"), title_justify="left")
        for col in ("key", "value", "meaning", "source"):
            table.add_column(col, overflow="fold")
        spec = getattr(t, sec)
        for f in fields(spec):
            table.add_row(f.name, str(getattr(spec, f.name)), docs.get(f.name, ""),
                          comments.get((sec, f.name), "default"))
        tables.append(table)
    tables.append(_device_table(t, comments, path))
    derived = Table(title="derived", title_justify="left")
    derived.add_column("figure")
    derived.add_column("value", justify="right")
    for k, v in key_figures(t).items():
        derived.add_row(k, v)
    tables.append(derived)
    return tables


def _device_table(t: Target, comments: dict, path: Path) -> Table:
    """[device]: the preset the file names and the fields that differ from the ideal chip
    (the preset's included), or one row saying the chip is ideal."""
    docs = field_docs(DeviceSection)
    table = Table(title=escape("[device]"), title_justify="left")
    for col in ("key", "value", "meaning", "source"):
        table.add_column(col, overflow="fold")
    changed = t.device.changed()
    if not changed:
        table.add_row("-", "ideal", "no device model: every cell at its level, exact reads "
                      "(--device-model / --noise at run time; docs/devices.md)", "default")
    given = tomllib.loads(path.read_text()).get("device", {}) \
        if changed and path.exists() else {}
    preset = given.get("preset")
    if preset is not None:
        table.add_row("preset", str(preset), "named device model (runtime/devices.py)",
                      comments.get(("device", "preset"), ""))
    for key, value in changed.items():
        table.add_row(key, str(value), docs.get(key, ""),
                      comments.get(("device", key),
                                   "this file" if key in given or not preset else
                                   f"preset {preset}"))
    return table
