"""farc benchmark suite: `python -m bench [--quick] [--only NAMES] [--artifacts DIR]`.

Runs, in order, compile time vs model size and sequence length, emulator throughput vs
onnxruntime, accuracy vs ADC bits and noise, crossbars/latency vs pruning ratio and
`farc verify`'s time on the digits test split, then
writes bench/RESULTS.md (machine description first, each table with the command that made
it) and the raw numbers to bench/.cache/RESULTS.json. Not part of the test suite: nothing
here asserts a timing. See docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench._common import CACHE, ROOT, md_table, pin_threads, python_cmd

SUITES = ("compile", "throughput", "accuracy", "pruning", "verify", "adc", "cost",
          "finetune", "noise", "vgg8")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller sweeps (T-size models only, fewer bits/sigmas/ratios)")
    ap.add_argument("--only", default=",".join(SUITES),
                    help=f"comma-separated subset of {','.join(SUITES)}")
    ap.add_argument("--artifacts", type=Path, default=None,
                    help="folder with teacher.pt and far.pt (skip training them)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for numpy BLAS, torch and onnxruntime alike")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    if args.artifacts:
        missing = [n for n in ("teacher.pt", "far.pt") if not (args.artifacts / n).is_file()]
        if missing:
            ap.error(f"--artifacts {args.artifacts} lacks {', '.join(missing)}")
    bad = set(args.only.split(",")) - set(SUITES)
    if bad:
        ap.error(f"unknown suite(s) {', '.join(sorted(bad))}; choose from {', '.join(SUITES)}")
    return args


def _run_suite(name: str, args: argparse.Namespace, command: str):
    if name == "compile":
        from bench import bench_compile_scaling
        return bench_compile_scaling.run(args.quick, command)
    if name == "throughput":
        from bench import bench_throughput
        return bench_throughput.run(args.quick, args.threads, command)
    if name == "accuracy":
        from bench import bench_accuracy
        return bench_accuracy.run(args.quick, args.artifacts, command)
    if name == "verify":
        from bench import bench_verify
        return bench_verify.run(args.quick, command)
    if name == "adc":
        from bench import bench_adc
        return bench_adc.run(args.quick, command)
    if name == "finetune":
        from bench import bench_finetune
        return bench_finetune.run(args.quick, command)
    if name == "noise":
        from bench import bench_noise
        return bench_noise.run(args.quick, command)
    if name == "vgg8":
        from bench import bench_neurosim_vgg8
        return bench_neurosim_vgg8.run(args.quick, command)
    if name == "cost":
        from bench import bench_cost_model
        return bench_cost_model.run(args.quick, command)
    from bench import bench_pruning
    return bench_pruning.run(args.quick, args.artifacts, command)


def main() -> None:
    args = _args()
    pin_threads(args.threads)
    import torch

    from bench._common import machine

    torch.set_num_threads(args.threads)
    command = python_cmd()
    header = machine()
    store = CACHE / f"{args.out.stem}.json"  # raw numbers + section texts of this output
    old = _previous(store)
    sections = dict(old.get("markdown", {}))  # suites not rerun keep their last text
    # The sections already in the output file are kept as they are (a fresh clone has no
    # store: .cache/ is not committed; a store from an --only run holds only its suites),
    # and a rerun suite replaces its own section.
    kept = _sections_in(args.out)
    raw, walls = {k: old[k] for k in SUITES if k in old}, dict(old.get("wall", {}))
    for name in args.only.split(","):
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        sec = _run_suite(name, args, command)
        walls[name] = f"{time.perf_counter() - t0:.0f} s"
        sections[name], raw[name] = sec.markdown(), sec.raw
        _write(args.out, header, walls, sections, kept, command, args)  # per suite
        CACHE.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(
            {"machine": dict(header), "wall": walls, "markdown": sections, **raw},
            indent=1, default=_json))
    print(f"[bench] wrote {args.out}", flush=True)


def _previous(store: Path) -> dict:
    """The last run's stored results (sections of suites not rerun are kept), or {}."""
    try:
        return json.loads(store.read_text())
    except (OSError, ValueError):
        return {}


def _sections_in(out: Path) -> list[str]:
    """The `## ` sections of an existing results file after its machine header, in order."""
    try:
        text = out.read_text()
    except OSError:
        return []
    parts = text.split("\n## ")[1:]
    return ["## " + part.rstrip() + "\n" for part in parts
            if not part.startswith("Machine")]


def _title(section: str) -> str:
    return section.splitlines()[0].strip()


def _json(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _write(out: Path, header, walls, sections, kept: list[str], command: str,
           args) -> None:
    text = ["# farc benchmark results\n",
            "Generated by `python -m bench` (docs/benchmarks.md explains each benchmark); "
            "the last run was `" + command + "`. Do not edit by hand: rerun the command. "
            "The machine table describes the last run; each section states when and by "
            "which command it was measured.\n",
            "## Machine\n", md_table(["", ""], header) + "\n",
            f"Threads: {args.threads} for numpy BLAS, torch and onnxruntime alike. "
            "Other jobs shared these cores during the run, so absolute seconds are noisy; "
            "each table notes the load when it was measured. Ratios against onnxruntime "
            "are taken in the same run on the same inputs.\n",
            "Wall time per suite: " + ", ".join(f"{n} {walls[n]}" for n in SUITES
                                                if n in walls) + ". "
            "Each section gives the time it was measured; a run with `--only` remeasures "
            "those suites and keeps the others from the previous run.\n"]
    fresh = [sections[n] for n in SUITES if n in sections]
    by_title = {_title(sec): sec for sec in fresh}
    merged = [by_title.pop(_title(sec), sec) for sec in kept]
    text += merged + [sec for sec in fresh if _title(sec) in by_title]
    out.write_text("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
