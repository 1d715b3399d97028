"""matplotlib charts of cost reports (Agg backend, PNG bytes): energy by component stacked
per layer (or per program when comparing) and the latency timeline of one inference."""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from farc.targets.cost import COMPONENTS, CostReport

COLORS = dict(zip(COMPONENTS, plt.get_cmap("tab10").colors))
KIND_ORDER = ("mvm", "loop", "matmul", "softmax", "layernorm", "gelu", "sigmoid", "tanh",
              "mul", "add", "sub", "scale", "move")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _energy_unit(peak_pj: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ")):
        if peak_pj >= scale:
            return scale, unit
    return 1.0, "pJ"


def role(group: str) -> str:
    """A layer's role, summed over blocks/heads: 'blocks.3.far.lstm_fwd.2' -> 'far.lstm_fwd',
    'loop@39 gates+moves' -> 'loop gates+moves'."""
    name = re.sub(r"@\d+", "", group)
    name = re.sub(r"(^|\.)\d+(?=\.|$)", "", name).lstrip(".")
    return name.removeprefix("blocks.")


def by_role(report: CostReport) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for group, vals in report.by_layer.items():
        acc = out.setdefault(role(group), {})
        for k, v in vals.items():
            acc[k] = acc.get(k, 0.0) + v
    return out


def top_groups(report: CostReport, n: int = 14) -> list[tuple[str, dict[str, float]]]:
    """The n most energetic layer roles (summed over blocks), the rest folded into 'other'."""
    items = sorted(by_role(report).items(), key=lambda kv: -kv[1].get("energy_pj", 0.0))
    head, tail = items[:n], items[n:]
    if tail:
        other: dict[str, float] = {}
        for _, v in tail:
            for k, x in v.items():
                other[k] = other.get(k, 0.0) + x
        head.append((f"other ({len(tail)})", other))
    return head


def energy_by_layer_png(report: CostReport, title: str = "") -> bytes:
    """Horizontal stacked bars: energy of each layer/group split by component (nJ)."""
    groups = top_groups(report)[::-1]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(groups) + 1.8))
    left = [0.0] * len(groups)
    scale, unit = _energy_unit(max(g[1].get("energy_pj", 0.0) for g in groups))
    for comp in COMPONENTS:
        vals = [g[1].get(comp, 0.0) / scale for g in groups]
        if any(vals):
            ax.barh([g[0] for g in groups], vals, left=left, color=COLORS[comp], label=comp)
            left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel(f"energy per inference ({unit})")
    ax.set_title(title or f"energy by layer role and component ({report.target})")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def energy_compare_png(reports: list[tuple[str, CostReport]]) -> bytes:
    """One stacked bar per program: energy by component (uJ), side by side."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [n for n, _ in reports]
    bottom = [0.0] * len(reports)
    scale, unit = _energy_unit(max(r.energy_total_pj for _, r in reports))
    for comp in COMPONENTS:
        vals = [r.energy_pj.get(comp, 0.0) / scale for _, r in reports]
        if any(vals):
            ax.bar(names, vals, bottom=bottom, color=COLORS[comp], label=comp, width=0.5)
            bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_ylabel(f"energy per inference ({unit})")
    ax.set_title("energy by component")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def timeline_png(reports: list[tuple[str, CostReport]]) -> bytes:
    """Gantt chart of one inference: a lane per op kind, a bar per top-level instruction
    (a loop is one bar of T steps); one panel per program, on the same time axis."""
    end = max(r.latency_ns for _, r in reports) / 1e3 or 1.0
    fig, axes = plt.subplots(len(reports), 1, figsize=(11, 2.6 * len(reports) + 0.6),
                             squeeze=False, sharex=True)
    cmap = plt.get_cmap("tab20")
    for ax, (name, r) in zip(axes[:, 0], reports):
        kinds = [k for k in KIND_ORDER if any(s.kind == k for s in r.timeline)]
        kinds += sorted({s.kind for s in r.timeline} - set(kinds))
        for lane, kind in enumerate(kinds):
            bars = [(s.start_ns / 1e3, max((s.end_ns - s.start_ns) / 1e3, end * 1e-3))
                    for s in r.timeline if s.kind == kind]
            ax.broken_barh(bars, (lane - 0.4, 0.8), color=cmap(lane % 20))
        ax.set_yticks(range(len(kinds)), kinds)
        ax.set_xlim(0, end * 1.02)
        ax.set_title(f"{name}: critical path {r.latency_ns / 1e3:.4g} us on {r.target} "
                     f"(attention: {r.attention})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("time (us)")
    return _png(fig)


def trace_png(trace: dict, title: str, max_rows: int = 60) -> bytes:
    """A picture of a `farc report --trace` document (farc/report/trace.py), drawn from the
    file's own events: a row per track (resource lane), bars coloured by image, the image
    rows on top. Tracks beyond `max_rows` (the busiest are kept) are folded into one row."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    bars: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            bars.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["dur"],
                                                              e["args"]["image"]))
    busy = sorted(bars, key=lambda k: (-sum(d for _, d, _ in bars[k]), k))
    keep = sorted(busy[:max_rows])
    rows = [(names.get(k, str(k)), bars[k]) for k in keep]
    rest = [b for k in busy[max_rows:] for b in bars[k]]
    if rest:
        rows.append((f"{len(busy) - max_rows} more tracks", rest))
    end = max((t + d for _, bs in rows for t, d, _ in bs), default=1.0)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.16 * len(rows)))
    cmap = plt.get_cmap("tab10")
    for y, (_, bs) in enumerate(rows):
        for img in sorted({i for _, _, i in bs}):
            ax.broken_barh([(t, max(d, end * 2e-4)) for t, d, i in bs if i == img],
                           (y - 0.4, 0.8), color=cmap(img % 10), linewidth=0)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("time (us); colour = image")
    o = trace.get("otherData", {})
    ax.set_title(f"{title}: latency {o.get('latency_ns', 0) / 1e3:,.1f} us, a new image every "
                 f"{o.get('interval_ns', 0) / 1e3:,.1f} us ({o.get('bottleneck', '')}), "
                 f"{o.get('images_drawn', 1)} images drawn", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
