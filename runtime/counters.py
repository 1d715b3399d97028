"""Event counters: what the cost model multiplies by per-event latency and energy.

One counting rule (`record`) maps an executed instruction and its register shapes to events,
by the opcode's event kind in the opcode table (isa.OPS). The emulator calls it with the
shapes it sees at run time; `static_counts` and the cost model (farc.targets.events) call it
on the steps of the one static walk (walk.py), so all three agree by construction and a test
keeps the shape rules honest. The only data-dependent count, `dac_pulses` (non-zero DAC digits),
is filled by the emulator and left None by `static_counts`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from farc.errors import ProgramError

from .isa import MATMUL_KIND, OPS, Shape
from .numerics import Geometry
from .walk import manifest_of, walk

BYTES_PER_ELEMENT = 4  # registers are float32
DATA_DEPENDENT = ("dac_pulses",)


@dataclass
class Counters:
    """Events of one or more runs. Keys of the per-layer / per-crossbar maps are ids."""

    mvms_per_layer: dict[int, int] = field(default_factory=dict)
    """Input vectors applied to each crossbar layer."""
    mvms_per_crossbar: dict[int, int] = field(default_factory=dict)
    """MVMs (one vector, all its input cycles) run by each physical crossbar."""
    dac_cycles: int = 0
    """Crossbar input cycles: crossbar MVMs x ceil(input_bits / dac_bits)."""
    dac_conversions: int = 0
    """Row drives: crossbar MVMs x cycles x rows in use."""
    dac_pulses: int | None = 0
    """Row drives with a non-zero digit (data dependent; None when counted statically)."""
    adc_conversions: int = 0
    """ADC conversions: crossbar MVMs x cycles x columns in use."""
    digital_ops: dict[str, int] = field(default_factory=dict)
    """Digital work by kind, in elements (matmul: multiply-accumulates; mvm side work:
    quantize = inputs quantized, shift_add = ADC outputs accumulated, rescale = outputs)."""
    bytes_moved: int = 0
    """Bytes read and written between registers (float32 elements x 4)."""
    instructions: int = 0
    """Instructions executed (loop bodies count once per step)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mvms_per_layer"] = {str(k): v for k, v in sorted(self.mvms_per_layer.items())}
        d["mvms_per_crossbar"] = {str(k): v for k, v in sorted(self.mvms_per_crossbar.items())}
        d["digital_ops"] = dict(sorted(self.digital_ops.items()))
        return d

    def static_part(self) -> dict[str, Any]:
        """to_dict() without the data-dependent counts (what static_counts can know)."""
        return {k: v for k, v in self.to_dict().items() if k not in DATA_DEPENDENT}

    def add(self, other: Counters, times: int = 1) -> None:
        """Accumulate `times` copies of another set of counts (a loop body's)."""
        for k, v in other.mvms_per_layer.items():
            self.mvms_per_layer[k] = self.mvms_per_layer.get(k, 0) + v * times
        for k, v in other.mvms_per_crossbar.items():
            self.mvms_per_crossbar[k] = self.mvms_per_crossbar.get(k, 0) + v * times
        for k, v in other.digital_ops.items():
            self.bump(k, v * times)
        for name in ("dac_cycles", "dac_conversions", "adc_conversions", "bytes_moved",
                     "instructions"):
            setattr(self, name, getattr(self, name) + getattr(other, name) * times)
        if self.dac_pulses is not None and other.dac_pulses is not None:
            self.dac_pulses += other.dac_pulses * times
        else:
            self.dac_pulses = None

    def bump(self, kind: str, n: int) -> None:
        self.digital_ops[kind] = self.digital_ops.get(kind, 0) + int(n)


def record(c: Counters, ins: dict[str, Any], in_shapes: Sequence[Shape],
           out_shape: Shape | None, geom: Geometry | None = None,
           crossbars: list[list[int]] | None = None) -> None:
    """The one event rule: count one executed (non-loop) instruction from its register
    shapes, by its opcode's event kind (isa.OPS). An `mvm` needs its layer's geometry and
    physical crossbar ids (one list per replica, see `record_mvm`)."""
    op = ins["op"]
    spec = OPS[op]
    c.instructions += 1
    out_n = math.prod(out_shape) if out_shape is not None else 0
    read = sum(math.prod(s) for s in in_shapes) if spec.reads_data else 0
    c.bytes_moved += BYTES_PER_ELEMENT * (read + out_n)
    if spec.event == "digital":
        c.bump(op, out_n)
    elif spec.event == "digital_in":
        c.bump(op, math.prod(in_shapes[0]))
    elif spec.event == "digital_window":
        c.bump(op, out_n * math.prod(ins["kernel"]))
    elif spec.event == "matmul":
        c.bump(MATMUL_KIND, out_n * in_shapes[0][-1])
    elif spec.event == "mvm":
        record_mvm(c, ins["layer"], math.prod(in_shapes[0][:-1]), geom, crossbars)


def record_mvm(c: Counters, layer: int, vectors: int, g: Geometry,
               crossbars: list[list[int]] | None = None) -> None:
    """`vectors` MVMs on a layer placed as `g`: every crossbar of one replica per vector,
    each of its input cycles driving the rows in use (K per column tile) and converting the
    columns in use (N * slices * signs per row tile). The replicas (physical ids
    `crossbars`, one list per replica; None = not placed) share the vectors round-robin."""
    c.mvms_per_layer[layer] = c.mvms_per_layer.get(layer, 0) + vectors
    reps = crossbars or [[]]
    for r, ids in enumerate(reps):
        share = vectors // len(reps) + (1 if r < vectors % len(reps) else 0)
        for xb in ids:
            c.mvms_per_crossbar[xb] = c.mvms_per_crossbar.get(xb, 0) + share
    c.dac_cycles += vectors * g.crossbars * g.cycles
    c.dac_conversions += vectors * g.K * g.col_tiles * g.cycles
    adc = vectors * g.row_tiles * g.phys_cols * g.cycles
    c.adc_conversions += adc
    c.bump("quantize", vectors * g.K)
    c.bump("shift_add", adc)
    c.bump("rescale", vectors * g.N)


def record_move(c: Counters, shape: Shape) -> None:
    """A loop gather or scatter of one step's slice: read once, written once."""
    c.bytes_moved += 2 * BYTES_PER_ELEMENT * math.prod(shape)


def record_loop(c: Counters, io_elements: int, T: int) -> None:
    """A loop's own events: the instruction, and T steps of gathers and scatters moving
    `io_elements` elements each (the body's instructions count themselves)."""
    c.instructions += 1
    c.bytes_moved += 2 * BYTES_PER_ELEMENT * io_elements * T


# ---------------------------------------------------------------- static counting
def static_counts(program: Any, batch: int,
                  input_shapes: dict[str, tuple[int, ...]] | None = None) -> Counters:
    """Counts of one run on `batch` samples, from the program alone (no arithmetic): the
    static walk (walk.py) with the event rule applied to every step, trips times.

    `input_shapes` gives full shapes (batch included) for inputs whose spec has unknown
    (null) dimensions beyond the batch."""
    m = manifest_of(program)
    geoms = [Geometry.from_layer(L) for L in m["layers"]]
    c = Counters()
    c.dac_pulses = None
    try:
        steps = list(walk(m, batch, input_shapes))
    except ProgramError as exc:
        raise ProgramError(f"static_counts: {exc}") from None
    for s in steps:
        one = Counters()
        if s.instr["op"] == "loop":
            record_loop(one, s.loop_io, s.count)
        else:
            layer = s.instr.get("layer")
            record(one, s.instr, s.in_shapes, s.out_shape,
                   None if layer is None else geoms[layer],
                   None if layer is None else m["layers"][layer].get("crossbars"))
        c.add(one, times=s.trips)
    return c
