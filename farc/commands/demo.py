"""`farc demo`: the whole pipeline on the embedded digits default, one command.

teacher -> FAR distill -> prune -> compile (FAR student and DeiT teacher) -> emulate ->
verify against onnxruntime -> inspect -> report (HTML). Each stage is the same CLI command a
user would type (so the demo exercises exactly what the README documents), writes into
--out, and is skipped on a rerun when its artifact is already there (--force redoes all).
The closing table gathers the figures from the artifacts themselves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from farc.errors import FarcError


@dataclass
class Stage:
    """One pipeline step: its artifact, and the CLI arguments that make it."""

    name: str
    artifact: str
    args: Callable[[Path], list[str]]
    why: str


@dataclass
class DemoPlan:
    out: Path
    target: str
    compile_flags: list[str] = field(default_factory=list)

    def stages(self) -> list[Stage]:
        c = self.compile_flags
        return [
            Stage("teacher", "teacher.pt", lambda d: ["teacher", "-o", str(d / "teacher.pt")],
                  "train the DeiT teacher on digits"),
            Stage("distill", "far.pt",
                  lambda d: ["distill", str(d / "teacher.pt"), "-o", str(d / "far.pt")],
                  "replace every attention block by BiLSTM heads (block-wise, then end-to-end)"),
            Stage("prune", "far_pruned.pt",
                  lambda d: ["prune", str(d / "far.pt"), "-o", str(d / "far_pruned.pt")],
                  "Hoyer-Square pruning of LSTM hidden units, physically removed"),
            Stage("compile", "far_pruned.farc",
                  lambda d: ["compile", str(d / "far_pruned.pt"), "--target", self.target,
                             *c, "--emit-onnx", "-o", str(d / "far_pruned.farc")],
                  "TVM Relax passes -> tile program (+ float and QDQ ONNX references)"),
            Stage("compile teacher", "teacher.farc",
                  lambda d: ["compile", str(d / "teacher.pt"), "--target", self.target,
                             *c, "-o", str(d / "teacher.farc")],
                  "the DeiT teacher on the same target, for the comparison"),
            Stage("emulate", "emulated.npy",
                  lambda d: ["run", str(d / "far_pruned.farc"), "--data", "digits",
                             "--counters", str(d / "counters.json"),
                             "-o", str(d / "emulated.npy")],
                  "functional ReRAM emulator on the digits test split"),
            Stage("inspect", "crossbars.png",
                  lambda d: ["inspect", str(d / "far_pruned.farc"),
                             "--plot", str(d / "crossbars.png")],
                  "tiling table and crossbar occupancy map"),
            Stage("report", "report.html",
                  lambda d: ["report", str(d / "far_pruned.farc"),
                             "--compare", str(d / "teacher.farc"), "--attention", "rewrite",
                             "--json", str(d / "report.json"),
                             "--html", str(d / "report.html")],
                  "latency/energy/area, FAR student vs DeiT teacher"),
        ]


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="farc-demo",
              show_default=True, help="Folder for every artifact.")
@click.option("--target", default="isaac", show_default=True,
              help="Shipped target name or a .toml file.")
@click.option("--adc-range", type=click.Choice(["full", "calibrated"]), default=None,
              help="Override the target's ADC range policy (isaac: full range, made lossless "
                   "by its flip encoding).")
@click.option("--force", is_flag=True, help="Redo every stage even if its artifact exists.")
def command(out_dir: str, target: str, adc_range: str, force: bool) -> None:
    """Run the whole pipeline on the embedded digits default."""
    from farc.cli import cli
    from farc.progress import out_console
    from farc.targets import load_target

    load_target(target)  # a bad --target fails now, not after minutes of training
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan(out, target, ["--adc-range", adc_range] if adc_range else [])
    timings: dict[str, float] = {}
    for i, stage in enumerate(plan.stages(), 1):
        artifact = out / stage.artifact
        head = f"[{i}/{len(plan.stages())}] {stage.name}: {stage.why}"
        if artifact.exists() and not force:
            out_console.print(f"[dim]{head} -- reusing {artifact}[/]", highlight=False)
            continue
        out_console.rule(head)
        start = time.perf_counter()
        cli.main(args=stage.args(out), prog_name="farc", standalone_mode=False)
        timings[stage.name] = time.perf_counter() - start
    out_console.rule("verify: emulator vs onnxruntime (float and QDQ)")
    summary = _verify(out)
    summary.update(_gather(out))
    summary["stage_seconds"] = timings
    _write_json(out / "summary.json", summary)
    _print_summary(summary, out)
    if not summary["verify"]["ok"]:
        raise FarcError(f"demo: verify failed: {summary['verify']['failure']}")


def _verify(out: Path) -> dict:
    """Run farc.check.verify on the whole digits test split; keep its figures for the summary."""
    import tempfile

    from farc.check.verify import resolve_references, verify
    from farc.data import load_split
    from farc.runtime.program import Program

    path = out / "far_pruned.farc"
    program = Program.load(path)
    x, y = load_split("digits", "test")
    with tempfile.TemporaryDirectory(prefix="farc-demo-") as tmp:
        refs = resolve_references(program, path, float_onnx=None, qdq_onnx=None, workdir=tmp)
        report = verify(program, x.numpy(), y.numpy(), refs)
    pairs = {_pair_name(name): {"max_abs": p.max_abs, "mean_abs": p.mean_abs, "cosine": p.cosine,
                    "agreement": p.agreement} for name, p in report.pairs.items()}
    return {"verify": {"ok": report.ok, "failure": None if report.ok else report.failure_line(),
                       "pairs": pairs, "accuracy": report.accuracy}}


def _pair_name(name: str | tuple) -> str:
    return name if isinstance(name, str) else " vs ".join(map(str, name))


def _gather(out: Path) -> dict:
    """Accuracy and parameter counts from the checkpoints, hardware figures from the
    program and the report."""
    import numpy as np

    from farc.data import load_split
    from farc.far.train import evaluate
    from farc.models.checkpoint import load_checkpoint
    from farc.runtime.program import Program

    x, y = load_split("digits", "test")
    models = {}
    for name in ("teacher", "far", "far_pruned"):
        model = load_checkpoint(out / f"{name}.pt").model
        models[name] = {"test_acc": evaluate(model, x, y),
                        "params": int(sum(p.numel() for p in model.parameters()))}
    emulated = np.load(out / "emulated.npy", allow_pickle=False)
    models["emulated"] = {"test_acc": float((emulated.argmax(-1) == y.numpy()).mean())}
    hw = {}
    for name in ("far_pruned", "teacher"):
        sched = Program.load(out / f"{name}.farc").manifest.get("schedule", {})
        hw[name] = {"crossbars": sched.get("crossbars_used")}
    report = json.loads((out / "report.json").read_text())
    for (name, rep), key in zip(report.items(), ("far_pruned", "teacher")):
        hw[key].update(latency_us=rep["latency_ns"] / 1e3 if "latency_ns" in rep else None,
                       energy_uj=rep["energy_total_pj"] / 1e6, label=name)
    return {"models": models, "hardware": hw}


def _write_json(path: Path, data: dict) -> None:
    from farc.atomic import atomic_write

    text = json.dumps(data, indent=1, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _print_summary(s: dict, out: Path) -> None:
    from farc.progress import print_table

    m, hw, v = s["models"], s["hardware"], s["verify"]
    rows = [
        ("DeiT teacher", _pct(m["teacher"]["test_acc"]), f"{m['teacher']['params']:,}",
         str(hw["teacher"]["crossbars"]), _us(hw["teacher"]), _uj(hw["teacher"])),
        ("FAR student", _pct(m["far"]["test_acc"]), f"{m['far']['params']:,}", "", "", ""),
        ("FAR pruned", _pct(m["far_pruned"]["test_acc"]), f"{m['far_pruned']['params']:,}",
         str(hw["far_pruned"]["crossbars"]), _us(hw["far_pruned"]), _uj(hw["far_pruned"])),
        ("FAR pruned, emulated", _pct(m["emulated"]["test_acc"]), "", "", "", ""),
    ]
    print_table(f"farc demo summary ({out})",
                ["model", "test acc", "params", "crossbars", "latency", "energy"], rows)
    print_table("verify (digits test split)", ["pair", "max abs err", "mean abs err",
                                                "cosine", "top-1 agreement"],
                [(k, f"{p['max_abs']:.3g}", f"{p['mean_abs']:.3g}", f"{p['cosine']:.5f}",
                  _pct(p["agreement"])) for k, p in v["pairs"].items()])


def _us(h: dict) -> str:
    return "-" if h.get("latency_us") is None else f"{h['latency_us']:.1f} us"


def _uj(h: dict) -> str:
    return "-" if h.get("energy_uj") is None else f"{h['energy_uj']:.2f} uJ"
