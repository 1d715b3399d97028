"""Render a sweep (`farc sweep`): the table of points (CSV, Markdown, JSON), the Pareto plot
of accuracy against energy (PNG) and an HTML section / standalone page built from the report's
own helpers (farc/report/html.py: the same CSS, tables and embedded PNGs).

Input is plain data: `SweepRow`s, one per grid point, so this module needs neither the
compiler nor the emulator."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from farc.report.charts import _png, plt
from farc.report.cost_tables import Section
from farc.report.html import CSS, png_img, section_html
from farc.report.units import count, mm2, ns, pj

METRICS = ("accuracy", "energy_pj", "latency_ns", "area_mm2", "crossbars")


@dataclass
class SweepRow:
    """One grid point: its overrides and its result (None with `error` when it failed)."""

    point: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result is not None and _finite(self.result.get("energy_pj")) \
            and _finite(self.result.get("accuracy"))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def pareto_front(rows: Sequence[SweepRow]) -> set[int]:
    """Indices of the rows no other row beats: none has accuracy >= and energy <= with one
    of the two strictly better (ties on both are all kept)."""
    good = [(i, r.result["accuracy"], r.result["energy_pj"]) for i, r in enumerate(rows)
            if r.ok]
    return {i for i, a, e in good
            if not any(a2 >= a and e2 <= e and (a2 > a or e2 < e) for _, a2, e2 in good)}


def _value(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def table(keys: Sequence[str], rows: Sequence[SweepRow]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells: one column per swept key, then the metrics, then
    'pareto' (a star on the front) or the error of a failed point."""
    front = pareto_front(rows)
    header = [*keys, "accuracy", "energy", "latency", "area", "crossbars", "pareto"]
    cells = []
    for i, r in enumerate(rows):
        head = [_value(r.point.get(k, "")) for k in keys]
        if r.result is None:
            cells.append([*head, "failed", "", "", "", "", r.error or ""])
            continue
        m = r.result
        cells.append([*head, f"{100 * m['accuracy']:.2f}%", pj(m["energy_pj"]),
                      ns(m["latency_ns"]), mm2(m["area_mm2"]), count(m["crossbars"]),
                      "*" if i in front else ""])
    return header, cells


def to_csv(keys: Sequence[str], rows: Sequence[SweepRow]) -> str:
    """Raw numbers (accuracy as a fraction, pJ, ns, mm²), one line per point."""
    front = pareto_front(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*keys, *METRICS, "pareto", "compile_s", "emulate_s", "error"])
    for i, r in enumerate(rows):
        m = r.result or {}
        w.writerow([_value(r.point.get(k, "")) for k in keys] +
                   [m.get(k, "") for k in METRICS] +
                   [int(i in front), m.get("compile_s", ""), m.get("emulate_s", ""),
                    r.error or ""])
    return buf.getvalue()


def to_markdown(keys: Sequence[str], rows: Sequence[SweepRow]) -> str:
    header, cells = table(keys, rows)
    align = ["---" if i < len(keys) else "---:" for i in range(len(header) - 1)] + [":---:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_json(keys: Sequence[str], rows: Sequence[SweepRow], meta: dict[str, Any]) -> str:
    front = pareto_front(rows)
    points = [{"point": r.point, "result": r.result, "error": r.error, "pareto": i in front,
               **r.extra} for i, r in enumerate(rows)]
    return json.dumps({**meta, "keys": list(keys), "points": points}, indent=1, default=str)


def _short(point: dict[str, Any], keys: Sequence[str]) -> str:
    """A point's label on the plot: its values in --grid order, e.g. '6/2'."""
    return "/".join(_value(point[k]) for k in keys)


def _groups(rows: Sequence[SweepRow], keys: list[str]) -> tuple[str | None, list[str]]:
    """Colour points by the first labelled key when there are several keys and few of its
    values (e.g. the input encoding), labelling each point with the other keys."""
    if len(keys) < 2:
        return None, keys
    values = {_value(r.point.get(keys[0])) for r in rows}
    return (keys[0], keys[1:]) if len(values) <= 10 else (None, keys)


def pareto_png(keys: Sequence[str], rows: Sequence[SweepRow], title: str,
               reference: float | None = None, label_keys: Sequence[str] | None = None) -> bytes:
    """Accuracy (%) against energy per inference: every point (coloured by the first
    labelled key when it has few values), the Pareto front drawn as a red step line with
    its points ringed; `reference` (the float model's accuracy) as a dashed line. Points are
    labelled with their `label_keys` values (default: every key)."""
    from matplotlib.ticker import FuncFormatter

    group_key, keys = _groups(rows, list(label_keys or keys))
    good = [(i, r) for i, r in enumerate(rows) if r.ok]
    front = sorted(pareto_front(rows), key=lambda i: rows[i].result["energy_pj"])
    fig, ax = plt.subplots(figsize=(8, 5))
    xy = {i: (r.result["energy_pj"] / 1e6, 100 * r.result["accuracy"]) for i, r in good}
    names = list(dict.fromkeys(_value(r.point.get(group_key)) if group_key else "grid point"
                               for _, r in good))
    colors = dict(zip(names, plt.get_cmap("tab10").colors))
    for name in names:
        pts = [xy[i] for i, r in good
               if (_value(r.point.get(group_key)) if group_key else "grid point") == name]
        ax.scatter(*zip(*pts), s=30, color=colors[name], zorder=2,
                   label=f"{group_key}={name}" if group_key else name)
    if front:
        ax.plot(*zip(*(xy[i] for i in front)), color="#d62728", lw=1.4, zorder=3,
                drawstyle="steps-post", label="Pareto front")
        ax.scatter(*zip(*(xy[i] for i in front)), s=110, facecolors="none",
                   edgecolors="#d62728", linewidths=1.6, zorder=4)
    for i, r in good:
        ax.annotate(_short(r.point, keys), xy[i], textcoords="offset points", xytext=(5, -10),
                    fontsize=7, color="#d62728" if i in front else "#444")
    energies = [x for x, _ in xy.values()]
    if energies and max(energies) > 8 * min(energies) > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.tick_params(axis="x", which="both", labelsize=8)
    if reference is not None:
        ax.axhline(100 * reference, ls="--", color="#555", lw=1,
                   label=f"float model {100 * reference:.2f}%")
    ax.set_xlabel("energy per inference (uJ)")
    ax.set_ylabel("emulated test accuracy (%)")
    ax.set_title(f"{title}\npoints labelled {'/'.join(keys)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def sweep_section(keys: Sequence[str], rows: Sequence[SweepRow], png: bytes,
                  note: str = "") -> str:
    """The HTML section the report can embed: heading, the Pareto plot, the table."""
    header, cells = table(keys, rows)
    s = Section("sweep: every grid point", header, cells,
                note or "pareto: * marks the points no other point beats on both accuracy "
                        "and energy.")
    return (f"<h2>Pareto front: accuracy against energy</h2>"
            f"{png_img(png, 'accuracy against energy')}{section_html(s)}")


def sweep_html(title: str, subtitle: str, body: str) -> str:
    """A standalone self-contained page around `sweep_section` (same CSS as farc report)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(subtitle)} · "
            f"generated by farc sweep, {stamp}</p>"
            f"<div class='assume'><b>Method.</b> Each point is compiled for its target, run "
            f"on the functional emulator for its accuracy, and costed per inference (batch "
            f"1) by the cost model (docs/cost-model.md).</div>{body}</body></html>")
