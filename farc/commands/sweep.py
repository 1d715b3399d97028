"""`farc sweep CKPT --target T --grid adc.bits=4..9 --grid crossbar.cell_bits=1,2,4 -o OUTDIR`:
compile, emulate and cost the checkpoint at every point of the grid of target overrides, in
parallel, resumably (docs/sweep.md).

Writes OUTDIR/points/<point>.json as each point finishes (a rerun skips them; --force redoes
them), then OUTDIR/sweep.csv, sweep.md, sweep.json, pareto.png and sweep.html. Every key and
value is checked (each point's target is built) before any work."""

from __future__ import annotations

import time
from pathlib import Path

import click

from farc.targets.cost import ATTENTION_MODES

OUTPUTS = ("sweep.csv", "sweep.md", "sweep.json", "pareto.png", "sweep.html")


@click.command("sweep")
@click.argument("checkpoint", metavar="CKPT", type=click.Path(dir_okay=False))
@click.option("--target", "target_name", default="isaac", show_default=True,
              help="Shipped target name or a .toml file: the base every point overrides.")
@click.option("--grid", "grid_items", multiple=True, metavar="SECTION.KEY=V1,V2|A..B",
              help="A swept target key and its values, e.g. adc.bits=4..9 or "
                   "crossbar.cell_bits=1,2,4 (repeatable; the grid is their product). Keys "
                   "joined by + move together: quant.weight_bits+quant.input_bits=8:8,16:16.")
@click.option("--set", "fixed_items", multiple=True, metavar="SECTION.KEY=VALUE",
              help="A target key every point shares, e.g. quant.weight_bits=8 (repeatable; "
                   "same syntax as --grid, one value).")
@click.option("--data", default="digits", show_default=True,
              help="'digits' or an ImageNet-style folder: calibration (train split) and "
                   "accuracy (test split).")
@click.option("--samples", type=int, default=None,
              help="Accuracy on the first N test images (default: the whole split).")
@click.option("--calib-samples", type=int, default=64, show_default=True,
              help="Calibration images per compile.")
@click.option("--attention", type=click.Choice(ATTENTION_MODES), default="digital",
              show_default=True, help="How activation x activation matmuls are costed.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Emulator batch size.")
@click.option("--workers", type=int, default=None,
              help="Processes running points at once (default: the CPU count, divided "
                   "among torchrun's ranks).")
@click.option("--force", is_flag=True, help="Redo points already saved in OUTDIR.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(),
              help="Output folder (created).")
def command(checkpoint, target_name, grid_items, fixed_items, data, samples, calib_samples,
            attention, batch_size, workers, force, outdir) -> None:
    """Compile, emulate and cost CKPT over a grid of target overrides."""

    from farc.explore.grid import (
        check_disjoint,
        expand,
        fixed_base,
        parse_grid,
        point_targets,
    )
    from farc.explore.sweep import SweepOptions, plan_jobs
    from farc.targets import load_target

    opts = SweepOptions(data=data, samples=samples, calib_samples=calib_samples,
                        attention=attention, batch_size=batch_size,
                        workers=_default_workers() if workers is None else workers,
                        force=force)
    opts.validate()
    notes: list[str] = []
    base, fixed = fixed_base(fixed_items, load_target(target_name), notes)
    grid = parse_grid(grid_items, base)
    check_disjoint(fixed, grid)
    points = expand(grid)
    targets = point_targets(base, points, notes)  # every point's target, before any work
    out = Path(outdir)
    _check_inputs(checkpoint, target_name, data, out)
    for note in notes:  # after every check: a refusal stays one line
        click.echo(f"farc sweep: {note}", err=True)
    jobs = plan_jobs(checkpoint, points, targets, out, opts)
    _run(checkpoint, grid, fixed, jobs, opts, out, base, time.perf_counter())


def _default_workers() -> int:
    """The CPU count, shared among torchrun's ranks on this node."""
    import os

    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(1, ranks))


def _check_inputs(checkpoint: str, target_name: str, data: str, out: Path) -> None:
    """The checkpoint loads, the data set exists, the outputs can be written and overwrite
    no input: all before any work, nothing written on failure."""
    from farc.atomic import check_outputs
    from farc.data import load_split
    from farc.errors import ConfigError
    from farc.explore.sweep import _checkpoint

    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: is a file, expected a folder")
    _checkpoint(str(Path(checkpoint).resolve()))  # CheckpointError names what is wrong
    load_split(data, "test")  # DataError for a missing or empty folder
    target = target_name if Path(target_name).suffix == ".toml" else None
    check_outputs({f"-o {out}/{name}": out / name for name in (*OUTPUTS, "points/x.json")},
                  {"CKPT": checkpoint, "--target": target})


def _run(checkpoint, grid, fixed, jobs, opts, out: Path, base, start: float) -> None:
    from farc.errors import EmulatorError
    from farc.explore.sweep import float_accuracy, sweep
    from farc.progress import log, make_progress

    (out / "points").mkdir(parents=True, exist_ok=True)
    with make_progress() as bar:
        task = bar.add_task("sweep", total=len(jobs), info="")

        def tick(rec) -> None:
            what = ("reused" if rec.reused else "failed" if rec.error else
                    f"{100 * rec.result['accuracy']:.1f}%")
            bar.update(task, advance=1, info=f"{rec.label}: {what}")
            if bar.disable:  # no terminal: one line per point instead of the bar
                log(f"[{rec.index + 1}/{len(jobs)}] {rec.label}: {rec.error or what}")

        records = sweep(jobs, opts, tick)
    if records is None:  # a torchrun rank other than 0: its points are in rank 0's table
        return
    reference = float_accuracy(checkpoint, opts)
    _write(out, grid, fixed, records, opts, base, checkpoint, reference,
           time.perf_counter() - start)
    failed = [r for r in records if r.error]
    if failed:
        raise EmulatorError(f"{len(failed)} of {len(records)} points failed (see "
                            f"{out / 'sweep.csv'}); first: {failed[0].label}: "
                            f"{failed[0].error}")


def _write(out: Path, grid, fixed, records, opts, base, checkpoint, reference: float,
           seconds: float) -> None:
    from farc.atomic import atomic_write_all
    from farc.explore.grid import grid_keys, point_label
    from farc.progress import log, print_table
    from farc.report.sweep import (
        SweepRow,
        pareto_png,
        sweep_html,
        sweep_section,
        table,
        to_csv,
        to_json,
        to_markdown,
    )

    keys = grid_keys(grid)
    rows = [SweepRow(r.point, r.result, r.error, {"reused": r.reused}) for r in records]
    title = f"farc sweep: {Path(checkpoint).name} on {base.name} ({len(rows)} points)"
    shared = f"; every point: {point_label(fixed)}" if fixed else ""
    reused = sum(r.reused for r in records)
    sub = (f"data {opts.data}, {_samples(records)} test images, float model "
           f"{100 * reference:.2f}%, attention {opts.attention}; this run {seconds:.0f} s, "
           f"{reused} of {len(records)} points reused{shared}")
    png = pareto_png(keys, rows, title, reference, label_keys=[axis[0] for axis in grid])
    meta = {"checkpoint": str(checkpoint), "target": base.name, "fixed": fixed,
            "data": opts.data, "samples": opts.samples, "float_accuracy": reference,
            "seconds": round(seconds, 1)}
    texts = {"sweep.csv": to_csv(keys, rows), "sweep.md": to_markdown(keys, rows),
             "sweep.json": to_json(keys, rows, meta),
             "sweep.html": sweep_html(title, sub, sweep_section(keys, rows, png))}
    items = [(out / name, lambda tmp, t=t: tmp.write_text(t, encoding="utf-8"))
             for name, t in texts.items()]
    items.append((out / "pareto.png", lambda tmp: tmp.write_bytes(png)))
    atomic_write_all(items)
    header, cells = table([axis[0] for axis in grid], rows)  # linked keys: in the files
    print_table(title, header, cells)
    log(f"{len(records) - reused} points run, {reused} reused, {seconds:.1f} s; wrote "
        f"{', '.join(str(out / n) for n in OUTPUTS)}")


def _samples(records) -> str:
    ns = {r.result["samples"] for r in records if r.result}
    return "/".join(str(n) for n in sorted(ns)) or "0"
