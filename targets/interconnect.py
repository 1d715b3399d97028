"""Bytes between tiles on the target's network: where each layer sits (its crossbars are
packed tile by tile in the order the scheduler numbered them) and how many hops an MVM's
input travels from the tile that produced it, on the topology of `[interconnect]`.

- mesh: routers on a square grid (row-major, k = ceil(sqrt(routers on the chip))), each
  shared by `tiles_per_router` consecutive tiles; a transfer between two tiles of one
  router costs 1 hop (the router), between routers the Manhattan distance + 1.
- bus: one shared bus, any transfer between two tiles is 1 hop (and the bus is one link).
A transfer inside a tile costs 0 hops (no network).

A register's home is the tile of the MVM that produced it; a digital op's output stays on
the tile of its first input (the digital units are on every tile); program inputs and
constants start on tile 0 (the I/O tile). Loop gathers keep their source's home and
scatters their body register's."""

from __future__ import annotations

import math

from farc.runtime.numerics import Geometry
from farc.targets.target import Target


def crossbars_per_tile(t: Target) -> int:
    return t.chip.imas_per_tile * t.chip.crossbars_per_ima


def tile_of(t: Target, crossbar: int) -> int:
    """Tile holding physical crossbar `crossbar` (ids packed tile by tile)."""
    return crossbar // crossbars_per_tile(t)


def hops(t: Target, a: int, b: int) -> int:
    """Network hops from tile a to tile b."""
    if a == b:
        return 0
    ic = t.interconnect
    if ic.topology == "bus":
        return 1
    ra, rb = a // ic.tiles_per_router, b // ic.tiles_per_router
    k = math.ceil(math.sqrt(math.ceil(t.chip.tiles / ic.tiles_per_router)))
    return abs(ra // k - rb // k) + abs(ra % k - rb % k) + 1


def layer_tiles(manifest: dict, t: Target) -> dict[int, int]:
    """Layer id -> tile of its first crossbar (replica 0); layers without placed crossbars
    are packed in id order."""
    out, nxt = {}, 0
    for lay in sorted(manifest["layers"], key=lambda x: int(x["id"])):
        placed = lay.get("crossbars")
        if placed and placed[0]:
            out[int(lay["id"])] = tile_of(t, int(placed[0][0]))
        else:
            out[int(lay["id"])] = tile_of(t, nxt)
            nxt += Geometry.from_layer(lay).all_crossbars
    return out


def input_hops(manifest: dict, t: Target) -> dict[tuple, int]:
    """Instruction path -> hops its input travels, for every `mvm` (paths as in
    farc.runtime.walk: (i,) at top level, (loop, j) in a loop body)."""
    tiles = layer_tiles(manifest, t)
    home: dict[str, int] = {}
    out: dict[tuple, int] = {}

    def visit(instrs: list[dict], path: tuple) -> None:
        for i, ins in enumerate(instrs):
            p = (*path, i)
            op = ins["op"]
            if op == "loop":
                for g in ins["gather"]:
                    home[g["dst"]] = home.get(g["src"], 0)
                visit(ins["body"], p)
                for s in ins["scatter"]:
                    home[s["dst"]] = home.get(s["src"], 0)
            elif op == "mvm":
                dst = tiles.get(int(ins["layer"]), 0)
                out[p] = hops(t, home.get(ins["in"][0], 0), dst)
                home[ins["out"]] = dst
            elif "out" in ins:
                ins_in = ins.get("in", [])
                home[ins["out"]] = home.get(ins_in[0], 0) if ins_in else 0

    visit(manifest["instructions"], ())
    return out


def transfer_ns(t: Target, n_hops: int, nbytes: float) -> float:
    """Latency of moving `nbytes` over `n_hops`: per-hop router latency plus the
    serialisation of the bytes on one link (wormhole: paid once)."""
    if n_hops == 0:
        return 0.0
    return n_hops * t.interconnect.hop_ns + nbytes / t.interconnect.link_bytes_per_ns


def network_capacity_bytes_per_ns(t: Target, tiles_used: int) -> float:
    """Bytes x hops per ns the network the program occupies can carry: every port of every
    router of its tiles at full rate (mesh), or the one bus."""
    ic = t.interconnect
    if ic.topology == "bus":
        return ic.link_bytes_per_ns
    routers = max(1, math.ceil(tiles_used / ic.tiles_per_router))
    return routers * ic.router_ports * ic.link_bytes_per_ns


def crossbars_used(manifest: dict) -> int:
    """Physical crossbars the program's layers occupy: the placed ids when the scheduler
    placed them, else every layer's crossbars times its replicas."""
    return sum(len(r) for lay in manifest["layers"] for r in lay.get("crossbars", [])) or \
        sum(Geometry.from_layer(lay).all_crossbars
            for lay in manifest["layers"])


def tiles_used(t: Target, crossbars: int) -> int:
    """Tiles `crossbars` crossbars occupy, packed tile by tile (at least one)."""
    return max(1, math.ceil(crossbars / crossbars_per_tile(t)))
