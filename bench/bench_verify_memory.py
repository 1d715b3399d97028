"""`farc verify`'s peak RSS on sequence models, against --samples (issue 28, Deliver 2).

Model: the per-time-step detector of tests/test_verify_any_output.py (an LSTM of 16 units
over T frames of 8 features, one sigmoid per frame: output [batch, T, 1]), random weights
(its output layer x8, so the frames' decisions split), saved as `.pt2`, compiled for ISAAC
with a 5-bit calibrated ADC (lossy), calibrated on 32 of the inputs. Inputs: seeded
N(0, 1) sequences, T = 1000 steps. `farc verify --inputs-npy --decision-threshold 0.5` is
run as a subprocess for each --samples (CLI defaults otherwise: --batch-size 64,
--bitlevel-samples 8, max memory 8 GiB), which reports its own peak RSS at exit
(RUSAGE_SELF). The goal: 256 sequences under 2 GB, and RSS
independent of --samples. Nothing here asserts.

Run alone:  python -m bench.bench_verify_memory [--steps T] [--samples 16,256]"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def build(root: Path, steps: int, n: int) -> Path:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from farc.targets import load_target
    from test_verify_any_output import F, FrameVAD

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    torch.manual_seed(0)
    module = FrameVAD().eval()
    with torch.no_grad():
        module.out.weight.mul_(8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, (torch.randn(2, steps, F),)),
                          str(root / "vad.pt2"))
    x = np.random.default_rng(0).normal(size=(n, steps, F)).astype(np.float32)
    np.save(root / "x.npy", x)
    target = load_target("isaac").with_overrides(**{"adc.bits": 5, "adc.range": "calibrated"})
    program = compile_checkpoint(root / "vad.pt2", target, CompileOptions(
        calib_images=torch.from_numpy(x[:32]), calib_samples=32,
        calib_source=str(root / "x.npy")))
    program.save(root / "vad.farc")
    return root / "vad.farc"


_CHILD = ("import atexit, resource, sys\n"
          "atexit.register(lambda: sys.stderr.write('MAXRSS %d\\n' % "
          "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
          "from farc.cli import main\n"
          "main(sys.argv[1:])\n")
"""`farc` in a child that reports its own peak RSS at exit (RUSAGE_SELF: the parent's
RUSAGE_CHILDREN also counts what a fork copies of this, by then large, process)."""


def measure(prog: Path, samples: int) -> tuple[float, float, int, str]:
    """(peak RSS in MB, wall s, exit code, load before/after) of one `farc verify`."""
    before = os.getloadavg()[0]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CHILD, "verify", str(prog), "--inputs-npy",
                          str(prog.parent / "x.npy"), "--samples", str(samples),
                          "--decision-threshold", "0.5"], check=False, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    kb = [int(line.split()[1]) for line in run.stderr.splitlines() if line.startswith("MAXRSS")]
    rss = kb[-1] / 1024 if kb else float("nan")
    return rss, wall, run.returncode, f"{before:.1f} / {os.getloadavg()[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--samples", default="16,256")
    args = ap.parse_args()
    counts = [int(s) for s in args.samples.split(",")]
    print("| --samples | steps | peak RSS (MB) | wall (s) | exit | 1-min load before / after |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="farc-bench-verify-mem-") as tmp:
        prog = build(Path(tmp), args.steps, max(counts))
        for n in counts:
            rss, wall, rc, load = measure(prog, n)
            print(f"| {n} | {args.steps} | {rss:.0f} | {wall:.1f} | {rc} | {load} |",
                  flush=True)


if __name__ == "__main__":
    main()
