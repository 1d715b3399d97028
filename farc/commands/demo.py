"""`farc demo`: the whole pipeline on the embedded digits default, one command.

teacher -> FAR distill -> prune -> compile (FAR student and DeiT teacher) -> emulate ->
verify against onnxruntime -> inspect -> report (HTML). Each stage is the same CLI command a
user would type (so the demo exercises exactly what the README documents), writes into
--out, and is skipped on a rerun when its artifact is already there (--force redoes all).
The closing table gathers the figures from the artifacts themselves."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from farc.errors import FarcError
from farc.runtime.schema import AdcRange


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
                  lambda d: ["distill", str(d / "teacher.pt"), "-o", str(d / "far.pt"),
                             "--report-dir", str(d / "distill")],
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
@click.option("--adc-range", type=click.Choice([m.value for m in AdcRange]), default=None,
              help="Override the target's ADC range policy (isaac: full range, made lossless "
                   "by its flip encoding).")
@click.option("--force", is_flag=True, help="Redo every stage even if its artifact exists.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print every stage's full output (training curves, every table) instead "
                   "of one line per stage and a log file per stage in OUT/logs.")
def command(out_dir: str, target: str, adc_range: str, force: bool, verbose: bool) -> None:
    """Run the whole pipeline on the embedded digits default."""
    from rich.console import Console

    from farc.targets import load_target

    load_target(target)  # a bad --target fails now, not after minutes of training
    out = Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    plan = DemoPlan(out, target, ["--adc-range", adc_range] if adc_range else [])
    console = Console(file=sys.stdout)  # pinned: stage output is redirected to the logs
    console.print(f"farc demo: DeiT teacher -> FAR -> pruned FAR -> {target} crossbars, "
                  f"artifacts in {out}/", highlight=False)
    timings = _run_stages(plan, console, force, verbose)
    n = len(plan.stages()) + 1
    start = time.perf_counter()
    summary = _stage(console, verbose, out / "logs" / f"{n:02d}-verify.log", n, n,
                     "verify: emulator vs onnxruntime (float and QDQ)", lambda: _verify(out))
    qdq = _exact_pair(summary["verify"]["pairs"])
    console.print(f"{'✓' if summary['verify']['ok'] else '✗'} [{n}/{n}] {'verify':<15} "
                  f"{time.perf_counter() - start:5.1f} s emulator = exact reference on "
                  f"{_pct(qdq.get('agreement'))} of test images", highlight=False)
    summary.update(_gather(out))
    summary["stage_seconds"] = timings
    summary["kernel_path"] = _kernel_path(out)
    _write_json(out / "summary.json", summary)
    _write_markdown(out / "summary.md", summary)
    _print_summary(summary, out, console)
    if not summary["verify"]["ok"]:
        raise FarcError(f"demo: verify failed: {summary['verify']['failure']}")


def _run_stages(plan: DemoPlan, console, force: bool, verbose: bool) -> dict[str, float]:
    """Each stage as its CLI command, one line each (its output in OUT/logs), or all of its
    output with --verbose; a stage whose artifact exists is reused unless --force."""
    from farc.cli import cli

    stages = plan.stages()
    n = len(stages) + 1  # + verify
    timings: dict[str, float] = {}
    for i, stage in enumerate(stages, 1):
        artifact = plan.out / stage.artifact
        if artifact.exists() and not force:
            console.print(f"[dim]· [{i}/{n}] {stage.name:<15} reused  "
                          f"{_headline(stage.name, plan.out)} -> {stage.artifact}[/]",
                          highlight=False)
            continue
        log = plan.out / "logs" / f"{i:02d}-{stage.name.replace(' ', '-')}.log"
        args = stage.args(plan.out)
        start = time.perf_counter()
        _stage(console, verbose, log, i, n, f"{stage.name}: {stage.why}",
               lambda a=args: cli.main(args=a, prog_name="farc", standalone_mode=False))
        timings[stage.name] = time.perf_counter() - start
        console.print(f"✓ [{i}/{n}] {stage.name:<15} {timings[stage.name]:5.1f} s "
                      f"{_headline(stage.name, plan.out)} -> {stage.artifact}",
                      highlight=False)
    return timings


def _stage(console, verbose: bool, log: Path, i: int, n: int, what: str, body: Callable):
    """Run body() with its output in `log` and a progress bar on the terminal (or, with
    verbose, printed under a rule); on failure the log's last lines are shown."""
    import contextlib

    if verbose:
        console.rule(f"[{i}/{n}] {what}")
        result = body()
    else:
        try:
            with (open(log, "w") as f, _bar(console, i, n, what),
                  contextlib.redirect_stdout(f), contextlib.redirect_stderr(f)):
                result = body()
        except BaseException:
            _show_tail(console, log)  # after the bar is gone and the log is closed
            raise
    return result


def _bar(console, i: int, n: int, what: str):
    """A transient bar on the terminal while a stage runs: stages done of all, elapsed."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    name = what.split(":")[0]  # the stage's name; the rest is for --verbose's rule
    bar = Progress(SpinnerColumn(), TextColumn(f"[{i}/{n}] {name}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
                   redirect_stdout=False, redirect_stderr=False,
                   disable=not console.is_terminal)
    bar.add_task("stages", total=n, completed=i - 1)
    return bar


def _show_tail(console, log: Path, lines: int = 20) -> None:
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    console.print(f"--- last {len(tail)} lines of {log} ---", highlight=False)
    for t in tail:
        console.print(t, highlight=False, markup=False)


def _headline(name: str, out: Path) -> str:
    """The one figure of a finished stage, read from its artifact ('' when unreadable)."""
    try:
        return HEADLINES[name](out)
    except Exception:  # a headline is decoration; the summary reports real failures
        return ""


def _ckpt_line(out: Path, file: str) -> str:
    from farc.models.checkpoint import load_checkpoint

    prov = load_checkpoint(out / file).provenance
    m = prov.get("metrics", {})
    if file == "teacher.pt":
        return f"test {_pct(m['test_acc'])}, val {_pct(m['val_acc'])}"
    if file == "far.pt":
        fp = prov["function_preservation"]
        return (f"test {_pct(m['student_test_acc'])}, head cosine "
                f">= {fp['min_cosine']:.3f}")
    u = prov["units"]
    return f"test {_pct(m['pruned_test_acc'])}, {u['before']} -> {u['after']} units"


def _xbar_line(out: Path, file: str) -> str:
    from farc.runtime.program import Program

    sched = Program.load(out / file).manifest.get("schedule", {})
    return f"{sched.get('crossbars_used')} crossbars"


def _emulate_line(out: Path) -> str:
    import numpy as np

    from farc.data import load_split

    _, y = load_split("digits", "test")
    got = np.load(out / "emulated.npy", allow_pickle=False).argmax(-1)
    return f"test {_pct(float((got == y.numpy()).mean()))} on the emulator"


def _report_line(out: Path) -> str:
    rep = next(iter(json.loads((out / "report.json").read_text()).values()))
    lat = f"{rep['latency_ns'] / 1e3:.1f} us, " if "latency_ns" in rep else ""
    return f"{lat}{rep['energy_total_pj'] / 1e6:.2f} uJ per image"


HEADLINES: dict[str, Callable[[Path], str]] = {
    "teacher": lambda o: _ckpt_line(o, "teacher.pt"),
    "distill": lambda o: _ckpt_line(o, "far.pt"),
    "prune": lambda o: _ckpt_line(o, "far_pruned.pt"),
    "compile": lambda o: _xbar_line(o, "far_pruned.farc"),
    "compile teacher": lambda o: _xbar_line(o, "teacher.farc"),
    "emulate": _emulate_line,
    "inspect": lambda o: "occupancy map",
    "report": _report_line,
}


def _kernel_path(out: Path) -> str | None:
    from farc.models.checkpoint import load_checkpoint

    env = load_checkpoint(out / "teacher.pt").provenance.get("environment", {})
    return env.get("kernel_path")


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
        refs = resolve_references(program, path, workdir=tmp)
        report = verify(program, x.numpy(), y.numpy(), refs)
    pairs = {_pair_name(name): {"max_abs": p.max_abs, "mean_abs": p.mean_abs, "cosine": p.cosine,
                    "agreement": p.agreement} for name, p in report.pairs.items()}
    return {"verify": {"ok": report.ok, "failure": None if report.ok else report.failure_line(),
                       "pairs": pairs, "accuracy": report.accuracy}}


def _exact_pair(pairs: dict) -> dict:
    """The emulator vs the exact integer reference (not vs float)."""
    return next((p for k, p in pairs.items()
                 if k.startswith("emulator vs") and not k.endswith("float")), {})


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
        ck = load_checkpoint(out / f"{name}.pt")
        model = ck.model
        models[name] = {"test_acc": evaluate(model, x, y),
                        "params": int(sum(p.numel() for p in model.parameters()))}
        fp = ck.provenance.get("function_preservation", {})
        if "min_cosine" in fp:
            models[name]["min_cosine"] = fp["min_cosine"]
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


def _summary_tables(s: dict) -> list[tuple[str, list[str], list[tuple]]]:
    """(title, columns, rows) of the closing summary: models, then verify."""
    m, hw, v = s["models"], s["hardware"], s["verify"]
    models = [
        ("DeiT teacher", _pct(m["teacher"]["test_acc"]), f"{m['teacher']['params']:,}",
         str(hw["teacher"]["crossbars"]), _us(hw["teacher"]), _uj(hw["teacher"])),
        ("FAR student", _pct(m["far"]["test_acc"]), f"{m['far']['params']:,}", "", "", ""),
        ("FAR pruned", _pct(m["far_pruned"]["test_acc"]), f"{m['far_pruned']['params']:,}",
         str(hw["far_pruned"]["crossbars"]), _us(hw["far_pruned"]), _uj(hw["far_pruned"])),
        ("FAR pruned, emulated", _pct(m["emulated"]["test_acc"]), "", "", "", ""),
    ]
    pairs = [(k, f"{p['max_abs']:.3g}", f"{p['mean_abs']:.3g}", f"{p['cosine']:.5f}",
              _pct(p["agreement"])) for k, p in v["pairs"].items()]
    return [("farc demo summary (digits test split, 360 images)",
             ["model", "test acc", "params", "crossbars", "latency", "energy"], models),
            ("verify (digits test split)",
             ["pair", "max abs err", "mean abs err", "cosine", "top-1 agreement"], pairs)]


def _print_summary(s: dict, out: Path, console) -> None:
    from farc.progress import make_table

    console.print()
    for title, cols, rows in _summary_tables(s):
        console.print(make_table(title, cols, rows))
    fp = s["models"]["far"].get("min_cosine")
    if fp is not None:
        console.print(f"FAR heads vs attention heads (val): cosine >= {fp:.3f} for every head "
                      f"of every block ({out}/distill/function_preservation.png)",
                      highlight=False)
    console.print(f"One seed, one machine: bit-reproducible only on the same kernel path "
                  f"({s.get('kernel_path')}); 3-seed spreads in docs/far.md.", highlight=False)
    console.print(f"Everything else is in {out}/: summary.md, report.html, crossbars.png, "
                  "distill/, logs/ (farc demo -v prints it all).", highlight=False)


def _write_markdown(path: Path, s: dict) -> None:
    """summary.md: the closing tables as Markdown."""
    from farc.atomic import atomic_write

    parts = []
    for title, cols, rows in _summary_tables(s):
        parts += [f"## {title}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        parts += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        parts.append("")
    parts.append(f"Kernel path: {s.get('kernel_path')}")
    text = "\n".join(parts) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _us(h: dict) -> str:
    return "-" if h.get("latency_us") is None else f"{h['latency_us']:.1f} us"


def _uj(h: dict) -> str:
    return "-" if h.get("energy_uj") is None else f"{h['energy_uj']:.2f} uJ"
