"""Compile-time benchmark (measured, reported in docs/compiler.md, never asserted).

    python bench/bench_compile.py [--only digits-far|far-base|deit-base] [--repeat N]

Cases: the digits FAR (goal < 3 s), a FAR-Base-shaped model with random weights at 197
tokens (goal < 20 s) and DeiT-Base (goal < 20 s). Each case is compiled in a fresh model
object; the first compile in the process also pays the one-time torch.export / TVM warm-up,
so both the first and the best-of-N time are shown, with the per-stage split."""

from __future__ import annotations

import argparse
import time

import torch
from farc.targets import load_target

from farc.compiler.driver import CompileOptions, compile_checkpoint
from farc.models.deit import DEIT_PRESETS, DeiT
from farc.models.far import FAR, FARConfig

# DeiT-Base needs more crossbars than one ISAAC chip: ISAAC cells and converters, 8-bit
# weights on offset columns, and enough tiles to hold every weight once.
BASE_TARGET = {"quant.weight_bits": 8, "quant.input_bits": 8, "chip.tiles": 1024}


def _cases() -> dict:
    return {
        "digits-far": (lambda: FAR(FARConfig.dense(DEIT_PRESETS["deit_digits"])),
                       {}, CompileOptions(calib_samples=64, data="digits")),
        "far-base": (lambda: FAR(FARConfig.dense(DEIT_PRESETS["deit_base_patch16_224"])),
                     BASE_TARGET, CompileOptions(calib_samples=2, data=None)),
        "deit-base": (lambda: DeiT(DEIT_PRESETS["deit_base_patch16_224"]),
                      BASE_TARGET, CompileOptions(calib_samples=2, data=None)),
    }


def run(name: str, repeat: int) -> None:
    build, overrides, base_opts = _cases()[name]
    torch.manual_seed(0)
    model = build().eval()
    target = load_target("isaac").with_overrides(**overrides)
    times, passes = [], []
    for _ in range(repeat):
        opts = CompileOptions(calib_samples=base_opts.calib_samples, data=base_opts.data)
        t = time.perf_counter()
        program = compile_checkpoint(model, target, opts)
        times.append(time.perf_counter() - t)
        passes.append(times[-1] - opts.timings["validate"])
        stages = ", ".join(f"{k} {v:.2f}" for k, v in opts.timings.items())
        print(f"  {name}: {times[-1]:.2f} s  ({stages})", flush=True)
    sched = program.manifest["schedule"]
    print(f"{name}: first {times[0]:.2f} s, best {min(times):.2f} s "
          f"(best without the final validation {min(passes):.2f} s); "
          f"{len(program.layers)} layers, {sched['crossbars_used']:,} crossbars", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=list(_cases()), action="append")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for name in args.only or list(_cases()):
        run(name, args.repeat)


if __name__ == "__main__":
    main()
