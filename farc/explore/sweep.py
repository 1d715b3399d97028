"""Run a sweep: every point of the grid compiled (`compile_checkpoint`), emulated
(`Emulator`, accuracy on the first N test images) and costed (`cost_program`: latency,
energy, area, crossbars), each in its own process.

Resumable: a finished point is saved atomically as OUTDIR/points/<slug>.json together with
the settings it was computed under (checkpoint digest, the point's full target, data,
samples, calibration, attention); a rerun with the same settings skips it, `force` redoes
it, and a point whose settings changed is redone. A point that fails (a compile error, say)
is reported and not saved, so a rerun tries it again.

Parallel: a process pool (spawned workers, one thread each); under torchrun the points are
dealt round-robin to the ranks (each with its own pool) and rank 0 gathers the results."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from farc import __version__
from farc.atomic import atomic_write
from farc.errors import ConfigError, FarcError
from farc.explore.grid import Point, point_label, point_slug

POINTS_DIR = "points"
RESULT_VERSION = 1
"""Bumped when a point file's meaning changes: older files are then redone, not reused."""


@dataclass(frozen=True)
class SweepOptions:
    """Knobs of a sweep (hardware numbers come from each point's Target)."""

    data: str = "digits"
    """Evaluation and calibration data: 'digits' or an ImageNet-style folder."""
    samples: int | None = None
    """Accuracy on the first N images of the test split (None: all of it)."""
    calib_samples: int = 64
    """Calibration images per compile (the first N of the training split)."""
    attention: str = "digital"
    """How the cost model prices activation x activation matmuls (docs/cost-model.md)."""
    batch_size: int = 64
    """Emulator batch size."""
    workers: int = 1
    """Processes running points at once (per torchrun rank)."""
    force: bool = False
    """Redo points that are already saved."""

    def validate(self) -> None:
        for name, v, lo in (("--samples", self.samples, 1), ("--calib-samples",
                            self.calib_samples, 1), ("--batch-size", self.batch_size, 1),
                            ("--workers", self.workers, 1)):
            if v is not None and v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")


@dataclass(frozen=True)
class Job:
    """One point to run, everything a worker process needs (picklable)."""

    index: int
    point: Point
    target: dict[str, Any]
    checkpoint: str
    path: str
    settings: dict[str, Any]
    batch_size: int


@dataclass
class Record:
    """One point's outcome: `result` when it ran (or was loaded), else `error`."""

    index: int
    point: Point
    result: dict[str, Any] | None = None
    error: str | None = None
    reused: bool = False

    @property
    def label(self) -> str:
        return point_label(self.point)


# ------------------------------------------------------------------------- planning
def plan_jobs(checkpoint: str | Path, points: Sequence[Point], targets: Sequence[Any],
              outdir: Path, opts: SweepOptions) -> list[Job]:
    """One Job per point, with the settings its saved result must match to be reused."""
    from farc.models.checkpoint import file_sha256

    digest = file_sha256(checkpoint)
    common = {"version": RESULT_VERSION, "checkpoint_sha256": digest, "data": opts.data,
              "samples": opts.samples, "calib_samples": opts.calib_samples,
              "attention": opts.attention}
    slugs = [point_slug(p) for p in points]
    seen = Counter(slugs)  # unique unless two values print alike: then the index decides
    names = [s if seen[s] == 1 else f"{s}~{i}" for i, s in enumerate(slugs)]
    return [Job(i, dict(p), t.to_dict(), str(Path(checkpoint).resolve()),
                str(outdir / POINTS_DIR / f"{names[i]}.json"),
                {**common, "target": t.to_dict()}, opts.batch_size)
            for i, (p, t) in enumerate(zip(points, targets))]


def load_finished(job: Job) -> dict[str, Any] | None:
    """The saved result of `job`, if its file exists, parses and was made under the same
    settings; None otherwise (a truncated or foreign file is simply redone)."""
    path = Path(job.path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("settings") != _jsonable(job.settings):
        return None
    result = saved.get("result")
    return result if isinstance(result, dict) else None


def _jsonable(x: Any) -> Any:
    """What `x` reads back as after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(x))


# ------------------------------------------------------------------------- one point
@lru_cache(maxsize=2)
def _checkpoint(path: str):
    from farc.models.checkpoint import load_checkpoint

    return load_checkpoint(path)


@lru_cache(maxsize=4)
def _test_images(data: str, samples: int | None, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    from farc.data import load_split

    size = shape[-1] if len(shape) == 4 else None
    chans = shape[1] if len(shape) == 4 else None
    x, y = load_split(data, "test", img_size=size, in_chans=chans)
    n = len(x) if samples is None else min(samples, len(x))
    return x[:n].numpy().astype(np.float32), y[:n].numpy().astype(np.int64)


def run_point(job: Job) -> dict[str, Any]:
    """Compile, emulate and cost one point; save its JSON atomically; return the result."""
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.targets import Target
    from farc.targets.cost import cost_program

    target = Target.from_dict(job.target, source=f"sweep point {point_label(job.point)}")
    s = job.settings
    t0 = time.perf_counter()
    program = compile_checkpoint(_checkpoint(job.checkpoint), target, CompileOptions(
        calib_samples=s["calib_samples"], data=s["data"], checkpoint_path=job.checkpoint))
    t1 = time.perf_counter()
    correct, n, nonfinite = _emulate(program, s["data"], s["samples"], job.batch_size)
    t2 = time.perf_counter()
    report = cost_program(program, target, s["attention"])
    result = {"accuracy": correct / n, "correct": correct, "samples": n,
              "nonfinite_outputs": nonfinite, "energy_pj": report.energy_total_pj,
              "latency_ns": report.latency_ns, "area_mm2": report.area_total_mm2,
              "crossbars": report.crossbars_used, "energy_by_component_pj": report.energy_pj,
              "adc_lossless": target.xbar.full_range_lossless, "compile_s": round(t1 - t0, 3),
              "emulate_s": round(t2 - t1, 3), "cost_s": round(time.perf_counter() - t2, 3)}
    record = {"point": job.point, "label": point_label(job.point), "settings": job.settings,
              "result": result, "farc_version": __version__}
    text = json.dumps(_finite(record), indent=1)
    atomic_write(Path(job.path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return result


def _emulate(program, data: str, samples: int | None, batch: int) -> tuple[int, int, int]:
    """(correct, samples, non-finite logits) of the program on the first test images."""
    from farc.runtime.emulator import Emulator

    spec = program.inputs[0]
    x, y = _test_images(data, samples, tuple(spec["shape"]))
    emu = Emulator(program)
    correct = nonfinite = 0
    for lo in range(0, len(x), batch):
        logits = next(iter(emu.run({spec["name"]: x[lo:lo + batch]}).values()))
        logits = logits.reshape(len(logits), -1)
        nonfinite += int(logits.size - np.isfinite(logits).sum())
        correct += int((logits.argmax(axis=1) == y[lo:lo + batch]).sum())
    return correct, len(x), nonfinite


def _finite(x: Any) -> Any:
    """JSON has no NaN/Infinity: such floats are written as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _safe_run(job: Job) -> tuple[int, dict[str, Any] | None, str | None]:
    """(index, result, None) or (index, None, one-line error): one bad point must not stop
    the others."""
    try:
        return job.index, run_point(job), None
    except FarcError as exc:
        return job.index, None, str(exc)
    except Exception as exc:  # a bug: still reported per point, with its type
        return job.index, None, f"internal error: {type(exc).__name__}: {exc}"


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _init_worker() -> None:
    """One thread per worker process: the pool, not the BLAS, uses the cores. Torch reads
    OMP_NUM_THREADS when it first loads (in run_point); numpy is already loaded."""
    from threadpoolctl import threadpool_limits

    for var in _THREAD_VARS:
        os.environ[var] = "1"
    threadpool_limits(1)


# ------------------------------------------------------------------------- many points
Done = Callable[[Job, dict[str, Any] | None, str | None], None]


def run_jobs(jobs: Sequence[Job], workers: int, on_done: Done,
             run: Callable[[Job], tuple[int, dict | None, str | None]] = _safe_run) -> None:
    """Run `jobs` (in this process when one worker suffices, else in a spawned pool) and
    call on_done(job, result, error) as each finishes. `run` (a module-level function, so
    that it pickles) maps a job to (index, result, error)."""
    if not jobs:
        return
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            on_done(job, *run(job)[1:])
        return
    by_index = {j.index: j for j in jobs}
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch/tvm threads
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                               initializer=_init_worker)
    try:
        futures = [pool.submit(run, job) for job in jobs]
        for fut in as_completed(futures):
            index, result, error = fut.result()
            on_done(by_index[index], result, error)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def my_share(jobs: Sequence[Job], rank: int, size: int) -> list[Job]:
    """This rank's points: dealt round-robin over the whole grid (not only the unfinished
    ones), so every rank agrees on the deal whatever it finds on disk."""
    return [j for j in jobs if j.index % size == rank]


def sweep(jobs: Sequence[Job], opts: SweepOptions,
          progress: Callable[[Record], None] | None = None) -> list[Record] | None:
    """Run (or reuse) every job; the records in grid order, or None on a torchrun rank
    other than 0 (which only runs its share)."""
    world = _world()
    mine = my_share(jobs, world.rank, world.size) if world else list(jobs)
    records: dict[int, Record] = {}
    todo = []
    for job in mine:
        saved = None if opts.force else load_finished(job)
        if saved is None:
            todo.append(job)
        else:
            records[job.index] = Record(job.index, job.point, saved, reused=True)
            if progress:
                progress(records[job.index])

    def done(job: Job, result: dict | None, error: str | None) -> None:
        records[job.index] = Record(job.index, job.point, result, error)
        if progress:
            progress(records[job.index])

    run_jobs(todo, opts.workers, done)
    if world:
        gathered = _gather(world, records)
        if gathered is None:
            return None
        records = gathered
    return [records[j.index] for j in jobs]


def _world():
    """The torchrun world when there are several processes, else None (nothing touched)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from farc.distributed import eval_world

    return eval_world()


def _gather(world, records: dict[int, Record]) -> dict[int, Record] | None:
    import torch.distributed as dist

    from farc.distributed import teardown

    try:
        parts: list = [None] * world.size
        dist.all_gather_object(parts, {i: asdict(r) for i, r in records.items()})
    finally:
        teardown()
    if not world.is_main:
        return None
    return {i: Record(**r) for part in parts for i, r in part.items()}


def float_accuracy(checkpoint: str | Path, opts: SweepOptions) -> float:
    """The float model's accuracy on the same test images (the plot's reference line)."""
    import torch

    model = _checkpoint(str(Path(checkpoint).resolve())).model
    cfg = getattr(model.cfg, "deit", model.cfg)  # FAR keeps its DeiT shape in cfg.deit
    x, y = _test_images(opts.data, opts.samples, (1, cfg.in_chans, cfg.img_size, cfg.img_size))
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 256]))
                            for i in range(0, len(x), 256)])
    return float((logits.argmax(dim=1).numpy() == y).mean())
