"""Emulator throughput against onnxruntime float, both measured in this run on the same inputs
with the same thread count (numpy's BLAS and onnxruntime's intra-op pool).

Whole models: the digits FAR and a FAR-T-shaped model at 197 tokens, random weights (seed 0),
compiled for ISAAC with 8-bit weights and inputs (2-bit cells, 1-bit DACs, full-range ADC):
  - lossless: a 9-bit ADC covers the largest partial sum (3 x 128 = 384), so every MVM takes
    the emulator's one-matmul fast path (`mvm_path="auto"`);
  - lossless, bit-level: the same program with `mvm_path="bitlevel"` (every cycle, slice
    and column partial sum formed and digitised, same result);
  - full-ADC 8-bit: an 8-bit full-range ADC without ISAAC's flip encoding (step 2, lossy),
    necessarily bit-level.
The float ONNX model (`farc.check.onnx_export`, native LSTM nodes) runs in onnxruntime. Ratios are
emulator seconds / onnxruntime seconds (lower is better); `top-1 agree` and `max rel err`
compare the emulator's logits with onnxruntime's.

Hand-built FAR blocks: `bench/bench_emulator.py`'s rows (one block, same two ADC regimes),
called as a library.

Run alone:  python -m bench.bench_throughput [--quick]"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench._common import Section, timeit

CONFIGS = (  # label, adc bits, mvm_path
    ("lossless (fast path)", 9, "auto"),
    ("lossless, bit-level", 9, "bitlevel"),
    ("full-ADC 8-bit (bit-level)", 8, "auto"),
)
MODELS = {  # label -> (preset, batch, repeat, configs used)
    "digits FAR": ("deit_digits", 64, 3, (0, 1, 2)),
    "FAR-T (197 tokens)": ("deit_tiny_patch16_224", 2, 1, (0, 1, 2)),
}
QUICK_MODELS = {"digits FAR": ("deit_digits", 64, 1, (0, 1, 2)),
                "FAR-T (197 tokens)": ("deit_tiny_patch16_224", 1, 1, (0, 2))}


def model_rows(label: str, preset: str, batch: int, repeat: int, use: tuple,
               threads: int) -> list[dict]:
    import numpy as np
    from farc.runtime.emulator import Emulator
    from farc.targets import load_target

    from bench.bench_compile_scaling import build
    from farc.check.onnx_export import export_onnx
    from farc.check.ort import OrtRunner
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.models.deit import DEIT_PRESETS

    cfg = DEIT_PRESETS[preset]
    model = build("far", cfg)
    x = np.random.default_rng(0).normal(size=(batch, cfg.in_chans, cfg.img_size,
                                              cfg.img_size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        ort = OrtRunner(export_onnx(model, Path(tmp) / "m.onnx"), intra_op_threads=threads)
        ref = ort.run(x)
        t_ort = timeit(lambda: ort.run(x), max(repeat, 3))
    programs, rows = {}, []
    for i in use:
        name, adc, path = CONFIGS[i]
        if adc not in programs:
            target = load_target("isaac").with_overrides(**{
                "quant.weight_bits": 8, "quant.input_bits": 8, "adc.bits": adc,
                "adc.flip": False, "chip.tiles": 4000})
            programs[adc] = compile_checkpoint(model, target,
                                               CompileOptions(calib_samples=8, data=None))
        emu = Emulator(programs[adc], mvm_path=path)
        y = emu.run({"image": x})["logits"]
        t_emu = timeit(lambda emu=emu: emu.run({"image": x}), repeat, warmup=False)
        rows.append({"model": label, "config": name, "batch": batch, "emu_s": t_emu,
                     "ort_s": t_ort, "ratio": t_emu / t_ort,
                     "agree": float((y.argmax(1) == ref.argmax(1)).mean()),
                     "rel_err": float(np.abs(y - ref).max() / np.abs(ref).max())})
        print(f"  {label} {name}: emulator {t_emu:.3f} s, ort {t_ort:.4f} s", flush=True)
    return rows


def _ratio(r: float) -> str:
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def block_rows(quick: bool) -> list[tuple]:
    """bench/bench_emulator.py's hand-built FAR block rows (case, emu s, ort s, ratio, err)."""
    from bench import bench_emulator

    rows = []
    for shape in ("digits", "tiny"):
        rows += bench_emulator.bench_shape(shape, 1 if quick else 3)
    return rows


def run(quick: bool, threads: int, command: str) -> Section:
    sec = Section("Emulator throughput vs onnxruntime (float)", __doc__.split("\n\n")[0])
    sec.add(__doc__.split("\n\n")[1])
    rows = []
    for label, spec in (QUICK_MODELS if quick else MODELS).items():
        rows += model_rows(label, *spec, threads=threads)
    sec.add(f"### Whole compiled models ({threads} thread(s) each side)")
    sec.table(["model", "ADC / path", "batch", "emulator s/batch", "onnxruntime s/batch",
               "ratio emu/ORT", "top-1 agree", "max rel err"],
              [[r["model"], r["config"], r["batch"], f"{r['emu_s']:.3f}", f"{r['ort_s']:.4f}",
                _ratio(r["ratio"]), f"{100 * r['agree']:.0f}%", f"{r['rel_err']:.2e}"]
               for r in rows],
              "Seconds are medians over repeats (FAR-T: one timed run). Random weights: "
              "the agreement column shows quantization + ADC error, not accuracy.")
    sec.load()
    blocks = block_rows(quick)
    sec.add("### One hand-built FAR block (`bench/bench_emulator.py`, same run)")
    sec.table(["shape / ADC", "emulator s", "onnxruntime s", "ratio emu/ORT", "max rel err"],
              [[c, f"{te:.4f}", f"{to:.4f}", f"{ratio:.1f}x", f"{err:.2e}"]
               for c, te, to, ratio, err in blocks],
              "digits: D=64, 4 heads, hidden 16, 17 tokens, batch 64; tiny: D=192, 3 heads, "
              "hidden 64, 197 tokens, batch 8; 128x128 crossbars, 2-bit cells, 1-bit DAC, "
              "lossless = 9-bit ADC, full-adc = 8-bit (step 2).")
    sec.load()
    sec.command(command, f"python bench/bench_emulator.py --threads {threads}   "
                "# the block rows alone")
    sec.raw = {"models": rows, "blocks": [list(b) for b in blocks]}
    return sec


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv, 1, "python -m bench.bench_throughput").markdown())
