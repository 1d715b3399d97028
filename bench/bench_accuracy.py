"""Digits test accuracy of the trained FAR student on the emulator, against ADC resolution
and against device noise.

Models come from the CLI (`farc teacher`, `farc distill`) into bench/.cache, or from
`--artifacts DIR` (teacher.pt and far.pt there). Each program is compiled for ISAAC with
8-bit weights and inputs, 2-bit cells and 1-bit DACs (the `farc compile` options below)
and run on the 360-image digits test split by `farc.runtime.Emulator` (what `farc run`
calls). With 128 rows a column can sum 3 x 128 = 384, but ISAAC's flip encoding (on in
isaac.toml) stores no column above half of that, so a full-range ADC is lossless from 8 bits
up; below that its step doubles per missing bit. A calibrated ADC
range spans the largest partial sum seen on the calibration images instead.
Noise (docs/emulator.md): `read_sigma` (per cell, per read) and `prog_sigma` (per cell,
once at programming), both as a fraction of g_on - g_off, on the 9-bit full-range program;
each point gives mean, min and max over seeds.

The float accuracies come from three independent trainings (seeds 0, 1, 2 of `farc teacher`,
`farc distill`, `farc prune`, cached in bench/.cache/seeds; `--quick` reports them only when
cached): one seed's digits on a 360-image split move by a point or two between CPU kernel
paths, so the mean and spread are the figures (docs/far.md). The ADC and noise sweeps use
the seed-0 models."""

from __future__ import annotations

from pathlib import Path

from bench._common import CACHE, Section, farc_cli, rel

ADC_BITS = (4, 5, 6, 7, 8, 9, 10)
QUICK_ADC_BITS = (4, 6, 8, 9, 10)
RANGES = ("full", "calibrated")
SIGMAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05)
QUICK_SIGMAS = (0.0, 0.02, 0.1)
SEEDS = (0, 1, 2)
BITS = {"quant.weight_bits": 8, "quant.input_bits": 8, "crossbar.cell_bits": 2}
CLI_BITS = "--weight-bits 8 --input-bits 8 --cell-bits 2"
TEACHER_EPOCHS, DISTILL_EPOCHS, FT_EPOCHS = 40, 30, 10
"""The CLI defaults; --quick trains a separate, shorter set when none is cached."""
QUICK_EPOCHS = (10, 6, 4)


def ensure_models(artifacts: Path | None, quick: bool) -> dict[str, Path]:
    """teacher.pt and far.pt: from --artifacts, the cache, or trained now with the CLI."""
    if artifacts:
        got = {n: Path(artifacts) / f"{n}.pt" for n in ("teacher", "far")}
        missing = [str(p) for p in got.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--artifacts lacks {', '.join(missing)}")
        return got
    full = {n: CACHE / f"{n}.pt" for n in ("teacher", "far")}
    if all(p.is_file() for p in full.values()) or not quick:
        _train(CACHE, (TEACHER_EPOCHS, DISTILL_EPOCHS, FT_EPOCHS), full)
        return full
    d = CACHE / "quick"
    got = {n: d / f"{n}.pt" for n in ("teacher", "far")}
    _train(d, QUICK_EPOCHS, got)
    return got


def _train(d: Path, epochs: tuple[int, int, int], paths: dict[str, Path]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    log = d / "train.log"
    te, de, fe = epochs
    if not paths["teacher"].is_file():
        print(f"  training the digits teacher ({te} epochs), log {rel(log)}", flush=True)
        farc_cli(["teacher", "-o", paths["teacher"], "--epochs", te], log)
    if not paths["far"].is_file():
        print(f"  distilling the FAR student ({de}+{fe} epochs), log {rel(log)}", flush=True)
        farc_cli(["distill", paths["teacher"], "-o", paths["far"], "--epochs", de,
                  "--ft-epochs", fe], log)


def seed_models(quick: bool) -> list[tuple[int, dict[str, Path]]]:
    """(seed, {teacher, far, pruned}) for SEEDS, trained with the CLI defaults when missing
    (not with --quick: then only what is cached)."""
    d = CACHE / "seeds"
    got = []
    for s in SEEDS:
        paths = {n: d / f"{n}{s}.pt" for n in ("teacher", "far", "pruned")}
        if not quick:
            d.mkdir(parents=True, exist_ok=True)
            log = d / f"train{s}.log"
            steps = [("teacher", ["teacher", "-o", paths["teacher"]]),
                     ("far", ["distill", paths["teacher"], "-o", paths["far"]]),
                     ("pruned", ["prune", paths["far"], "-o", paths["pruned"]])]
            for name, args in steps:
                if not paths[name].is_file():
                    print(f"  seed {s}: farc {args[0]}, log {rel(log)}", flush=True)
                    farc_cli([*args, "--seed", s], log)
        if all(p.is_file() for p in paths.values()):
            got.append((s, paths))
    return got


def seed_rows(models: list[tuple[int, dict[str, Path]]]) -> tuple[list[list[str]], dict]:
    """Per seed: test accuracy of teacher, student, pruned, and the student's worst head
    cosine (val); then mean and spread (min-max) rows."""
    from farc.models.checkpoint import load_checkpoint

    raw = {"teacher": [], "far": [], "pruned": [], "min_cosine": [], "kernel_path": set()}
    rows = []
    for s, p in models:
        t = load_checkpoint(p["teacher"]).provenance
        f = load_checkpoint(p["far"]).provenance
        q = load_checkpoint(p["pruned"]).provenance
        vals = (t["metrics"]["test_acc"], f["metrics"]["student_test_acc"],
                q["metrics"]["pruned_test_acc"])
        for key, v in zip(("teacher", "far", "pruned"), vals):
            raw[key].append(v)
        raw["min_cosine"].append(f["function_preservation"].get("min_cosine"))
        raw["kernel_path"].add(f.get("environment", {}).get("kernel_path", "not recorded"))
        rows.append([s, *(f"{100 * v:.2f}%" for v in vals),
                     f"{100 * (vals[1] - vals[0]):+.2f}", f"{raw['min_cosine'][-1]:.3f}"])
    if rows:
        mean = [sum(raw[k]) / len(raw[k]) for k in ("teacher", "far", "pruned")]
        rows.append(["mean", *(f"{100 * m:.2f}%" for m in mean),
                     f"{100 * (mean[1] - mean[0]):+.2f}",
                     f"{min(raw['min_cosine']):.3f} (min)"])
        rows.append(["spread", *(f"{100 * min(raw[k]):.2f}-{100 * max(raw[k]):.2f}%"
                                 for k in ("teacher", "far", "pruned")), "", ""])
    raw["kernel_path"] = sorted(raw["kernel_path"])
    return rows, raw


def test_split():
    from farc.data import load_split

    x, y = load_split("digits", "test")
    return x.numpy(), y.numpy()


def float_accuracy(ckpt: Path, x, y) -> float:
    import torch

    from farc.models.checkpoint import load_checkpoint

    with torch.no_grad():
        logits = load_checkpoint(ckpt).model(torch.from_numpy(x)).numpy()
    return float((logits.argmax(1) == y).mean())


def compile_digits(ckpt: Path, **overrides):
    """Compile `ckpt` for ISAAC at 8/8/2 bits plus `overrides` (target keys)."""
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    target = load_target("isaac").with_overrides(**BITS, **overrides)
    return compile_checkpoint(str(ckpt), target, CompileOptions(calib_samples=128))


def emulated_accuracy(program, x, y, noise=None, seed: int = 0) -> float:
    import numpy as np
    from farc.runtime.emulator import Emulator

    emu = Emulator(program, noise=noise, seed=seed)
    logits = np.concatenate([emu.run({"image": x[i:i + 64]})["logits"]
                             for i in range(0, len(x), 64)])
    return float((logits.argmax(1) == y).mean())


def adc_sweep(far: Path, x, y, bits: tuple[int, ...]) -> list[dict]:
    rows = []
    for b in bits:
        row = {"adc_bits": b}
        for rng in RANGES:
            prog = compile_digits(far, **{"adc.bits": b, "adc.range": rng})
            row[rng] = emulated_accuracy(prog, x, y)
            row[rng + "_steps"] = _steps(prog)
        rows.append(row)
        print(f"  ADC {b} bits: full {row['full']:.3f}, calibrated {row['calibrated']:.3f}",
              flush=True)
    return rows


def _steps(program) -> str:
    """The ADC steps the program's layers use (partial-sum units), as 'lo-hi' or one value."""
    steps = [float(s) for L in program.layers for s in L.get("adc_step", [])]
    if not steps:
        return "?"
    lo, hi = min(steps), max(steps)
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def _spread(accs: list[float]) -> str:
    mean = 100 * sum(accs) / len(accs)
    if len(accs) == 1:
        return f"{mean:.1f}%"
    return f"{mean:.1f}% [{100 * min(accs):.1f}-{100 * max(accs):.1f}]"


def noise_sweep(far: Path, x, y, sigmas: tuple[float, ...], seeds: tuple[int, ...]):
    from farc.runtime.schema import DeviceSection

    prog = compile_digits(far, **{"adc.bits": 9, "adc.range": "full"})
    rows = []
    for s in sigmas:
        row = {"sigma": s}
        for key in ("read_sigma", "prog_sigma"):
            accs = [emulated_accuracy(prog, x, y, DeviceSection(**{key: s}) if s else None, sd)
                    for sd in (seeds if s else seeds[:1])]
            row[key] = sum(accs) / len(accs)
            row[key + "_runs"] = accs
        rows.append(row)
        print(f"  sigma {s}: read {row['read_sigma']:.3f}, prog {row['prog_sigma']:.3f}",
              flush=True)
    return rows


def run(quick: bool, artifacts: Path | None, command: str) -> Section:
    sec = Section("Accuracy vs ADC bits and vs device noise (digits)", __doc__)
    models = ensure_models(artifacts, quick)
    x, y = test_split()
    acc_t, acc_f = float_accuracy(models["teacher"], x, y), float_accuracy(models["far"], x, y)
    sec.add(f"Float test accuracy (torch) of the models the sweeps use: teacher DeiT "
            f"{100 * acc_t:.1f}%, FAR student {100 * acc_f:.1f}% ({len(y)} test images). "
            f"Checkpoints: `{rel(models['teacher'])}`, `{rel(models['far'])}`.")
    seeds_rows, seeds_raw = seed_rows(seed_models(quick))
    if seeds_rows:
        sec.add("### Float accuracy over seeds (CLI defaults, digits test split)")
        sec.table(["seed", "teacher", "FAR student", "pruned FAR (50 %)",
                   "student vs teacher (pt)", "min head cosine (val)"], seeds_rows,
                  "Bit-reproducible only on the same kernel path: "
                  f"{', '.join(seeds_raw['kernel_path'])}. On another CPU (e.g. AVX-512) each "
                  "seed's figures differ; compare the mean and spread.")
    adc = adc_sweep(models["far"], x, y, QUICK_ADC_BITS if quick else ADC_BITS)
    sec.add("### vs ADC bits (ISAAC, W8/X8, 2-bit cells, 1-bit DAC, 128 rows, no noise)")
    sec.table(["ADC bits", "full-range acc", "full-range steps", "calibrated acc",
               "calibrated steps"],
              [[r["adc_bits"], f"{100 * r['full']:.1f}%", r["full_steps"],
                f"{100 * r['calibrated']:.1f}%", r["calibrated_steps"]] for r in adc],
              f"Float FAR student: {100 * acc_f:.1f}%. Steps: the ADC steps over all layers, "
              "in partial-sum units (one 2-bit level times one input bit); step 1 is "
              "lossless unless the ADC clips.")
    sec.load()
    sigmas, seeds = (QUICK_SIGMAS, SEEDS[:1]) if quick else (SIGMAS, SEEDS)
    noise = noise_sweep(models["far"], x, y, sigmas, seeds)
    sec.add(f"### vs noise (9-bit full-range ADC, mean [min-max] of seeds {list(seeds)})")
    sec.table(["sigma (fraction of g_on - g_off)", "read noise", "programming variation"],
              [[r["sigma"], _spread(r["read_sigma_runs"]), _spread(r["prog_sigma_runs"])]
               for r in noise], "sigma 0 is the noise-free emulator (one run).")
    sec.load()
    far = rel(models["far"])
    sec.command(command, "# one ADC point by hand:",
                f"farc compile {far} --target isaac {CLI_BITS} --adc-bits 6 "
                "--adc-range calibrated -o far6.farc",
                "farc run far6.farc --data digits -o logits.npy",
                "# one noise point by hand:",
                f"farc compile {far} --target isaac {CLI_BITS} --adc-bits 9 -o far9.farc",
                "farc run far9.farc --data digits --noise read_sigma=0.05 --seed 1 "
                "-o logits.npy")
    sec.raw = {"float": {"teacher": acc_t, "far": acc_f}, "seeds": seeds_raw, "adc": adc,
               "noise": noise}
    return sec


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv, None, "python -m bench.bench_accuracy").markdown())
