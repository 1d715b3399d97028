"""Compile-time benchmark (measured, reported in docs/compiler.md, never asserted).

    python bench/bench_compile.py [--only digits-far|far-base|deit-base] [--repeat N]

Cases: the digits FAR (goal < 3 s), a FAR-Base-shaped model with random weights at 197
tokens (goal < 20 s), DeiT-Base (goal < 20 s) and NeuroSim's VGG-8 at 32x32 from an ONNX
file, as users bring it (goal < 10 s). Each case is compiled in a fresh model
object; the first compile in the process also pays the one-time torch.export / TVM warm-up,
so both the first and the best-of-N time are shown, with the per-stage split."""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from farc.targets import load_target

from farc.compiler.driver import CompileOptions, compile_checkpoint
from farc.models.deit import DEIT_PRESETS, DeiT
from farc.models.far import FAR, FARConfig
from farc.models.zoo import vgg8

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
        "vgg8": (_vgg8_onnx, {}, CompileOptions(calib_samples=2, data=None)),
    }


def _vgg8_onnx() -> Path:
    """NeuroSim's VGG-8 (seeded random weights) as the ONNX file a user would compile."""
    path = Path(tempfile.mkdtemp(prefix="farc-bench-")) / "vgg8.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(vgg8().eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                          dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def run(name: str, repeat: int) -> None:
    build, overrides, base_opts = _cases()[name]
    torch.manual_seed(0)
    model = build()
    model = model.eval() if isinstance(model, torch.nn.Module) else model
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
