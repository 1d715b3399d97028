"""`farc inspect MODEL.farc [--plot map.png]`: the tiling of every crossbar layer (weight
shape, row x column tiles, crossbars, utilization, slices, signs, replicas) with totals,
the units and crossbars pruning saved (for a pruned model whose provenance records the
unpruned sizes; an unpruned model gets no pruning note),
and optionally a PNG map of crossbar occupancy."""

from __future__ import annotations

import click


@click.command("inspect")
@click.argument("program_path", metavar="MODEL.farc", type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG map of crossbar occupancy here.")
def command(program_path: str, plot_path: str | None) -> None:
    """Show how MODEL.farc is tiled onto crossbars."""
    from farc.atomic import check_outputs
    from farc.progress import out_console
    from farc.report.tiling import occupancy_png, pruning_rows, pruning_table, tiling_table
    from farc.runtime.program import Program

    check_outputs({"--plot": plot_path}, {"MODEL.farc": program_path})  # before any work
    program = Program.load(program_path)
    console = out_console()
    console.print(tiling_table(program))
    rows = pruning_rows(program)
    if rows:
        console.print(pruning_table(rows))
    elif was_pruned(program.manifest):  # an unpruned model gets no pruning note
        console.print("pruning: the provenance does not record unpruned LSTM sizes")
    if plot_path:
        console.print(f"occupancy map: {occupancy_png(program, plot_path)}")


def was_pruned(manifest: dict) -> bool:
    """Whether the program's model came out of `farc prune` (or records pruning)."""
    prov = manifest.get("model", {}).get("provenance") or {}
    return prov.get("command") == "prune" or any("prun" in str(k) for k in prov)
