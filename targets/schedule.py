"""The sequence schedule of the cost model: single-image latency (the critical path,
timeline.py), steady-state throughput with several images in flight, and which replicas
earn their crossbars.

Resources and what one image occupies of them (ns):
- each crossbar layer: its MVM time per image over its replicas. A replica of a linear layer
  takes some of one image's tokens (cuts latency and raises throughput); a replica of an
  LSTM cell serves another image (the steps of one image are a recurrence: step t+1 needs
  step t's h and c, so one image never uses two replicas of a cell); both divide the
  layer's occupancy;
- the digital vector units, the buffers and the digital matmul units: their busy time
  spread over the tiles the program occupies (one set per tile);
- each attention matmul costed as crossbar rewrites: its own crossbars, write + stream;
- the network: bytes x hops over the capacity of the routers of the occupied tiles (mesh)
  or of the one bus.
With images streaming in, a new image can enter every `interval` = the largest occupancy
(the bottleneck); throughput = 1 / interval; images in flight = ceil(latency / interval).
Energy per image is the same as for one image alone (dynamic energy only).

The dependency structure it rests on (a sequence accelerator's options, checked against
the program): heads and directions of a FAR block run in parallel (one loop, lockstep);
a bidirectional block's backward direction needs the whole sequence, and the block's output
for token 0 needs the backward direction's last step, so FAR blocks cannot be pipelined
token by token: the next block starts after the previous one's last step (the critical
path already says so). Several images in flight is what overlaps them.

`plan_replicas` is the one replication rule: the compiler's ScheduleCrossbar places what it
says and the report explains it with the same function."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReplicaPlan:
    replicas: dict[Any, int]
    """layer -> replicas (>= 1)."""
    added: int
    """Crossbars the replicas take."""
    reason: str
    """Why no further replica was given (or why none was)."""


def layer_load(vectors: int, calls: int, cycles: int, pipeline_cycles: int) -> int:
    """Crossbar cycles one image keeps a layer busy: `vectors` input vectors of `cycles`
    DAC cycles each, plus the pipeline fill of each of its `calls` MVM instructions (one per
    step for an LSTM cell, one in all for a linear layer over the tokens)."""
    return vectors * cycles + calls * pipeline_cycles


def plan_replicas(tiles: dict[Any, int], loads: dict[Any, float], spare: int,
                  names: dict[Any, str] | None = None,
                  caps: dict[Any, int] | None = None) -> ReplicaPlan:
    """Give spare crossbars only where they raise the crossbar-bound throughput: always one
    more replica to the layer with the largest load per replica per image (the bottleneck;
    `layer_load`), stopping when that layer's next replica does not fit (a replica elsewhere
    would not raise throughput) or when it already has `caps` replicas (one per input vector
    of an image). Replicas that leave the final bottleneck unchanged (ties) are given back."""
    names = names or {g: str(g) for g in tiles}
    caps = caps or {g: math.inf for g in tiles}
    replicas = dict.fromkeys(tiles, 1)
    heap = [(-loads[g], i, g) for i, g in enumerate(tiles)]
    heapq.heapify(heap)
    added, reason = 0, "no crossbar layers"
    while heap:
        _, i, g = heap[0]
        if replicas[g] >= caps[g]:
            reason = (f"bottleneck {names[g]} has one replica per vector ({caps[g]} per "
                      "image): more would not raise throughput")
            break
        if tiles[g] > spare - added:
            reason = (f"bottleneck {names[g]} needs {tiles[g]:,} more crossbars for its next "
                      f"replica, {spare - added:,} spare: a replica elsewhere would not "
                      "raise throughput")
            break
        heapq.heappop(heap)
        replicas[g] += 1
        added += tiles[g]
        heapq.heappush(heap, (-loads[g] / replicas[g], i, g))
    if replicas and heap:
        # ties: keep for each layer only the replicas needed to stay at the bottleneck
        worst = max(loads[g] / replicas[g] for g in tiles)
        for g in tiles:
            need = max(1, math.ceil(loads[g] / worst - 1e-9))
            if need < replicas[g]:
                added -= (replicas[g] - need) * tiles[g]
                replicas[g] = need
    return ReplicaPlan(replicas, added, reason)


@dataclass
class Throughput:
    """Steady state with images streaming in."""

    interval_ns: float
    """Time between images at the bottleneck."""
    bottleneck: str
    """The resource with the largest occupancy per image."""
    in_flight: int
    """Images in the pipeline at once: ceil(latency / interval)."""
    occupancy_ns: dict[str, float] = field(default_factory=dict)
    """resource -> busy ns per image."""

    @property
    def images_per_s(self) -> float:
        return 1e9 / self.interval_ns if self.interval_ns > 0 else math.inf


def steady_state(latency_ns: float, occupancy_ns: dict[str, float]) -> Throughput:
    """The bottleneck of `occupancy_ns` and what it allows."""
    if not occupancy_ns:
        return Throughput(latency_ns, "none", 1, {})
    name, worst = max(occupancy_ns.items(), key=lambda kv: kv[1])
    worst = max(worst, 1e-9)
    return Throughput(worst, name, max(1, math.ceil(latency_ns / worst)), dict(occupancy_ns))


@dataclass(frozen=True)
class ReplicaVerdict:
    layer: str
    replicas: int
    crossbars: int
    """Crossbars the extra replicas take."""
    cuts_latency: bool
    """One image's vectors are split over the replicas (a linear layer's tokens)."""
    raises_throughput: bool
    """Without them this layer would limit throughput below the current bottleneck."""

    @property
    def verdict(self) -> str:
        if self.cuts_latency and self.raises_throughput:
            return "cuts latency and raises throughput"
        if self.cuts_latency:
            return "cuts latency"
        if self.raises_throughput:
            return "raises throughput"
        return "neither: not the bottleneck, and one image uses one replica"


def replica_verdicts(layers: list[dict], per_vector_parallel: dict[str, bool],
                     occupancy_ns: dict[str, float], interval_ns: float,
                     tiles: dict[str, int]) -> list[ReplicaVerdict]:
    """For each replicated layer: do its replicas cut one image's latency (its vectors are
    split), and would the layer, unreplicated, limit throughput?"""
    out = []
    for lay in layers:
        r = int(lay.get("replicas", 1))
        if r <= 1:
            continue
        name = str(lay["name"])
        occ = occupancy_ns.get(f"crossbars {name}", 0.0)
        out.append(ReplicaVerdict(name, r, (r - 1) * tiles.get(name, 0),
                                  per_vector_parallel.get(name, False),
                                  occ * r > interval_ns * (1 + 1e-9)))
    return out
