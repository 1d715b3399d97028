"""Accuracy below a lossless ADC: the trained digits FAR emulated against ADC bits (4-9) for
each input encoding and ADC range policy, side by side with the conventions farc had before
(offset inputs, one power-of-two range per row tile), and the single-MVM error that each
policy leaves (K=128, N=64, Gaussian and ReLU inputs).

Target: ISAAC's crossbars (128 x 128, 2-bit cells, 1-bit DAC) with 8-bit weights and inputs,
differential mapping, flip encoding off (so the ADC policy alone decides). Each program is
compiled from the cached FAR student (bench_accuracy.ensure_models) and run on the
360-image digits test split by the emulator (bit-level wherever the ADC is lossy).

Run: python -m bench.bench_adc [--quick]"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench._common import Section, pin_threads

BITS = (4, 5, 6, 7, 8, 9)
QUICK_BITS = (4, 5, 6)
BASE = {"quant.weight_bits": 8, "quant.input_bits": 8, "crossbar.cell_bits": 2,
        "quant.mapping": "differential", "adc.flip": False}
POLICIES: dict[str, dict] = {
    "before: offset, full range": {"adc.range": "full"},
    "before: offset, calibrated max": {"adc.range": "calibrated"},
    "per-slice ranges": {"adc.range": "calibrated", "adc.granularity": "slice"},
    "sign-magnitude": {"adc.range": "calibrated", "quant.input_encoding": "sign_magnitude"},
    "sign-magnitude + per-slice": {"adc.range": "calibrated", "adc.granularity": "slice",
                                   "quant.input_encoding": "sign_magnitude"},
    "best: + uniform step, p99.9": {"adc.range": "calibrated", "adc.granularity": "slice",
                                    "quant.input_encoding": "sign_magnitude",
                                    "adc.step_rule": "uniform", "adc.statistic": "percentile",
                                    "adc.percentile": 99.9},
}
QUICK_POLICIES = ("before: offset, calibrated max", "sign-magnitude + per-slice",
                  "best: + uniform step, p99.9")
MVM_POLICIES = {"before (calibrated max)": {"adc.range": "calibrated"},
                "best": {"adc.range": "calibrated", "quant.input_encoding": "sign_magnitude",
                         "adc.granularity": "slice", "adc.step_rule": "uniform",
                         "adc.statistic": "percentile", "adc.percentile": 99.9}}


def accuracy(far_path, overrides: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless, run_emulator
    from farc.compiler import CompileOptions, compile_checkpoint

    target = load_target("isaac").with_overrides(**BASE, **overrides)
    prog = compile_checkpoint(str(far_path), target, CompileOptions(calib_samples=64))
    out = run_emulator(prog, x)
    return float((out.argmax(1) == y).mean()), program_is_lossless(prog)


def single_mvm(section: Section, bits: tuple[int, ...]) -> None:
    from farc.runtime.numerics import XbarParams

    from farc.check.adc_error import single_mvm_rms

    base = {"crossbar.rows": 128, "crossbar.cols": 128, "crossbar.cell_bits": 2, "dac.bits": 1,
            "quant.weight_bits": 8, "quant.input_bits": 8}
    rows = []
    for kind in ("gauss", "relu"):
        for b in bits:
            errs = [single_mvm_rms(XbarParams().with_overrides(**base, **{"adc.bits": b}, **pol),
                                   kind)
                    for pol in MVM_POLICIES.values()]
            rows.append((kind, b, *(f"{e:.3g}" for e in errs),
                         f"{errs[0] / errs[1]:.0f}x" if errs[1] else "lossless"))
    section.table(["inputs", "ADC bits", *MVM_POLICIES, "ratio"], rows)


def run(quick: bool, command: str) -> Section:
    """The `python -m bench` entry (suite 'adc')."""
    section = main(quick)
    section.command(f"{command} --only adc" + (" --quick" if quick else ""))
    return section


def main(quick: bool = False) -> Section:
    import torch

    from bench.bench_accuracy import ensure_models
    from farc.data import load_split
    from farc.models.checkpoint import load_checkpoint

    pin_threads(1)
    section = Section("ADC policies: accuracy below a lossless ADC (digits)")
    section.add(__doc__.split("\n\nRun:")[0])
    models = ensure_models(None, quick)
    xs, ys = load_split("digits", "test")
    x, y = xs.numpy(), ys.numpy()
    with torch.no_grad():
        float_acc = float((load_checkpoint(models["far"]).model(xs).argmax(1) == ys)
                          .float().mean())
    bits = QUICK_BITS if quick else BITS
    policies = {k: POLICIES[k] for k in QUICK_POLICIES} if quick else POLICIES
    rows = []
    t0 = time.perf_counter()
    for name, pol in policies.items():
        cells = []
        for b in bits:
            acc, exact = accuracy(models["far"], {"adc.bits": b, **pol}, x, y)
            cells.append(f"{100 * acc:.1f}%" + (" (lossless)" if exact else ""))
            print(f"  {name}, {b} bits: {100 * acc:.1f}%", flush=True)
        rows.append((name, *cells))
    section.add(f"Float FAR student: {100 * float_acc:.1f}% (torch, 360 test images). "
                f"Emulated sweep: {time.perf_counter() - t0:.0f} s.")
    section.table(["policy", *(f"{b} bits" for b in bits)], rows)
    section.add("Single-MVM relative RMS error against the exact quantized matmul x_int @ q "
                "(128 x 64 crossbar, 256 seeded vectors, calibrated on 256 others):")
    single_mvm(section, (4, 5, 6))
    return section


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    print(main(ap.parse_args().quick).markdown())
