"""FAR against DeiT at 197 tokens on ISAAC and PUMA, and what `--replicate` buys.

Models: FAR-T/S/B (dense: every head and direction has head-dim LSTM units) and DeiT-T/S/B,
224x224 images, 16x16 patches (197 tokens), seeded random weights (cost does not depend on
the weights), compiled in this process by `farc.compiler.compile_checkpoint` (the code
`farc compile` runs) for the shipped isaac and puma targets (16-bit weights and inputs),
calibration on 2 seeded N(0, 1) images. The chip is enlarged (`chip.tiles`) until the model
fits: the B models need several ISAAC chips. Programs are cached in
bench/.cache/cost197/ (delete it to recompile). Every figure is `farc.targets.cost` on the
compiled program, for both attention assumptions (a digital matmul unit; crossbar
rewrites). The replication part compiles the digits FAR and FAR-T with and without
`--replicate` on isaac.

Run alone:  python -m bench.bench_cost_model [--quick]   (--quick: T models only)
Writes docs/img/cost197.png (the plot in docs/cost-model.md)."""

from __future__ import annotations

import gc
import math
import time

from bench._common import CACHE, ROOT, Section

MODELS = {  # label -> (kind, preset)
    "FAR-T": ("far", "deit_tiny_patch16_224"), "DeiT-T": ("deit", "deit_tiny_patch16_224"),
    "FAR-S": ("far", "deit_small_patch16_224"), "DeiT-S": ("deit", "deit_small_patch16_224"),
    "FAR-B": ("far", "deit_base_patch16_224"), "DeiT-B": ("deit", "deit_base_patch16_224"),
}
QUICK = ("FAR-T", "DeiT-T")
TARGETS = ("isaac", "puma")
PLOT = ROOT / "docs" / "img" / "cost197.png"


def _model(kind: str, preset: str):
    import torch

    from farc.models.deit import DEIT_PRESETS, DeiT
    from farc.models.far import FAR, FARConfig

    torch.manual_seed(0)
    cfg = DEIT_PRESETS[preset]
    return (FAR(FARConfig.dense(cfg)) if kind == "far" else DeiT(cfg)).eval()


def _fitting_target(name: str, params: int):
    """The shipped target, with enough tiles for `params` weights (8 cells each at 16 bits
    in 2-bit cells, column tiles rounded up: x1.5 headroom)."""
    from farc.targets import load_target

    t = load_target(name)
    need = params * t.xbar.slices * t.xbar.signs * 1.5 / (t.crossbar.rows * t.crossbar.cols)
    per_tile = t.chip.imas_per_tile * t.chip.crossbars_per_ima
    tiles = max(t.chip.tiles, math.ceil(need / per_tile))
    return t.with_overrides(**{"chip.tiles": tiles}) if tiles > t.chip.tiles else t


def compiled(label: str, kind: str, preset: str, target_name: str, replicate: bool = False):
    """(program, compile seconds or None when cached)."""
    from farc.runtime.program import Program

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    path = CACHE / "cost197" / f"{label}_{target_name}{'_rep' if replicate else ''}.farc"
    if path.exists():
        return Program.load(path), None
    model = _model(kind, preset)
    target = _fitting_target(target_name, sum(p.numel() for p in model.parameters()))
    t0 = time.perf_counter()
    program = compile_checkpoint(model, target, CompileOptions(calib_samples=2, data=None,
                                                               replicate=replicate))
    secs = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path)
    print(f"  compiled {label} for {target_name} in {secs:.1f} s", flush=True)
    del model
    gc.collect()
    return program, secs


def _fmt_t(ns_: float) -> str:
    return f"{ns_ / 1e6:.3g} ms" if ns_ >= 1e6 else f"{ns_ / 1e3:.3g} us"


def compare(labels, command: str) -> Section:
    from farc.targets.cost import cost_program
    from farc.targets.target import Target

    sec = Section("FAR vs DeiT at 197 tokens (cost model)", __doc__.split("\n\n")[1])
    rows, raw = [], []
    for tname in TARGETS:
        for label in labels:
            kind, preset = MODELS[label]
            program, secs = compiled(label, kind, preset, tname)
            target = Target.from_dict(program.manifest["target"], source="program")
            for att in (("digital", "rewrite") if kind == "deit" else ("digital",)):
                r = cost_program(program, target, attention=att)
                rec = {"model": label, "target": tname, "attention": att if kind == "deit"
                       else "(none)", "latency_ns": r.latency_ns,
                       "images_per_s": r.throughput.images_per_s,
                       "bottleneck": r.throughput.bottleneck,
                       "energy_pj": r.energy_total_pj, "area_mm2": r.area_total_mm2,
                       "crossbars": r.crossbars_used, "tiles": r.tiles_used,
                       "cell_writes": r.rewrite.get("cell_writes", 0),
                       "writes_per_cell": r.rewrite.get("writes_per_cell", 0),
                       "lifetime": r.rewrite.get("lifetime_inferences", math.inf),
                       "compile_s": secs}
                raw.append(rec)
                life = rec["lifetime"]
                rows.append([tname, label, rec["attention"], _fmt_t(r.latency_ns),
                             f"{rec['images_per_s']:,.0f}", rec["bottleneck"].replace(
                                 "crossbars ", "xb "),
                             f"{r.energy_total_pj / 1e6:,.1f}", f"{r.area_total_mm2:,.1f}",
                             f"{r.crossbars_used:,}",
                             "-" if not rec["cell_writes"] else f"{rec['cell_writes']:.3g}",
                             "inf" if math.isinf(life) else f"{life:.3g}",
                             "cached" if secs is None else f"{secs:.0f}"])
        sec.load()
    sec.table(["target", "model", "attention", "latency (1 image)", "images/s (steady)",
               "bottleneck", "energy/image (uJ)", "area used (mm²)", "crossbars",
               "cell writes/image", "lifetime (images)", "compile s"], rows)
    sec.raw = {"rows": raw}
    _plot(raw)
    sec.add(f"Plot: `{PLOT.relative_to(ROOT)}`.")
    sec.command(command)
    return sec


def _plot(raw: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("latency_ns", "latency, 1 image (ms)", 1e-6),
               ("images_per_s", "throughput (images/s)", 1.0),
               ("energy_pj", "energy per image (uJ)", 1e-6),
               ("area_mm2", "area used (mm²)", 1.0))
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 4))
    for ax, (key, title, scale) in zip(axes, metrics):
        labels, vals, colors = [], [], []
        for r in raw:
            lab = f"{r['target'][:1]}:{r['model']}" + (
                "" if r["attention"] == "(none)" else f"/{r['attention'][:3]}")
            labels.append(lab)
            vals.append(r[key] * scale)
            colors.append("tab:green" if r["model"].startswith("FAR") else "tab:blue")
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_yscale("log")
        ax.set_xticks(range(len(vals)), labels, rotation=90, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("FAR (green) vs DeiT (blue), 197 tokens; i: isaac, p: puma; "
                 "dig/rew: attention digital / crossbar rewrites", fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def replication(quick: bool) -> Section:
    """Digits FAR and FAR-T on isaac with and without --replicate."""
    from farc.targets.cost import cost_program
    from farc.targets.mvm import Geometry
    from farc.targets.schedule import plan_replicas
    from farc.targets.target import Target

    sec = Section("--replicate on isaac: what the replicas buy")
    rows = []
    cases = (("digits FAR", "far", "deit_digits"), ("FAR-T", "far", "deit_tiny_patch16_224"))
    for label, kind, preset in cases:
        reps = []
        for rep in (False, True):
            program, _ = compiled(label.replace(" ", "_"), kind, preset, "isaac", rep)
            t = Target.from_dict(program.manifest["target"], source="program")
            reps.append((program, t, cost_program(program, t)))
        (p0, t0, r0), (_, _, r1) = reps
        lays = p0.manifest["layers"]
        tiles = {str(lay["name"]): Geometry.from_layer(lay).crossbars for lay in lays}
        vectors = {str(lay["name"]): r0.events["mvms_per_layer"][str(lay["id"])]
                   for lay in lays}
        plan = plan_replicas(tiles, vectors, t0.crossbars - r0.crossbars_used)
        verdicts = {}
        for v in r1.replication:
            verdicts[v.verdict] = verdicts.get(v.verdict, 0) + 1
        for name, r in (("no", r0), ("--replicate", r1)):
            rows.append([label, name, f"{r.crossbars_used:,}", _fmt_t(r.latency_ns),
                         f"{r.throughput.images_per_s:,.0f}", r.throughput.bottleneck,
                         str(r.throughput.in_flight),
                         "; ".join(f"{n} layers: {k}" for k, n in verdicts.items())
                         if r is r1 else ""])
        sec.add(f"{label}: the rule stopped because the {plan.reason}.")
    sec.table(["model", "replicate", "crossbars", "latency (1 image)", "images/s",
               "bottleneck", "in flight", "replicas"], rows)
    sec.load()
    return sec


def run(quick: bool, command: str) -> Section:
    """Both parts as one section of bench/RESULTS.md."""
    out = Section("Cost model: --replicate, and FAR vs DeiT at 197 tokens")
    for part in (replication(quick), compare(QUICK if quick else tuple(MODELS), command)):
        out.add(part.markdown().replace("## ", "### ", 1))
        out.raw[part.title] = part.raw
    return out


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv, "python -m bench.bench_cost_model").markdown())
