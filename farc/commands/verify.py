"""`farc verify model.farc`: the emulator against the reference built from the checkpoint's
model and against float onnxruntime, on the same inputs, plus exact per-layer integers.

Prints one table of pairwise errors, the accuracies, the per-layer results and the checks;
exits 1 with one line naming the failed checks when a documented tolerance fails
(docs/verify.md)."""

from __future__ import annotations

from pathlib import Path

import click

from farc.check.verify import DEFAULT_BITLEVEL_SAMPLES, Tolerances
from farc.commands._noise_options import device_model_option


def _bitlevel(value: str) -> int | None:
    """--bitlevel-samples: a count >= 1, or None for 'all'."""
    from farc.errors import ConfigError

    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--bitlevel-samples {value!r} must be a whole number >= 1 or 'all'")
    return n


@click.command("verify")
@click.argument("program_path", metavar="MODEL.farc", type=click.Path(dir_okay=False))
@click.option("--samples", type=int, default=256, show_default=True,
              help="Images to run (the first N of the split; 0 = all of it).")
@click.option("--data", default="digits", show_default=True,
              help="'digits' or an ImageNet-style folder.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--inputs-npy", type=click.Path(dir_okay=False), default=None,
              help="Inputs [N, *input shape] as .npy instead of --data (any model).")
@click.option("--labels-npy", type=click.Path(dir_okay=False), default=None,
              help="Integer labels [N] for --inputs-npy (accuracy).")
@click.option("--float-onnx", type=click.Path(dir_okay=False), default=None,
              help="Float golden model (default: MODEL.float.onnx beside the program, else "
                   "exported from the checkpoint named in its provenance).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="The checkpoint, .pt2 or .onnx the program was compiled from (default: "
                   "the one its provenance names); the reference is built from its model.")
@click.option("--bitlevel-samples", default=str(DEFAULT_BITLEVEL_SAMPLES), show_default=True,
              metavar="N|all", help="Images also run on the bit-level path (every ADC "
                                    "conversion) for the exact per-layer check.")
@click.option("--per-layer", is_flag=True,
              help="Print every layer's input and output error against the reference, in "
                   "execution order (the checks always name the first that diverges).")
@click.option("--calib-npy", type=click.Path(dir_okay=False), default=None,
              help="The calibration inputs the program was compiled with (compile's "
                   "--calib-npy; default: the file its provenance names). Its sha256 must "
                   "match the one recorded.")
@click.option("--strict-calibration", is_flag=True,
              help="Fail (exit 1) when the calibration check cannot run (calibration data "
                   "missing or changed), instead of reporting it skipped.")
@click.option("--noise", multiple=True, metavar="KEY=VALUE",
              help="Device non-ideality for the emulator, e.g. read_sigma=0.01 (repeatable). "
                   "Disables the exactness checks.")
@device_model_option
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--min-agreement", type=float, default=Tolerances.min_agreement,
              show_default=True, help="Minimum emulator vs float top-1 agreement (0..1).")
@click.option("--max-rel", type=float, default=Tolerances.exact_rel, show_default=True,
              help="Largest emulator vs reference relative logit error, sum|a-b| / "
                   "sum|b| (checked without noise).")
@click.option("--max-acc-drop", type=float, default=None,
              help="Largest emulator accuracy drop below float, in points (off by default).")
@click.option("--decision-threshold", type=float, default=None, metavar="T",
              help="The outputs are decisions y > T (e.g. 0.5 for a probability per time "
                   "step): --min-agreement then applies to the fraction of output elements "
                   "whose decision agrees, whatever the output's shape. Without it top-1 "
                   "applies to [batch, classes] outputs only; others get per-element error.")
def command(program_path, samples, data, split, inputs_npy, labels_npy, float_onnx, checkpoint,
            bitlevel_samples, per_layer, calib_npy, strict_calibration, noise, device_model,
            seed, batch_size, min_agreement, max_rel, max_acc_drop, decision_threshold) -> None:
    """Check the emulator running MODEL.farc against the reference built from its checkpoint
    (or .pt2/.onnx model) and against float onnxruntime."""
    import tempfile

    from farc.check.verify import VerifyError, resolve_references
    from farc.errors import ConfigError
    from farc.runtime.devices import describe, noise_from_options
    from farc.runtime.program import Program

    if samples < 0 or batch_size < 1 or not 0 <= min_agreement <= 1:
        raise ConfigError("--samples must be >= 0, --batch-size >= 1 and --min-agreement "
                          "in [0, 1]")
    bitlevel = _bitlevel(bitlevel_samples)
    program = Program.load(program_path)
    tol = Tolerances(exact_rel=max_rel, min_agreement=min_agreement, max_acc_drop=max_acc_drop,
                     decision_threshold=decision_threshold)
    noise_cfg = noise_from_options(device_model, noise)
    if program.device is not None and noise_cfg is None:
        click.echo(f"the program's target records a device model ({describe(program.device)}"
                   "): verify checks the compiler on the ideal chip; --device-model or "
                   "--noise checks accuracy under noise", err=True)
    x, y = _npy_inputs(program, inputs_npy, labels_npy, samples) if inputs_npy else \
        _inputs(program, data, split, samples)
    world = _world()
    with tempfile.TemporaryDirectory(prefix="farc-verify-") as tmp:
        refs = resolve_references(program, program_path, float_onnx=float_onnx,
                                  checkpoint=checkpoint, workdir=tmp)
        layer_opts = {"bitlevel_samples": bitlevel, "per_layer": per_layer,
                      "calib_npy": calib_npy, "strict_calibration": strict_calibration}
        if world is None:
            report = _run(program, x, y, refs, noise_cfg, seed, tol, batch_size, layer_opts)
        else:
            report = _run_sharded(world, program, x, y, refs, noise_cfg, seed, tol,
                                  batch_size, layer_opts)
            if report is None:  # not rank 0: rank 0 prints and decides the exit code
                return
    source = f"inputs from {inputs_npy}" if inputs_npy else f"images of {data}/{split}"
    _print(report, Path(program_path).name, source)
    if not report.ok:
        raise VerifyError(f"verify failed: {report.failure_line()}")


def _inputs(program, data: str, split: str, samples: int):
    """The first `samples` images of the split, shaped like the program's input (a model
    of another input shape takes them reshaped when the element count matches, e.g. the
    8x8 digits as [64] or [8, 8])."""
    import math

    from farc.data import load_split
    from farc.errors import DataError

    shape = program.manifest["inputs"][0]["shape"]
    if len(shape) == 4:
        x, y = load_split(data, split, img_size=shape[2], in_chans=shape[1])
    else:
        x, y = load_split(data, split)
        if math.prod(x.shape[1:]) != math.prod(shape[1:]):
            raise DataError(f"program input has shape {shape} and {data} holds "
                            f"{list(x.shape[1:])} images: pass --inputs-npy")
        x = x.reshape(len(x), *shape[1:])
    n = len(x) if samples == 0 else min(samples, len(x))
    return x[:n].numpy().astype("float32"), y[:n].numpy()


def _npy_inputs(program, path: str, labels_path: str | None, samples: int):
    """--inputs-npy (and --labels-npy): arrays read header first, no pickle."""
    import numpy as np

    from farc.errors import DataError
    from farc.npyio import load_arrays
    from farc.runtime.program import to_batch_first, user_shape

    spec = program.manifest["inputs"][0]
    want = user_shape(spec)  # the model's own layout: [T, N, F] for a time-major input
    for p in (path, labels_path):
        if p is not None and not Path(p).is_file():
            raise DataError(f"{p}: no such file")
    x = load_arrays(path, "--inputs-npy")
    if not isinstance(x, np.ndarray) or x.ndim != len(want) or \
            any(w is not None and w != d for w, d in zip(want, x.shape)):
        got = list(x.shape) if isinstance(x, np.ndarray) else "an .npz"
        shown = ", ".join("N" if w is None else str(w) for w in want)
        raise DataError(f"--inputs-npy {path}: expected [{shown}], got {got}")
    x = to_batch_first(x, spec)
    y = None
    if labels_path:
        y = load_arrays(labels_path, "--labels-npy")
        if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer) or \
                y.reshape(-1).shape[0] != len(x):
            raise DataError(f"--labels-npy {labels_path}: expected {len(x)} integer labels")
        y = y.reshape(-1).astype(np.int64)
    n = len(x) if samples == 0 else min(samples, len(x))
    return x[:n].astype(np.float32), None if y is None else y[:n]


def _run(program, x, y, refs, noise, seed, tol, batch_size, layer_opts):
    from farc.check.verify import verify
    from farc.progress import make_progress

    with make_progress() as bar:
        task = bar.add_task("emulator", total=len(x), info="")
        return verify(program, x, y, refs, noise=noise, seed=seed, tol=tol,
                      batch_size=batch_size, progress=lambda n: bar.advance(task, n),
                      **layer_opts)


def _world():
    """The torchrun world when launched with several processes, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from farc.distributed import eval_world

    return eval_world()


def _run_sharded(world, program, x, y, refs, noise, seed, tol, batch_size, layer_opts):
    """One contiguous shard of the inputs per process, outputs gathered once on rank 0.

    Each rank's emulator is built with the same seed, so programming variation and stuck-at
    faults are the same chip on every rank; read noise is a different (equally valid) draw
    than a single-process run's."""
    from farc.check.verify import (
        add_calibration_check,
        add_layer_checks,
        report_for_outputs,
        run_models,
    )
    from farc.distributed import contiguous_shard, gather_arrays, teardown

    part = contiguous_shard(len(x), world)
    try:
        outputs = gather_arrays(run_models(program, x[part], refs, noise=noise, seed=seed,
                                           batch_size=batch_size), world)
    finally:
        teardown()
    if outputs is None:
        return None
    report = report_for_outputs(program, outputs, y, refs, noise=noise, tol=tol)
    calib = {k: layer_opts.pop(k) for k in ("calib_npy", "strict_calibration")}
    add_layer_checks(report, program, x, refs, noise=noise, tol=tol, **layer_opts)
    add_calibration_check(report, program, refs, calib_npy=calib["calib_npy"],
                          strict=calib["strict_calibration"], tol=tol)
    return report


def _print(report, name: str, source: str) -> None:
    from farc.progress import make_table, out_console, print_table

    first = next(iter(report.pairs.values()))
    table = make_table(f"{name}: {report.samples} {source}",
                       ["pair", "max err", "avg err", "rel err", "cosine", "min cos",
                        first.decided_name],
                       [(p.name, f"{p.max_abs:.2g}", f"{p.mean_abs:.2g}", f"{p.rel:.2g}",
                         f"{p.cosine:.4f}", f"{p.min_cosine:.4f}",
                         "-" if p.decided is None else f"{100 * p.decided:.1f}%")
                        for p in report.pairs.values()])
    console = out_console()
    for col in table.columns:  # one line per pair on a terminal; wrapped, never cut, in a file
        col.no_wrap = console.is_terminal
    table.columns[-1].min_width = 6  # "100.0%" must never be cut
    console.print(table)
    if report.accuracy is not None:
        print_table("Accuracy", ["model", "accuracy"],
                    [(k, f"{100 * v:.2f}%") for k, v in report.accuracy.items()])
    if report.divergence is not None and report.show_layers:
        print_table("Per layer, in execution order (emulator vs reference run)",
                    ["layer", "instruction", "input rel err", "output rel err", "integers"],
                    _layer_rows(report))
    status = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]skip[/]"}
    print_table("Checks (docs/verify.md)", ["check", "result", "detail"],
                [(c.name, "[cyan]measured[/]" if c.measured else status[c.passed], c.detail)
                 for c in report.checks])
    for model, src in report.sources.items():
        console.print(f"[dim]{model}: {src}[/]", highlight=False, soft_wrap=True)


def _layer_rows(report) -> list[tuple[str, ...]]:
    ints = {it.layer: it for path in ("fast", "bitlevel") for it in report.layers.get(path, [])
            if not it.ok}
    return [(d.name, d.where, f"{d.x_rel:.2g}", f"{d.y_rel:.2g}",
             "exact" if d.layer not in ints else f"{ints[d.layer].mismatched} differ")
            for d in report.divergence]
