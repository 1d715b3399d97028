"""`farc run MODEL.farc (--input X.npy | --data digits|DIR) -o OUT.npy`: run a tile program
on the functional ReRAM emulator, in batches, with a progress bar; prints top-1 accuracy
when labels are known. Nothing is written unless every batch succeeded (atomic rename).

`--seeds 0..9` with `--noise` is a Monte-Carlo evaluation: one programmed chip per seed
(each its own draw of the device model), the whole split on each, and the mean, min and max
accuracy over them; under torchrun the seeds (not the images) are split over the processes.
docs/finetune.md."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click
import numpy as np

from farc.commands._noise_options import device_model_option
from farc.errors import DataError


@click.command("run")
@click.argument("program_path", metavar="MODEL.farc", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", type=click.Path(dir_okay=False), default=None,
              help="Inputs as .npy (one-input programs) or .npz (one array per input name).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False), default=None,
              help="Integer labels .npy for --input, to print accuracy.")
@click.option("--data", "data_spec", default=None,
              help="'digits' or an ImageNet-style folder: runs its test split.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True, help="Split of --data.")
@click.option("--noise", multiple=True, metavar="KEY=VALUE",
              help="Device non-ideality, e.g. read_sigma=0.01 (repeatable; see "
                   "docs/emulator.md).")
@device_model_option
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--seeds", "seeds_spec", default=None, metavar="A..B|A,B,...",
              help="Monte-Carlo over device instances: run every seed (with --noise), report "
                   "mean, min and max accuracy; -o gets an .npz of every seed's outputs.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--mvm-path", type=click.Choice(["auto", "bitlevel", "fast"]), default="auto",
              show_default=True, help="Crossbar arithmetic: auto uses one matmul where the "
                                      "ADC is provably lossless.")
@click.option("--counters", "counters_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the run's event counters as JSON.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Write outputs holding NaN or Inf instead of failing (exit 1).")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Outputs: .npy (one-output programs) or .npz.")
def command(program_path, input_path, labels_path, data_spec, split, noise, device_model, seed,
            seeds_spec, batch_size, mvm_path, counters_path, allow_nonfinite, output_path) -> None:
    """Run MODEL.farc on the functional ReRAM emulator."""
    from farc.atomic import check_outputs
    from farc.commands._noise_options import chip_device
    from farc.errors import ConfigError
    from farc.runtime.devices import noise_from_options
    from farc.runtime.emulator import Emulator
    from farc.runtime.program import Program

    if (input_path is None) == (data_spec is None):
        raise ConfigError("give exactly one of --input and --data")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    seeds = parse_seeds(seeds_spec) if seeds_spec is not None else None
    noise_from_options(device_model, noise)  # a bad name or value fails before any work
    check_outputs({"-o": output_path, "--counters": counters_path},  # before emulating
                  {"MODEL.farc": program_path, "--input": input_path, "--labels": labels_path})
    if Path(output_path).suffix not in (".npy", ".npz"):
        raise ConfigError(f"-o {output_path}: outputs are numpy arrays, give a .npy (one "
                          "output) or .npz path")
    program = Program.load(program_path)
    _check_output_kind(program, output_path)
    cfg = chip_device(program, device_model, noise)
    if seeds is not None:
        _check_monte_carlo(cfg, seed, counters_path, output_path)
    inputs, labels = (_read_inputs(program, input_path, labels_path) if input_path
                      else _data_inputs(program, data_spec, split))
    if seeds is not None:
        if labels is None:
            raise ConfigError("--seeds reports accuracy: give --data, or --input with --labels")
        _monte_carlo(program, inputs, labels, cfg, seeds, batch_size, mvm_path,
                     allow_nonfinite, Path(output_path))
        return
    world, inputs = _shard(inputs)
    emu = Emulator(program, noise=cfg, seed=seed, mvm_path=mvm_path)
    outputs, counters = _run_batches(emu, inputs, batch_size), emu.counters.to_dict()
    if world is not None:  # torchrun: gather once on rank 0, which alone writes and prints
        outputs, counters = _gather(world, outputs, counters)
        if outputs is None:
            return
    if not allow_nonfinite:
        _check_finite(outputs)
    _save_all(_model_layout(program, outputs), Path(output_path), counters,
              counters_path and Path(counters_path))
    n = len(next(iter(outputs.values())))
    click.echo(f"ran {n} samples -> {output_path}")
    if labels is not None and len(outputs) == 1:
        acc = _top1(next(iter(outputs.values())), labels)
        click.echo(f"top-1 accuracy: {100 * acc:.2f}% ({n} samples)")


def _model_layout(program, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Batch-first outputs as the model lays them out (a time-major LSTM's Y [T, D, B, H]:
    the output spec's batch_axis; 0 for every program before the field)."""
    from farc.runtime.program import from_batch_first

    specs = {s["name"]: s for s in program.outputs}
    return {k: from_batch_first(v, specs[k]) if k in specs else v for k, v in outputs.items()}


def _check_output_kind(program, output_path: str) -> None:
    """Several outputs go into an .npz archive, one array per output name, and only when the
    user named one: an archive written under `-o y.npy` would not be what the name says
    (np.load gives an NpzFile, not the array), so that is refused before any work."""
    from farc.errors import ConfigError

    names = [s["name"] for s in program.outputs]
    if len(names) > 1 and Path(output_path).suffix != ".npz":
        raise ConfigError(f"-o {output_path}: the program has {len(names)} outputs "
                          f"({', '.join(names)}); give an .npz path to get one array per "
                          "output")


def parse_seeds(spec: str) -> list[int]:
    """'0..9' (inclusive) or '0,3,7' -> seeds, distinct, in the given order."""
    from farc.errors import ConfigError

    text = spec.strip()
    try:
        if ".." in text:
            lo, hi = (int(t) for t in text.split("..", 1))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"bad --seeds {spec!r}: expected A..B or A,B,... of integers") \
            from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"bad --seeds {spec!r}: need at least one seed, distinct, >= 0")
    return seeds


def _check_monte_carlo(noise, seed: int, counters_path, output_path: str) -> None:
    """--seeds needs noise (ideal chips are all alike), writes an .npz, has no single
    --seed and no --counters (events do not depend on the seed: run one seed for them)."""
    from farc.errors import ConfigError

    if not noise:
        raise ConfigError("--seeds draws device instances: give --noise or --device-model "
                          "(ideal chips are all alike)")
    if seed != 0:
        raise ConfigError("give --seed or --seeds, not both")
    if counters_path:
        raise ConfigError("--counters with --seeds: the events do not depend on the seed; "
                          "run one --seed for them")
    if Path(output_path).suffix != ".npz":
        raise ConfigError(f"-o {output_path}: --seeds writes every seed's outputs, give an "
                          ".npz")


def _monte_carlo(program, inputs: dict[str, np.ndarray], labels: np.ndarray, cfg,
                 seeds: list[int], batch_size: int, mvm_path: str, allow_nonfinite: bool,
                 output: Path) -> None:
    """Every seed a chip: run the inputs on each, gather on rank 0 (torchrun: a contiguous
    block of seeds per process), write `<output>_seed<s>` arrays plus `seeds` and
    `accuracy`, print per-seed accuracy and mean / min / max."""
    from farc.runtime.emulator import Emulator

    world, mine = None, seeds
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from farc.distributed import contiguous_shard, eval_world

        world = eval_world()
        if world.size > len(seeds):
            from farc.errors import ConfigError

            raise ConfigError(f"{world.size} processes for {len(seeds)} seeds: use at most "
                              "one process per seed")
        mine = seeds[contiguous_shard(len(seeds), world)]
    runs: dict[str, list[np.ndarray]] = {}
    for s in mine:
        out = _run_batches(Emulator(program, noise=cfg, seed=s, mvm_path=mvm_path), inputs,
                           batch_size)
        for k, v in out.items():
            runs.setdefault(k, []).append(v)
    packed = {k: np.stack(v) for k, v in runs.items()}
    packed["seeds"] = np.asarray(mine, dtype=np.int64)
    if world is not None:
        from farc.distributed import gather_arrays, teardown

        try:
            packed = gather_arrays(packed, world)
        finally:
            teardown()
        if packed is None:
            return
    seeds_run = packed.pop("seeds")
    if not allow_nonfinite:
        _check_finite(packed)
    acc = np.array([_accuracy(packed, i, labels) for i in range(len(seeds_run))])
    arrays = {f"{k}_seed{s}": _model_layout(program, {k: v[i]})[k]
              for k, v in packed.items() for i, s in enumerate(seeds_run)}
    _save_all({**arrays, "seeds": seeds_run, "accuracy": acc}, output, {}, None)
    _print_monte_carlo(seeds_run, acc, len(labels), output)


def _accuracy(packed: dict[str, np.ndarray], i: int, labels: np.ndarray) -> float:
    """Seed i's top-1 accuracy (NaN unless the program has one output)."""
    return _top1(next(iter(packed.values()))[i], labels) if len(packed) == 1 else float("nan")


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits [samples, ...] (one row per sample)."""
    return float((logits.reshape(len(logits), -1).argmax(axis=1) == labels).mean())


def _print_monte_carlo(seeds: np.ndarray, acc: np.ndarray, n: int, output: Path) -> None:
    click.echo(f"ran {n} samples on {len(seeds)} device instances -> {output}")
    for s, a in zip(seeds, acc):
        click.echo(f"  seed {s}: top-1 accuracy {100 * a:.2f}%")
    click.echo(f"top-1 accuracy over {len(seeds)} seeds: mean {100 * acc.mean():.2f}%, "
               f"min {100 * acc.min():.2f}%, max {100 * acc.max():.2f}%, "
               f"std {100 * acc.std():.2f} pt")


def _shard(inputs: dict[str, np.ndarray]):
    """Under torchrun with several processes, this rank's contiguous block of the inputs
    (docs/distributed.md); otherwise (None, inputs) and nothing distributed is touched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, inputs
    from farc.distributed import contiguous_shard, eval_world

    world = eval_world()
    part = contiguous_shard(len(next(iter(inputs.values()))), world)
    return world, {k: v[part] for k, v in inputs.items()}


def _gather(world, outputs: dict[str, np.ndarray], counters: dict):
    from farc.distributed import gather_arrays, sum_counts, teardown

    try:
        return gather_arrays(outputs, world), sum_counts(counters, world)
    finally:
        teardown()


def _check_finite(outputs: dict[str, np.ndarray]) -> None:
    """NaN or Inf logits are a failed run, not a result (an accuracy over them means
    nothing): exit 1, nothing written, unless --allow-nonfinite."""
    from farc.errors import EmulatorError

    for name, v in outputs.items():
        bad = int(v.size - np.isfinite(v).sum())
        if bad:
            raise EmulatorError(f"output {name!r} holds {bad:,} NaN or infinite values of "
                                f"{v.size:,}; nothing written (--allow-nonfinite writes "
                                "them anyway)")


def _read_inputs(program, path: str, labels_path: str | None):
    """--input arrays in the model's own layout (a time-major input [T, B, F]) -> the
    program's batch-first registers; labels as a flat integer array."""
    from farc.npyio import load_arrays
    from farc.runtime.program import to_batch_first

    names = [s["name"] for s in program.inputs]
    if not Path(path).is_file():
        raise DataError(f"{path}: no such input file")
    loaded = load_arrays(path, "--input")  # headers and sizes first, no pickle
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise DataError(f"{path}: the program takes inputs {names}; give an .npz")
        arrays = {names[0]: loaded}
    else:
        arrays = loaded
    labels = None
    if labels_path:
        if not Path(labels_path).is_file():
            raise DataError(f"{labels_path}: no such labels file")
        raw = load_arrays(labels_path, "--labels")
        if not isinstance(raw, np.ndarray) or not np.issubdtype(raw.dtype, np.integer):
            what = "an .npz archive" if not isinstance(raw, np.ndarray) else f"dtype {raw.dtype}"
            raise DataError(f"{labels_path}: labels must be one integer .npy array, got {what}")
        labels = raw.astype(np.int64).reshape(-1)
    _check_arrays(program, arrays, labels, path, user_layout=True)
    specs = {s["name"]: s for s in program.inputs}
    return {k: to_batch_first(v, specs[k]) for k, v in arrays.items()}, labels


def _data_inputs(program, spec: str, split: str):
    from farc.data import load_split  # torch lives there; the runtime never needs it

    names = [s["name"] for s in program.inputs]
    if len(names) != 1:
        raise DataError(f"--data feeds one input; the program takes {names}")
    shape = program.inputs[0]["shape"]
    _check_data_fits(shape, spec)  # before decoding anything
    size = shape[-1] if len(shape) == 4 else None
    chans = shape[1] if len(shape) == 4 else None
    x, y = load_split(spec, split, img_size=size, in_chans=chans)
    if len(shape) != 4 and np.prod(x.shape[1:]) == np.prod(shape[1:]):  # .pt2/.onnx model
        x = x.reshape(len(x), *shape[1:])  # e.g. the 8x8 digits as [64] or [8, 8]
    arrays = {names[0]: x.numpy().astype(np.float32)}
    labels = y.numpy().astype(np.int64)
    _check_arrays(program, arrays, labels, spec)
    return arrays, labels


DIGITS_NUMEL = 64
"""Values of one embedded digits image (1 x 8 x 8): what a non-image program can take."""


def _check_data_fits(shape: list, spec: str) -> None:
    """--data decodes images: a program whose input is not [N, C, H, W] takes them only as
    the embedded 8x8 digits reshaped (the same number of values); anything else is refused
    now, pointing to --input, instead of after decoding a folder."""
    if len(shape) == 4:
        return
    shown = ["N" if d is None else d for d in shape]
    numel = math.prod(d for d in shape[1:] if d is not None) if None not in shape[1:] else None
    if spec != "digits" or numel != DIGITS_NUMEL:
        raise DataError(f"--data {spec}: decodes images, but the program's input is {shown} "
                        "(not [N, C, H, W]); give the samples with --input X.npy (or .npz)")


def _check_arrays(program, arrays: dict[str, np.ndarray], labels, where: str,
                  user_layout: bool = False) -> None:
    """Shape and dtype before any work, so a bad input fails fast with one line; with
    `user_layout`, arrays carry the batch where the model does (the spec's batch_axis)."""
    from farc.runtime.program import batch_axis, user_shape

    specs = {s["name"]: user_shape(s) if user_layout else s["shape"] for s in program.inputs}
    axes = {s["name"]: batch_axis(s) if user_layout else 0 for s in program.inputs}
    if set(arrays) != set(specs):
        raise DataError(f"{where}: arrays {sorted(arrays)} but the program takes "
                        f"{sorted(specs)}")
    sizes = set()
    for name, x in arrays.items():
        want = specs[name]
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{where}: input {name!r} has dtype {x.dtype}, expected float32")
        if x.ndim != len(want) or any(w is not None and w != d for w, d in zip(want, x.shape)):
            shown = ["N" if w is None else w for w in want]
            raise DataError(f"{where}: input {name!r} has shape {list(x.shape)}, the program "
                            f"expects {shown}")
        if x.shape[axes[name]] == 0:
            raise DataError(f"{where}: input {name!r} has no samples")
        if not np.isfinite(x).all():
            raise DataError(f"{where}: input {name!r} holds NaN or infinite values")
        sizes.add(x.shape[axes[name]])
    if len(sizes) != 1:
        raise DataError(f"{where}: inputs have different sample counts {sorted(sizes)}")
    n = sizes.pop()
    if labels is not None and len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} samples")


def _run_batches(emu, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("emulating", total=n)
        for lo in range(0, n, batch_size):
            out = emu.run({k: v[lo:lo + batch_size] for k, v in inputs.items()})
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
            bar.advance(task, min(batch_size, n - lo))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _save_all(outputs: dict[str, np.ndarray], path: Path, counters: dict,
              counters_path: Path | None) -> None:
    """Every file goes to a temp name first, then all are renamed: a failure (a full disk,
    a --counters folder that turned read-only) leaves none of them behind."""
    from farc.atomic import atomic_write_all

    items = [(path, lambda tmp: _write_outputs(outputs, path, tmp))]
    if counters_path is not None:
        text = json.dumps(counters, indent=1)
        items.append((counters_path, lambda tmp: tmp.write_text(text)))
    atomic_write_all(items)


def _write_outputs(outputs: dict[str, np.ndarray], path: Path, tmp: Path) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.save/savez would add a suffix to a name
        if len(outputs) == 1 and path.suffix != ".npz":
            np.save(fh, next(iter(outputs.values())), allow_pickle=False)
        else:
            np.savez(fh, **outputs)
