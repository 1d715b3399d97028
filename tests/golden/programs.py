"""The programs whose emulator outputs, counters and costs are pinned across refactors.

`python -m tests.golden.programs --write` records them (tests/golden/*.json, *.npz) from
the code as it stands; tests/test_golden.py rebuilds every program and demands the same
bytes. A refactor that claims to change no behaviour (a new schema, a faster path) must
leave every pinned figure equal; a deliberate change of behaviour rewrites the pins in the
same commit and says why.

The set covers every shipped target as shipped (isaac: sign-magnitude inputs, lossless
through flip encoding, offset mapping, 16 bits; puma and neurosim_rram: bipolar inputs,
calibrated per-slice ADC ranges), the three targets as they shipped before (isaac_paper and
puma_paper: offset inputs, puma's full-range 8-bit ADC; neurosim_tile_offset: one calibrated
5-bit range per tile), and isaac at W8/X8 with
the ADC policies (calibrated per-slice percentile, uniform steps), all three input
encodings, and one noisy chip. Weights are random (seeded), calibration uses the
digits train split, inputs are the first digits test images."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
IMAGES = 6
"""Test images per program: enough to exercise every path, small enough for the suite."""

# name -> (target, overrides, noise); overrides are `section.key` values.
CASES: dict[str, tuple[str, dict[str, Any], dict[str, float]]] = {
    "isaac": ("isaac", {}, {}),
    "puma": ("puma", {}, {}),
    "neurosim": ("neurosim_rram", {}, {}),
    "puma_paper": ("puma", {"adc.range": "full", "adc.granularity": "tile",
                            "adc.step_rule": "pow2", "adc.statistic": "max",
                            "quant.input_encoding": "offset"}, {}),
    "neurosim_tile_offset": ("neurosim_rram", {"adc.granularity": "tile", "adc.step_rule": "pow2",
                                               "adc.statistic": "max",
                                               "quant.input_encoding": "offset"}, {}),
    "isaac_paper": ("isaac", {"quant.input_encoding": "offset"}, {}),
    "isaac_w8_offset": ("isaac", {"quant.weight_bits": 8, "quant.input_bits": 8,
                                  "quant.mapping": "differential", "adc.bits": 9,
                                  "adc.flip": False, "quant.input_encoding": "offset"}, {}),
    "isaac_w8_signmag": ("isaac", {"quant.weight_bits": 8, "quant.input_bits": 8,
                                   "quant.mapping": "differential", "adc.bits": 9,
                                   "adc.flip": False,
                                   "quant.input_encoding": "sign_magnitude"}, {}),
    "isaac_w8_adc6_slice": ("isaac", {"quant.weight_bits": 8, "quant.input_bits": 8,
                                      "adc.bits": 6, "adc.flip": False,
                                      "adc.range": "calibrated", "adc.granularity": "slice",
                                      "adc.statistic": "percentile",
                                      "quant.input_encoding": "sign_magnitude"}, {}),
    "puma_uniform_cal": ("puma", {"adc.range": "calibrated", "adc.step_rule": "uniform",
                                  "adc.granularity": "tile", "adc.statistic": "max",
                                  "quant.input_encoding": "offset"}, {}),
    "isaac_w8_bipolar_adc6": ("isaac", {"quant.weight_bits": 8, "quant.input_bits": 8,
                                        "adc.bits": 6, "adc.range": "calibrated",
                                        "adc.granularity": "slice",
                                        "adc.step_rule": "uniform",
                                        "quant.input_encoding": "bipolar"}, {}),
    "isaac_w8_noisy": ("isaac", {"quant.weight_bits": 8, "quant.input_bits": 8,
                                 "adc.bits": 9, "adc.flip": False,
                                 "quant.input_encoding": "sign_magnitude"},
                       {"prog_sigma": 0.02, "read_sigma": 0.01}),
}


def model():
    """A pruned digits FAR with unequal hidden sizes (seeded random weights)."""
    import torch

    from farc.models.deit import DEIT_PRESETS
    from farc.models.far import FAR, FARConfig

    hidden = (((5, 9), (16, 3), (1, 2), (7, 7)), ((2, 11), (3, 4), (16, 16), (9, 1)),
              ((4, 4), (8, 2), (1, 1), (12, 6)), ((16, 1), (2, 15), (6, 10), (3, 3)))
    torch.manual_seed(2)
    return FAR(FARConfig(DEIT_PRESETS["deit_digits"], hidden)).eval()


def build(name: str, far: Any = None) -> tuple[Any, Any]:
    """(program, target) of one case."""
    from farc.targets import load_target

    from farc.compiler import compile_checkpoint
    from farc.compiler.driver import CompileOptions

    tname, overrides, _ = CASES[name]
    target = load_target(tname).with_overrides(**overrides)
    program = compile_checkpoint(far if far is not None else model(), target,
                                 CompileOptions(calib_samples=16))
    return program, target


def observe(name: str, program: Any, target: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """(emulator outputs, {counters, cost}) of one case: what must not change."""
    from farc.runtime.emulator import Emulator
    from farc.runtime.schema import DeviceSection
    from farc.targets.cost import cost_program

    from farc.data import load_split

    x, _ = load_split("digits", "test")
    noise = CASES[name][2]
    emu = Emulator(program, noise=DeviceSection(**noise) if noise else None, seed=0)
    (out,) = emu.run({program.manifest["inputs"][0]["name"]: x[:IMAGES].numpy()}).values()
    cost = cost_program(program, target)
    facts = {"counters": emu.counters.to_dict(),
             "latency_ns": cost.latency_ns, "energy_pj": cost.energy_pj,
             "area_mm2": cost.area_mm2, "events": cost.events,
             "crossbars_used": cost.crossbars_used, "tiles_used": cost.tiles_used,
             "throughput": repr(cost.throughput)}
    return np.asarray(out), json.loads(json.dumps(facts, sort_keys=True, default=repr))


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write() -> None:
    far = model()
    outs, facts = {}, {}
    for name in CASES:
        program, target = build(name, far)
        outs[name], facts[name] = observe(name, program, target)
        print(name, digest(outs[name])[:12], facts[name]["latency_ns"])
    np.savez(HERE / "outputs.npz", **outs)
    (HERE / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.golden.programs --write")
    write()
