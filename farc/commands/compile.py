"""`farc compile CKPT --target T -o model.farc`: compile a checkpoint into a tile program.

Bit widths, mapping and ADC range override the target file's values for this compile
(the program records the target it was actually built for). `--emit-onnx` writes
MODEL.float.onnx (the float golden model) and MODEL.qdq.onnx (the same quantization as the
program, the emulator's exact reference) beside the program, where `farc verify` finds them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from farc.commands._target_options import overridden_target, target_override_options


@click.command("compile")
@click.argument("checkpoint", metavar="CKPT|MODEL.pt2|MODEL.onnx",
                type=click.Path(dir_okay=False))
@click.option("--target", "target_name", default="isaac", show_default=True,
              help="Shipped target name or a .toml file.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Program path (default: CKPT with suffix .farc).")
@target_override_options
@click.option("--calib-samples", type=int, default=64, show_default=True,
              help="Calibration images (the first N of the training split).")
@click.option("--data", default="digits", show_default=True,
              help="Calibration data: 'digits' or an ImageNet-style folder.")
@click.option("--calib-npy", type=click.Path(dir_okay=False), default=None,
              help="Calibration inputs [N, *input shape] as .npy (overrides --data).")
@click.option("--replicate/--no-replicate", default=False, show_default=True,
              help="Replicate the throughput bottleneck into spare crossbars while that raises "
                   "throughput; `farc report` says what each replica buys.")
@click.option("--emit-onnx", is_flag=True, help="Also write MODEL.float.onnx and MODEL.qdq.onnx.")
@click.option("--dump-dir", type=click.Path(file_okay=False), default=None,
              help="Write the IR after every stage here (numbered files).")
def command(checkpoint, target_name, output, calib_samples, data, calib_npy, replicate,
            emit_onnx, dump_dir, **overrides) -> None:
    """Compile a DeiT or FAR checkpoint, a torch.export program (.pt2) or an ONNX file into
    a crossbar tile program (.farc)."""
    from farc.models.refusal import check_model_file

    check_model_file(checkpoint)  # .onnx/.pt2: every unsupported op, before torch or onnx
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.errors import ConfigError
    from farc.models.checkpoint import load_checkpoint
    from farc.models.graph import is_user_model_file, load_user_model

    if calib_samples < 1:
        raise ConfigError(f"--calib-samples must be >= 1, got {calib_samples}")
    target = overridden_target(target_name, overrides)
    out = Path(output) if output else Path(checkpoint).with_suffix(".farc")
    _check_outputs(out, emit_onnx, checkpoint, target_name)  # before any work
    if is_user_model_file(checkpoint):  # every op checked here, before any work
        model = load_user_model(checkpoint)
        ckpt = model
    else:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.model
    calib = _calib_npy(calib_npy) if calib_npy else None
    opts = CompileOptions(calib_samples=calib_samples, data=data, replicate=replicate,
                          calib_images=calib,
                          calib_source=str(Path(calib_npy).resolve()) if calib_npy else None,
                          dump_dir=Path(dump_dir) if dump_dir else None,
                          checkpoint_path=str(Path(checkpoint).resolve()),
                          validate=False)  # save() validates before writing
    program = compile_checkpoint(ckpt, target, opts)
    program.save(out)
    written = [out]
    if emit_onnx:
        written += _emit_onnx(model, program, out)
    _summary(program, target, opts.timings, written)


def _calib_npy(path: str):
    """--calib-npy: one float array [N, *input shape], read header first, no pickle."""
    import numpy as np
    import torch

    from farc.errors import DataError
    from farc.npyio import load_arrays

    if not Path(path).is_file():
        raise DataError(f"--calib-npy {path}: no such file")
    x = load_arrays(path, "--calib-npy")
    if not isinstance(x, np.ndarray) or x.ndim < 2 or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"--calib-npy {path}: expected one float array [N, ...]")
    if not np.all(np.isfinite(x)):
        raise DataError(f"--calib-npy {path}: holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def _check_outputs(out: Path, emit_onnx: bool, checkpoint: str, target_name: str) -> None:
    """The program (and with --emit-onnx its reference models) must not overwrite the
    checkpoint or a target file, nor each other, and must be writable."""
    from farc.atomic import check_outputs

    outputs: dict[str, Path | None] = {"-o": out}
    if emit_onnx:
        from farc.check.qdq import reference_paths

        outputs.update(zip(("--emit-onnx (float)", "--emit-onnx (qdq)"), reference_paths(out)))
    target = target_name if Path(target_name).suffix == ".toml" else None
    check_outputs(outputs, {"CKPT": checkpoint, "--target": target})


def _emit_onnx(model, program, out: Path) -> list[Path]:
    from farc.check.qdq import write_reference_models

    if hasattr(model, "export_onnx"):  # a .pt2/.onnx model (farc.models.graph.GraphModel)
        from farc.check.qdq import build_qdq_onnx, reference_paths, save_onnx

        float_path, qdq_path = reference_paths(out)
        qdq = build_qdq_onnx(program)  # first: a program it cannot translate leaves no files
        model.export_onnx(float_path)
        save_onnx(qdq, qdq_path)
        return [float_path, qdq_path]
    return list(write_reference_models(program, model, out))


def op_counts(instructions: list[dict]) -> Counter:
    """Instructions by opcode, loop bodies included (counted once, not per step)."""
    c: Counter = Counter()
    for ins in instructions:
        c[ins["op"]] += 1
        if ins["op"] == "loop":
            c.update(op_counts(ins["body"]))
    return c


def _summary(program, target, timings: dict, written: list[Path]) -> None:
    from rich.table import Table

    from farc.progress import out_console

    sched = program.manifest["schedule"]
    used, avail = sched["crossbars_used"], sched["crossbars_available"]
    kinds = Counter(L["kind"] for L in program.layers)
    ops = op_counts(program.instructions)
    table = Table(title=f"{program.manifest['model']['name']} on {target.name}",
                  show_header=False, box=None)
    table.add_row("crossbars", f"{used:,} used / {avail:,} available "
                               f"({100 * used / max(avail, 1):.1f}% utilization)")
    table.add_row("layers", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    table.add_row("compile", f"{sum(timings.values()):.2f} s")
    table.add_row("wrote", ", ".join(str(p) for p in written))
    out_console().print(table)
