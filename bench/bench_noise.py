"""Accuracy on a real chip: the pruned digits FAR on every shipped target as shipped, and
the conventions they replaced, under each device model, over Monte-Carlo chips.

Each program is compiled by `farc compile` from the pruned digits FAR (bench/.cache/
pruned.pt, as bench_finetune) and run by the emulator on the 360 digits test images, one
chip per seed (what `farc run --seeds` does): mean [min-max] over the chips, and the drop of
the mean and of the worst chip below the float accuracy. Rows: `isaac`, `puma` and
`neurosim_rram` as shipped; `isaac` with ISAAC's own offset inputs (the fragile convention,
kept as an option); isaac at W8/X8 with 2-bit cells and a 9-bit full-range ADC with
sign-magnitude, bipolar (calibrated per slice: a signed 9-bit ADC is one bit short) and
offset inputs; isaac W8/X8 with only `--adc-bits 5` given (the default policy below
lossless). Columns: noise-free, programming variation 2 % and 3 %, read noise 3 %, ADC noise
0.5 LSB with programming variation 3 %, and the ReRAM (Wan et al. 2022, 1 s) and PCM
(Joshi et al. 2020, 1 hour, per-column drift compensation) presets of docs/devices.md.
Points are cached by program digest, noise and seed (bench/.cache/finetune/points), so an
interrupted run resumes; `--chips N` sets the chips per point (10 by default, the issue's
count)."""

from __future__ import annotations

import sys

from bench._common import Section, rel
from bench.bench_finetune import DIR, _cell, _float_acc, _stats, compiled, points, pruned_model

W8 = ["--weight-bits", "8", "--input-bits", "8", "--cell-bits", "2", "--mapping",
      "differential"]
PER_SLICE = ["--adc-range", "calibrated", "--adc-granularity", "slice", "--adc-step-rule",
             "uniform", "--adc-statistic", "percentile"]
PROGRAMS: list[tuple[str, str, list[str]]] = [
    ("isaac (shipped: sign-magnitude)", "isaac", []),
    ("puma (shipped: bipolar, per slice)", "puma", []),
    ("neurosim_rram (shipped: bipolar, per slice)", "neurosim_rram", []),
    ("isaac, offset inputs (ISAAC's own)", "isaac", ["--input-encoding", "offset"]),
    ("isaac W8/X8, sign-magnitude, 9-bit ADC", "isaac",
     [*W8, "--adc-bits", "9", "--no-adc-flip", "--input-encoding", "sign_magnitude"]),
    ("isaac W8/X8, bipolar, 9-bit ADC per slice", "isaac",
     [*W8, "--adc-bits", "9", "--input-encoding", "bipolar", *PER_SLICE]),
    ("isaac W8/X8, offset, 9-bit ADC", "isaac",
     [*W8, "--adc-bits", "9", "--no-adc-flip", "--input-encoding", "offset"]),
    ("isaac W8/X8, --adc-bits 5 (default policy)", "isaac", [*W8, "--adc-bits", "5"]),
]
NOISES: list[tuple[str, str]] = [
    ("noise-free", ""),
    ("prog 2 %", "prog_sigma=0.02"),
    ("prog 3 %", "prog_sigma=0.03"),
    ("read 3 %", "read_sigma=0.03"),
    ("ADC 0.5 LSB + prog 3 %", "adc_sigma=0.5,prog_sigma=0.03"),
    ("ReRAM (Wan 2022, 1 s)", "preset:rram_wan2022_1s"),
    ("PCM (Joshi 2020, 1 h)", "preset:pcm_joshi2020_1h"),
]
"""(column, noise): KEY=VALUE list for `DeviceSection.parse`, or a device preset."""


def run(quick: bool, command: str, chips: int = 10) -> Section:
    sec = Section("Accuracy on a real chip (digits pruned FAR, Monte-Carlo chips)", __doc__)
    m = pruned_model()  # `quick` only shortens the chips: the model is the one pruned FAR
    acc_float = _float_acc(m["pruned"])
    seeds = tuple(range(3 if quick else chips))
    progs = [(label, compiled(m["pruned"], args, f"noise_{i}", target))
             for i, (label, target, args) in enumerate(PROGRAMS)]
    jobs = [(prog, noise, s) for _, prog in progs for _, noise in NOISES
            for s in (seeds if noise else seeds[:1])]
    accs = dict(zip(jobs, points(jobs)))
    rows = []
    for label, prog in progs:
        row = [label]
        for _, noise in NOISES:
            got = [accs[(prog, noise, s)] for s in (seeds if noise else seeds[:1])]
            mean, worst, _ = _stats(got)
            row.append(f"{_cell(got)}; {100 * (mean - acc_float):+.1f} / "
                       f"{100 * (worst - acc_float):+.1f} pt")
        rows.append(row)
    sec.add(f"Float test accuracy (torch) of the pruned FAR: {100 * acc_float:.2f} %. Each "
            f"cell: mean [min-max] over chips {list(seeds)}; then the mean's and the worst "
            "chip's difference to float.")
    sec.table(["program", *(c for c, _ in NOISES)], rows)
    sec.load()
    sec.command(command, "# one cell by hand:",
                "farc compile bench/.cache/pruned.pt --target isaac -o isaac.farc",
                "farc run isaac.farc --data digits --noise prog_sigma=0.02 --seeds 0..9 "
                "-o mc.npz")
    sec.raw = {"float": acc_float, "seeds": list(seeds),
               "cells": {f"{label} | {noise or 'none'}": [accs[(prog, noise, s)] for s in
                                                          (seeds if noise else seeds[:1])]
                         for label, prog in progs for _, noise in NOISES}}
    return sec


if __name__ == "__main__":
    # python -m bench.bench_noise [--quick] [--chips N]: the section alone, printed
    n = int(sys.argv[sys.argv.index("--chips") + 1]) if "--chips" in sys.argv else 10
    print(run("--quick" in sys.argv, f"python -m bench.bench_noise --chips {n}", n).markdown())
    print(f"(points cached in {rel(DIR / 'points')})")
