"""`farc inspect`: how a tile program's layers sit on crossbars.

`tiling_rows` gives one row per crossbar layer (weight shape, tiles, crossbars, utilization,
slices, signs, replicas); `pruning_rows` compares the LSTM cells and head projections of a
pruned FAR with its unpruned sizes when the program's provenance records them: the
`units_kept` rows `farc prune` writes ({block, head, direction, before, after}), or
`unpruned_hidden` = hidden[block][head] = [fwd, bwd] (the shape of FARConfig.hidden);
`occupancy_png` draws the physical crossbars, one row per tile."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from farc.targets import Target
from farc.targets.dataflow import manifest_of, numel, walk
from farc.targets.mvm import Geometry

PROVENANCE_KEYS = ("unpruned_hidden", "hidden_before")


def program_target(manifest: dict[str, Any]) -> Target:
    """The target a program was compiled for (its stored TOML-shaped dict)."""
    return Target.from_dict(manifest["target"], source="program target")


def layer_inputs(program: Any) -> dict[int, dict[str, Any]]:
    """Per layer id, from the static walk of one image: `vectors`, the input vectors its
    MVMs read per image (a convolution's output positions, an LSTM's steps, a linear
    layer's tokens), and for a convolution `rows`, how its K crossbar rows unroll:
    [C_in, *kernel] (the `im2col` that feeds it)."""
    out: dict[int, dict[str, Any]] = {}
    gathers: dict[str, list[int]] = {}
    for step in walk(program):
        op = step.instr["op"]
        if op == "im2col":
            gathers[step.instr["out"]] = [step.in_shapes[0][1], *step.instr["kernel"]]
        elif op == "mvm":
            info = out.setdefault(int(step.instr["layer"]), {"vectors": 0})
            info["vectors"] += numel(step.in_shapes[0][:-1]) * step.trips
            if step.instr["in"][0] in gathers:
                info["rows"] = gathers[step.instr["in"][0]]
    return out


def tiling_rows(program: Any) -> list[dict[str, Any]]:
    """One dict per crossbar layer, plus a final 'total' row."""
    rows, capacity = [], 0
    inputs = layer_inputs(program)
    for lay in manifest_of(program)["layers"]:
        g = Geometry.from_layer(lay)
        capacity += g.rows * g.cols * g.all_crossbars
        use = inputs.get(int(lay["id"]), {})
        rows.append({"layer": lay["name"], "kind": lay["kind"], "K": g.K, "N": g.N,
                     "unrolled": use.get("rows"), "vectors": use.get("vectors", 0),
                     "row_tiles": g.row_tiles, "col_tiles": g.col_tiles,
                     "crossbars": g.all_crossbars, "utilization": g.utilization,
                     "slices": g.slices, "signs": g.signs, "replicas": g.replicas,
                     "cells": g.K * g.phys_cols * g.replicas})
    total_xb = sum(r["crossbars"] for r in rows)
    cells = sum(r["cells"] for r in rows)
    rows.append({"layer": "total", "kind": "", "K": None, "N": None, "unrolled": None,
                 "vectors": sum(r["vectors"] for r in rows), "row_tiles": None,
                 "col_tiles": None, "crossbars": total_xb,
                 "utilization": cells / capacity if capacity else 0.0, "slices": None,
                 "signs": None, "replicas": None, "cells": cells})
    return rows


def tiling_table(program: Any) -> Table:
    m = manifest_of(program)
    t = program_target(m)
    table = Table(title=f"{m['model'].get('name', 'program')} on {t.name}: "
                        f"{t.crossbar.rows}x{t.crossbar.cols} crossbars, "
                        f"{t.crossbars:,} on chip")
    for col in ("layer", "kind", "W [K x N]", "tiles (r x c)", "MVMs/image", "crossbars",
                "utilization", "slices", "signs", "replicas"):
        # layer names fold rather than being cut with an ellipsis in narrow terminals
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right",
                         overflow="fold" if col == "layer" else "ellipsis")
    for r in tiling_rows(m):
        shape = f"{r['K']} x {r['N']}" if r["K"] is not None else ""
        if r["unrolled"]:  # a convolution: K = C_in x kernel
            shape = f"{'x'.join(map(str, r['unrolled']))}={shape}"
        tiles = f"{r['row_tiles']} x {r['col_tiles']}" if r["row_tiles"] is not None else ""
        table.add_row(r["layer"], r["kind"], shape, tiles, f"{r['vectors']:,}",
                      f"{r['crossbars']:,}",
                      f"{r['utilization']:.1%}", _opt(r["slices"]), _opt(r["signs"]),
                      _opt(r["replicas"]), style="bold" if r["layer"] == "total" else None)
    return table


def _opt(v: Any) -> str:
    return "" if v is None else str(v)


# ---------------------------------------------------------------- pruning
def unpruned_hidden(manifest: dict[str, Any]) -> list | None:
    """hidden[block][head] = [fwd, bwd] before pruning, from the provenance, else None."""
    prov = manifest.get("model", {}).get("provenance", {}) or {}
    for key in PROVENANCE_KEYS:
        if key in prov:
            return prov[key]
    rows = prov.get("units_kept")
    if not rows:
        return None
    blocks = 1 + max(int(r["block"]) for r in rows)
    heads = 1 + max(int(r["head"]) for r in rows)
    hidden = [[[0, 0] for _ in range(heads)] for _ in range(blocks)]
    for r in rows:
        hidden[int(r["block"])][int(r["head"])][0 if r["direction"] == "fwd" else 1] = \
            int(r["before"])
    return hidden


def pruning_rows(program: Any) -> list[dict[str, Any]]:
    """Per block: LSTM units and crossbars (LSTM cells + head_proj) before and after pruning.
    Empty when the provenance does not record the unpruned sizes."""
    m = manifest_of(program)
    before = unpruned_hidden(m)
    config = m.get("model", {}).get("config", {}) or {}
    if before is None or "hidden" not in config:
        return []
    t = program_target(m)
    deit = config.get("deit", {})
    d = int(deit.get("embed_dim", 0)) // max(1, int(deit.get("num_heads", 1)))
    rows = []
    for b, (blk0, blk1) in enumerate(zip(before, config["hidden"])):
        u0 = sum(f + k for f, k in blk0)
        u1 = sum(f + k for f, k in blk1)
        x0, x1 = _block_crossbars(t, d, blk0), _block_crossbars(t, d, blk1)
        rows.append({"block": b, "units_before": u0, "units_after": u1,
                     "units_saved": u0 - u1, "crossbars_before": x0, "crossbars_after": x1,
                     "crossbars_saved": x0 - x1})
    return rows


def _block_crossbars(t: Target, d: int, heads: list) -> int:
    n = 0
    for f, b in heads:
        for h in (f, b):
            if h:
                n += Geometry.for_matrix(t, d + h, 4 * h).crossbars
        n += Geometry.for_matrix(t, f + b, d).crossbars
    return n


def pruning_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="units saved by pruning (LSTM cells + head_proj)")
    for col in ("block", "units before", "units after", "units saved", "crossbars before",
                "crossbars after", "crossbars saved"):
        table.add_column(col, justify="right")
    keys = ("units_before", "units_after", "units_saved", "crossbars_before",
            "crossbars_after", "crossbars_saved")
    for r in rows:
        table.add_row(str(r["block"]), *(str(r[k]) for k in keys))
    table.add_row("total", *(str(sum(r[k] for r in rows)) for k in keys), style="bold")
    return table


# ---------------------------------------------------------------- occupancy map
def crossbar_occupancy(program: Any) -> dict[int, tuple[int, float]]:
    """Physical crossbar id -> (layer index, fraction of its cells holding weight slices)."""
    out: dict[int, tuple[int, float]] = {}
    for i, lay in enumerate(manifest_of(program)["layers"]):
        g = Geometry.from_layer(lay)
        for ids in lay.get("crossbars", []):
            for k, xb in enumerate(ids):
                r, c = divmod(k, g.col_tiles)
                used_r = min(g.rows, g.K - r * g.rows)
                used_c = min(g.cols, g.phys_cols - c * g.cols)
                out[int(xb)] = (i, used_r * used_c / (g.rows * g.cols))
    return out


def occupancy_png(program: Any, path: str) -> str:
    """A PNG: used crossbars laid out one tile per row, coloured by utilization, with the
    layer index of each crossbar as a second panel. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    m = manifest_of(program)
    t = program_target(m)
    occ = crossbar_occupancy(m)
    per_tile = t.chip.imas_per_tile * t.chip.crossbars_per_ima
    n = max(occ, default=-1) + 1
    tiles = max(1, math.ceil(n / per_tile))
    util = np.full(tiles * per_tile, np.nan)
    layer = np.full(tiles * per_tile, np.nan)
    for xb, (li, u) in occ.items():
        util[xb], layer[xb] = u, li
    fig, axes = plt.subplots(1, 2, figsize=(12, max(2.5, 0.25 * tiles + 1.5)), squeeze=False)
    shape = (tiles, per_tile)
    im = axes[0][0].imshow(util.reshape(shape), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                           interpolation="nearest")
    fig.colorbar(im, ax=axes[0][0], label="cells used")
    axes[0][0].set_title("crossbar utilization")
    im2 = axes[0][1].imshow(layer.reshape(shape), aspect="auto", cmap="tab20",
                            interpolation="nearest")
    fig.colorbar(im2, ax=axes[0][1], label="layer index")
    axes[0][1].set_title("layer on each crossbar")
    for ax in axes[0]:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"crossbar within tile ({t.chip.imas_per_tile} IMAs x "
                      f"{t.chip.crossbars_per_ima})")
        ax.set_ylabel("tile")
    fig.suptitle(f"{m['model'].get('name', 'program')} on {t.name}: {len(occ):,} of "
                 f"{t.crossbars:,} crossbars used ({tiles} of {t.chip.tiles} tiles)")
    fig.tight_layout()
    from pathlib import Path

    from farc.atomic import atomic_write

    try:  # always PNG, whatever the suffix; written to a temp name, then renamed
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path
