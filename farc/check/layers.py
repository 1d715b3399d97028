"""Per-layer checks of `farc verify`: exact integers on the emulator's own inputs, and where
the emulator's run first parts from the reference's.

1. Integers. The emulator runs a sample with tracing on (every crossbar MVM's input x, its
   integer accumulators y_int before the rescale, its output y). The reference's layers,
   exported side by side as one ONNX model (farc.check.reference.LayerBank) and run by
   onnxruntime, compute y_int from the same x. Both must be bit-identical, layer by layer:
   the packing, slicing, column maps, flip encoding, ADC and shift-add of each layer are
   checked exactly, on the fast path and on the bit-level path, whatever the ADC.
2. Divergence. The reference model runs on the same images with every crossbar call handing
   on the emulator's output (so its digital steps start from the emulator's values), and
   each reference layer recomputes its output from the emulator's input; in execution
   order, the first layer whose input or output differs from the emulator's by more than
   float rounding is where a fault enters (a dropped bias, a loop run in the wrong
   direction, heads concatenated out of order: faults that leave each layer's own integers
   right). Resynchronising at every layer keeps ulp-level differences between numpy and
   torch kernels from growing through a lossy ADC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIVERGENCE_TOL = 1e-3
"""A layer input or output diverges when sum |emulator - reference| / sum |reference|
exceeds this: float32 kernels an ulp apart stay orders of magnitude below it, a fault that
touches the values does not."""


@dataclass(frozen=True)
class LayerIntegers:
    """The exact check of one layer on one MVM path."""

    name: str
    layer: int
    where: str
    """The program instruction of the layer's first MVM ("12", or "15.3" inside loop 15)."""
    vectors: int
    mismatched: int
    """Integers (of vectors x N) that differ from the reference's."""
    max_diff: float

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


@dataclass(frozen=True)
class LayerDivergence:
    """How far the emulator's crossbar calls of one layer are from the reference run's."""

    name: str
    layer: int
    where: str
    x_rel: float
    y_rel: float

    @property
    def diverged(self) -> bool:
        return self.x_rel > DIVERGENCE_TOL or self.y_rel > DIVERGENCE_TOL


def instruction_of(program: Any) -> dict[int, str]:
    """Layer id -> the index path of its first `mvm` instruction."""
    found: dict[int, str] = {}

    def visit(block: list, prefix: str) -> None:
        for i, ins in enumerate(block):
            if ins["op"] == "loop":
                visit(ins["body"], f"{prefix}{i}.")
            elif ins["op"] == "mvm":
                found.setdefault(int(ins["layer"]), f"{prefix}{i}")

    visit(program.manifest["instructions"], "")
    return found


def traced_run(program: Any, x: np.ndarray, mvm_path: str) -> dict[int, list]:
    """Run the emulator on x with tracing; layer id -> its MvmTraces (execution order)."""
    from farc.runtime.emulator import Emulator

    emu = Emulator(program, mvm_path=mvm_path, trace=True)
    emu.run({program.manifest["inputs"][0]["name"]: np.asarray(x, np.float32)})
    return emu.traces or {}


class LayerBankRunner:
    """The reference's layers in onnxruntime (exported once into `workdir`)."""

    def __init__(self, ref: Any, workdir: str | Path) -> None:
        from farc.check.reference import export_layer_bank
        from farc.check.verify import ort_session

        path = Path(workdir) / "reference-layers.onnx"
        self.names = export_layer_bank(ref, path)
        self.session = ort_session(path)

    def run(self, xs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {f"x.{n}": np.ascontiguousarray(xs[n], np.float32) for n in self.names}
        outs = self.session.run(None, feeds)
        return dict(zip(self.names, outs))


CHUNK_VECTORS = 1024
"""Input vectors per layer the reference's layers take at once in the per-layer checks:
their bit-level ADC path holds every (row tile, input cycle, column) partial sum, about
175 KB a vector on a 24-row LSTM cell, so a long sequence (8 samples x 1000 steps) run at
once took 1.4 GB; in chunks the memory no longer grows with the sequence length."""


BANK_MEMORY_SHARE = 0.25
"""Share of the memory budget (`--max-memory`) one chunk of the per-layer checks may take."""
BANK_BYTES_PER_SUM = 24
"""Bytes the reference's bit-level ADC path holds per (row tile, input cycle, column)
partial sum of a vector: float64 sums, codes and their shift-add at once (measured: 175 KB a
vector for a 1 x 16 x 512 LSTM cell, 21 bytes a sum)."""


def chunk_vectors(program: Any) -> int:
    """Vectors per chunk of the per-layer checks: CHUNK_VECTORS, fewer when the largest
    layer's partial sums would pass BANK_MEMORY_SHARE of the memory budget (a VGG-8
    convolution of 36 row tiles, 15 cycles and 8,192 columns holds 106 MB a vector: 1,024
    at once took 15 GB)."""
    from farc.limits import max_memory
    from farc.runtime.numerics import Geometry

    shapes = [Geometry.from_layer(L) for L in program.layers]
    per_vector = max((g.row_tiles * g.cycles * g.phys_cols * BANK_BYTES_PER_SUM
                      for g in shapes), default=1)
    return int(max(1, min(CHUNK_VECTORS, max_memory() * BANK_MEMORY_SHARE // per_vector)))


def integer_checks(program: Any, bank: LayerBankRunner, traces: dict[int, list],
                   ) -> list[LayerIntegers]:
    """Every traced layer's integers against the reference's, in execution order (the
    vectors in chunks of `chunk_vectors` per layer: rows are independent)."""
    names = [L["name"] for L in program.layers]
    where = instruction_of(program)
    xs = {names[i]: np.concatenate([t.x for t in tr]) for i, tr in traces.items()}
    for i, L in enumerate(program.layers):  # a layer the sample never reached: no vectors
        xs.setdefault(names[i], np.zeros((0, int(L["K"])), np.float32))
    most = max((len(v) for v in xs.values()), default=0)
    parts: dict[str, list[np.ndarray]] = {}
    step = chunk_vectors(program)
    for lo in range(0, max(most, 1), step):
        # a layer with no vectors left in this chunk (a classifier beside a convolution's
        # thousands of positions) gets one zero vector, its result dropped: onnxruntime
        # cannot broadcast the empty batch through the bit-level ADC path
        chunk = {n: v[lo:lo + step] for n, v in xs.items()}
        feeds = {n: c if len(c) or lo == 0 else np.zeros((1, c.shape[1]), np.float32)
                 for n, c in chunk.items()}
        for name, y in bank.run(feeds).items():
            parts.setdefault(name, []).append(y[:len(chunk[name])])
    ref = {name: np.concatenate(ys) for name, ys in parts.items()}
    out = []
    for i, tr in traces.items():
        mine = np.concatenate([t.y_int for t in tr])
        theirs = ref[names[i]]
        diff = np.abs(mine - theirs) if mine.shape == theirs.shape else np.full(1, np.inf)
        out.append(LayerIntegers(names[i], i, where.get(i, "?"), len(mine),
                                 int((diff != 0).sum()), float(diff.max(initial=0.0))))
    return out


def divergences(program: Any, ref: Any, x: np.ndarray, traces: dict[int, list],
                ) -> list[LayerDivergence]:
    """Each traced layer, in execution order: its input as the reference's digital steps
    compute it from the emulator's own upstream crossbar outputs (forced run), and its
    output as the reference's layer computes it from the emulator's input; both against
    the emulator's. Float differences cannot accumulate (each layer starts from the
    emulator's values), so a lossy ADC does not amplify ulps into false alarms."""
    import torch

    names = [L["name"] for L in program.layers]
    ref.recorder.forced = {names[i]: [t.y for t in tr] for i, tr in traces.items()}
    try:
        with torch.no_grad():
            ref(torch.from_numpy(np.asarray(x, np.float32)))
        calls = list(ref.calls)
    finally:
        ref.recorder.forced = None
    inputs: dict[str, list] = {}
    for name, xi, _ in calls:
        inputs.setdefault(name, []).append(xi.reshape(-1, xi.shape[-1]).numpy())
    where = instruction_of(program)
    out = []
    for i, tr in traces.items():
        name = names[i]
        mine_x = np.concatenate([t.x for t in tr])
        with torch.no_grad():  # in chunks of vectors (independent rows): bounded memory
            y_ref = np.concatenate([
                ref.layers[name](torch.from_numpy(mine_x[lo:lo + CHUNK_VECTORS]))[0].numpy()
                for lo in range(0, max(len(mine_x), 1), CHUNK_VECTORS)]) \
                if name in ref.layers else None
        out.append(LayerDivergence(
            name, i, where.get(i, "?"), _rel(mine_x, inputs.get(name, [])),
            _rel(np.concatenate([t.y for t in tr]), [] if y_ref is None else [y_ref])))
    return out


def _rel(mine: np.ndarray, theirs: list[np.ndarray]) -> float:
    if not theirs:
        return float("inf")
    ref = np.concatenate(theirs).astype(np.float64)
    if ref.shape != mine.shape:
        return float("inf")
    err = float(np.abs(mine.astype(np.float64) - ref).sum())
    scale = float(np.abs(ref).sum())
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def first(items: Iterator[Any] | list[Any], bad: Any) -> Any | None:
    """The first item for which bad(item) holds, or None."""
    return next((it for it in items if bad(it)), None)
