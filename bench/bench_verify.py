"""`farc verify` wall time on the whole digits test split (360 images), split by phase.

Model: the digits FAR (deit_digits shape: 4 blocks, 4 heads, 17 tokens), random weights
(the session fixtures' seeds), saved as a checkpoint; compiled for ISAAC's crossbars and
converters with the digits benches' 8-bit weights and inputs (2-bit cells, 1-bit DACs):
  - lossless: ISAAC's 8-bit full-range ADC with flip encoding, every layer exact, so the
    emulator's main pass takes the one-matmul fast path;
  - lossy: a 6-bit ADC with calibrated ranges (one power-of-two step per row tile, steps
    above 1), so the emulator's main pass and the reference's layers take the bit-level
    ADC path;
  - lossy, `farc compile --adc-bits 6`'s own policy (the calibrated per-slice default below
    a lossless ADC: per-slice uniform steps at the least-squares clip point, sign-magnitude
    inputs, so 14 input cycles instead of 8).
Both with the CLI's defaults (`--bitlevel-samples 8`, no `--per-layer`) except
`--min-agreement 0` (random weights: near-tie logits make the float top-1 check
meaningless; the exact checks still apply). The phases are the
calls `farc verify` makes (farc.check.verify), timed one by one in this process:
  - reference build/export: the reference built from the checkpoint's model, the float
    golden ONNX export, the reference's layers exported to ONNX for the integer check;
  - emulator: the program on all 360 images;
  - reference run: the reference model on all 360 images (plus float onnxruntime, shown
    apart); for the lossy programs also with its bit-level ADC path forced to float64 (the
    float32 arithmetic off), for the ratio in the same run;
  - per-layer checks: the traced emulator on the bit-level sample (fast and bit-level
    paths) and the reference's layers in onnxruntime on the same inputs;
  - calibration check: every layer's input scale and ADC steps calibrated again from the
    float model on the recorded calibration images (farc.check.calibration).
`farc verify --samples 0` is then run once as a subprocess for the end-to-end wall time
(its own process start, imports and data loading included), with the load average before
and after it. The goals (issue 26): the lossy 6-bit calibrated program under 2 minutes,
the lossless one under 30 s, on the 2-core machine. Nothing here asserts a time.

Run alone:  python -m bench.bench_verify [--quick] [--threads N]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import CACHE, Section, load_text, pin_threads

CONFIGS = (  # label, target overrides on isaac, file tag, goal (s) for the CLI wall time
    ("isaac, 8-bit full ADC + flip (lossless)", {}, "lossless", 30.0),
    ("isaac, 6-bit calibrated ADC, per row tile (lossy)",
     {"adc.bits": 6, "adc.range": "calibrated"}, "lossy", 120.0),
    ("isaac, 6-bit ADC, compile's default: calibrated per slice (lossy)", {"adc.bits": 6},
     "lossy-slice", 120.0),
)
BITS = {"quant.weight_bits": 8, "quant.input_bits": 8, "quant.mapping": "differential",
        "crossbar.cell_bits": 2, "dac.bits": 1}
PHASES = ("reference build/export", "emulator", "reference run", "float onnxruntime",
          "per-layer checks", "calibration check")


def digits_far_checkpoint(folder: Path) -> Path:
    """The random digits FAR of tests/conftest.py (same seeds), as a checkpoint."""
    import torch

    from farc.models.checkpoint import save_checkpoint
    from farc.models.deit import DEIT_PRESETS, DeiT
    from farc.models.far import FAR

    path = folder / "far_digits.pt"
    if not path.is_file():
        torch.manual_seed(0)
        teacher = DeiT(DEIT_PRESETS["deit_digits"]).eval()
        torch.manual_seed(1)
        save_checkpoint(path, FAR.from_teacher(teacher).eval(),
                        {"note": "random digits FAR (bench_verify)", "seed": 1})
    return path


def reference_float64(program, refs, x) -> float:
    """Seconds of the reference run with its bit-level ADC path in float64: the reference
    built again from the same model with the float32 proof switched off."""
    from farc.check import reference
    from farc.check.verify import run_reference

    proof = reference._float32_is_exact
    reference._float32_is_exact = lambda *a, **k: False
    try:
        ref64 = reference.build_reference(refs.model, program)
    finally:
        reference._float32_is_exact = proof
    clock = time.perf_counter()
    run_reference(ref64, x)
    return time.perf_counter() - clock


def phases(program, ckpt: Path, x, y, workdir: Path) -> tuple[dict[str, float], object,
                                                             object]:
    """Each phase of `farc verify` (farc/commands/verify.py -> farc.check.verify), timed."""
    from farc.check.verify import (
        Tolerances,
        add_calibration_check,
        add_layer_checks,
        report_for_outputs,
        resolve_references,
        run_emulator,
        run_onnx,
        run_reference,
    )

    t: dict[str, float] = {}
    clock = time.perf_counter()
    refs = resolve_references(program, None, checkpoint=ckpt, workdir=workdir)
    refs.bank()
    t["reference build/export"] = time.perf_counter() - clock
    outputs = {}
    for phase, key, fn in (
            ("emulator", "emulator", lambda: run_emulator(program, x)),
            ("reference run", "reference", lambda: run_reference(refs.reference, x)),
            ("float onnxruntime", "float", lambda: run_onnx(refs.float_model, x))):
        clock = time.perf_counter()
        outputs[key] = fn()
        t[phase] = time.perf_counter() - clock
    tol = Tolerances(min_agreement=0.0)
    report = report_for_outputs(program, outputs, y, refs, tol=tol)
    clock = time.perf_counter()
    add_layer_checks(report, program, x, refs, bitlevel_samples=8, per_layer=False, tol=tol)
    t["per-layer checks"] = time.perf_counter() - clock
    clock = time.perf_counter()
    add_calibration_check(report, program, refs, tol=tol)
    t["calibration check"] = time.perf_counter() - clock
    return t, report, refs


def cli_wall(path: Path, ckpt: Path) -> tuple[float, int]:
    """`farc verify PATH --checkpoint CKPT --samples 0 --min-agreement 0` end to end:
    (seconds, exit code)."""
    cmd = ["farc", "verify", str(path), "--checkpoint", str(ckpt), "--samples", "0",
           "--min-agreement", "0"]
    clock = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - clock, rc


def compile_config(ckpt: Path, over: dict, path: Path):
    """The program for one row, compiled as `farc compile --adc-bits ...` would (the lossy
    default policy applied when the overrides name none) and saved to `path`."""
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from targets.target import lossy_adc_default

    base = load_target("isaac")
    given = {**BITS, **over}
    target, _ = lossy_adc_default(base, base.with_overrides(**given), given)
    program = compile_checkpoint(str(ckpt), target, CompileOptions(calib_samples=128))
    program.save(path)
    return program


def run(quick: bool, command: str) -> Section:
    import torch

    from farc.data import load_split

    folder = CACHE / "verify"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = digits_far_checkpoint(folder)
    xs, ys = load_split("digits", "test")
    x, y = xs.numpy(), ys.numpy()
    sec = Section("`farc verify` time (digits test split)", intro=__doc__.split("\n\n")[1])
    rows, raw = [], {}
    for label, over, tag, goal in CONFIGS[:1] if quick else CONFIGS:
        path = folder / f"far_digits-{tag}.farc"
        program = compile_config(ckpt, over, path)
        with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
            t, report, refs = phases(program, ckpt, x, y, Path(tmp))
            lossless = report.lossless
            t64 = None if lossless else reference_float64(program, refs, x)
        load_before = os.getloadavg()[0]
        wall, rc = cli_wall(path, ckpt)
        load_after = os.getloadavg()[0]
        steps = sorted({float(v) for L in program.layers for s in L["adc_step"]
                        for v in (s if isinstance(s, list) else [s])})
        row = {"config": label, "lossless": lossless, "adc_steps": steps[:12], **t,
               "reference run float64": t64, "sum": sum(t.values()), "cli": wall,
               "cli_exit": rc, "goal": goal, "load_1min": [load_before, load_after],
               "ok": report.ok, "failed": report.failure_line()}
        raw[label] = row
        rows.append([label, f"{len(x)}", *(f"{t[p]:.1f}" for p in PHASES),
                     "-" if t64 is None else f"{t64:.1f} ({t64 / t['reference run']:.1f}x)",
                     f"{row['sum']:.1f}", "pass" if report.ok else "FAIL",
                     f"{wall:.1f} (exit {rc})", f"{goal:.0f}",
                     f"{load_before:.1f} / {load_after:.1f}"])
        print(f"  {label}: " + ", ".join(f"{p} {t[p]:.1f} s" for p in PHASES)
              + ("" if t64 is None else f", reference run float64 {t64:.1f} s")
              + f"; sum {row['sum']:.1f} s; checks {'pass' if report.ok else 'FAIL'} "
              f"{row['failed']}; CLI {wall:.1f} s exit {rc} (goal {goal:.0f} s, load "
              f"{load_before:.1f} / {load_after:.1f})", flush=True)
    sec.table(["program", "images", *(f"{p} (s)" for p in PHASES),
               "reference run, float64 ADC path (s)", "sum (s)", "checks",
               "`farc verify --samples 0 --min-agreement 0` (s)", "goal (s)",
               "1-min load before / after the CLI run"], rows,
              note=f"torch threads: {torch.get_num_threads()}. The CLI column is a separate "
                   "process (imports, data loading, its own reference build). The float64 "
                   "column is the reference run with its bit-level ADC path kept in float64 "
                   "(x: its ratio to the float32 run above, same process).")
    sec.load()
    sec.command(command)
    sec.raw = raw
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_verify",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the lossless program only")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for numpy BLAS, torch and onnxruntime alike")
    args = ap.parse_args()
    pin_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    print(f"load: {load_text()}", flush=True)
    sec = run(args.quick, " ".join(["python -m bench.bench_verify", *sys.argv[1:]]))
    print(sec.markdown())


if __name__ == "__main__":
    main()
