"""`farc verify` wall time on the whole digits test split (360 images), split by phase.

Model: the digits FAR (deit_digits shape: 4 blocks, 4 heads, 17 tokens), random weights
(the session fixtures' seeds), saved as a checkpoint; compiled for ISAAC's crossbars and
converters with the digits benches' 8-bit weights and inputs (2-bit cells, 1-bit DACs):
  - lossless: ISAAC's 8-bit full-range ADC with flip encoding, every layer exact, so the
    emulator's main pass takes the one-matmul fast path;
  - lossy: a 6-bit ADC with calibrated ranges (steps above 1), so the emulator's main pass
    and the reference's layers take the bit-level ADC path.
Both with the CLI's defaults (`--bitlevel-samples 8`, no `--per-layer`) except
`--min-agreement 0` (random weights: near-tie logits make the float top-1 check
meaningless; the exact checks still apply). The phases are the
calls `farc verify` makes (farc.check.verify), timed one by one in this process:
  - reference build/export: the reference built from the checkpoint's model, the float
    golden ONNX export, the reference's layers exported to ONNX for the integer check;
  - emulator: the program on all 360 images;
  - reference run: the reference model on all 360 images (plus float onnxruntime, shown
    apart);
  - per-layer checks: the traced emulator on the bit-level sample (fast and bit-level
    paths) and the reference's layers in onnxruntime on the same inputs.
`farc verify --samples 0` is then run once as a subprocess for the end-to-end wall time
(its own process start, imports and data loading included). Nothing here asserts a time.

Run alone:  python -m bench.bench_verify [--quick] [--threads N]"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import CACHE, Section, load_text, pin_threads

CONFIGS = (  # label, target overrides on isaac
    ("isaac, 8-bit full ADC + flip (lossless)", {}),
    ("isaac, 6-bit calibrated ADC (lossy)", {"adc.bits": 6, "adc.range": "calibrated"}),
)
BITS = {"quant.weight_bits": 8, "quant.input_bits": 8, "quant.mapping": "differential",
        "crossbar.cell_bits": 2, "dac.bits": 1}
PHASES = ("reference build/export", "emulator", "reference run", "float onnxruntime",
          "per-layer checks")


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


def phases(program, ckpt: Path, x, y, workdir: Path) -> tuple[dict[str, float], object]:
    """Each phase of `farc verify` (farc/commands/verify.py -> farc.check.verify), timed."""
    from farc.check.verify import (
        Tolerances,
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
    return t, report


def cli_wall(path: Path, ckpt: Path) -> tuple[float, int]:
    """`farc verify PATH --checkpoint CKPT --samples 0 --min-agreement 0` end to end:
    (seconds, exit code)."""
    cmd = ["farc", "verify", str(path), "--checkpoint", str(ckpt), "--samples", "0",
           "--min-agreement", "0"]
    clock = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - clock, rc


def run(quick: bool, command: str) -> Section:
    import torch
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.data import load_split

    folder = CACHE / "verify"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = digits_far_checkpoint(folder)
    xs, ys = load_split("digits", "test")
    x, y = xs.numpy(), ys.numpy()
    sec = Section("`farc verify` time (digits test split)", intro=__doc__.split("\n\n")[1])
    rows, raw = [], {}
    for label, over in CONFIGS[:1] if quick else CONFIGS:
        target = load_target("isaac").with_overrides(**BITS, **over)
        program = compile_checkpoint(str(ckpt), target, CompileOptions(calib_samples=128))
        path = program.save(folder / f"far_digits-{'lossy' if over else 'lossless'}.farc")
        with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
            t, report = phases(program, ckpt, x, y, Path(tmp))
        wall, rc = cli_wall(path, ckpt)
        steps = sorted({int(s) for L in program.layers for s in L["adc_step"]})
        row = {"config": label, "lossless": report.lossless, "adc_steps": steps, **t,
               "sum": sum(t.values()), "cli": wall, "cli_exit": rc, "ok": report.ok,
               "failed": report.failure_line()}
        raw[label] = row
        rows.append([label, f"{len(x)}", *(f"{t[p]:.1f}" for p in PHASES),
                     f"{row['sum']:.1f}", "pass" if report.ok else "FAIL",
                     f"{wall:.1f} (exit {rc})"])
        print(f"  {label}: " + ", ".join(f"{p} {t[p]:.1f} s" for p in PHASES)
              + f"; sum {row['sum']:.1f} s; checks {'pass' if report.ok else 'FAIL'} "
              f"{row['failed']}; CLI {wall:.1f} s exit {rc}", flush=True)
    sec.table(["program", "images", *(f"{p} (s)" for p in PHASES), "sum (s)", "checks",
               "`farc verify --samples 0 --min-agreement 0` (s)"], rows,
              note=f"torch threads: {torch.get_num_threads()}. The CLI column is a separate "
                   "process (imports, data loading, its own reference build).")
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
