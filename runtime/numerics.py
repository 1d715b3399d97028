"""Crossbar numerics of docs/numerics.md: every closed form, written once.

The compiler's passes, the emulator, the validator, the cost model and `farc verify` all
call these functions; none of them restates a formula. (The verification reference in
farc's checking side is the one deliberate exception: it is written from the spec, not from
this module, so that a bug here cannot hide from it.)

What lives here:
- bit widths: `qmax` (Qw, Qx), `in_zero` (the DAC offset z), `weight_slices`,
  `mapping_signs`, `input_cycles`;
- the ADC: `full_scale_pmax`, `adc_step_for`, `adc_steps` (one per row tile), the
  ADC rule `adc`, ISAAC's flip encoding (`flip_mask`, `physical_codes`) and the one
  "is this layer lossless" rule (`lossless`, `layer_lossless`);
- quantization: `input_scale`, `quantize_weights`, `quantize_input`, `bit_planes`;
- how a [K, N] weight sits on crossbars: `XbarParams` (the parameters one layer is packed
  with; a Target produces them once, a program layer records them) and `Geometry` (tile
  counts, columns and rows in use, crossbar count, utilization);
- decoding the integer weights back from codes and column maps (`decode_weights`).

numpy only, like the rest of farc.runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# ---------------------------------------------------------------- bit widths
MAPPINGS = ("differential", "offset")
ADC_RANGES = ("full", "calibrated")
PARAM_LIMITS: dict[str, tuple[int, int, bool]] = {
    "rows": (8, 4096, True), "cols": (8, 4096, True), "cell_bits": (1, 8, False),
    "dac_bits": (1, 8, False), "adc_bits": (1, 16, False), "weight_bits": (2, 16, False),
    "input_bits": (2, 16, False)}
"""(lowest, highest, power of two) of each crossbar parameter; target files and program
layers are checked against the same limits."""


def limit_violation(key: str, value: int) -> str | None:
    """Why `value` is out of PARAM_LIMITS[key] ("must be in 1..8"), or None when it fits."""
    lo, hi, pow2 = PARAM_LIMITS[key]
    if pow2 and not (lo <= value <= hi and value & (value - 1) == 0):
        return f"must be a power of two in {lo}..{hi}"
    return None if lo <= value <= hi else f"must be in {lo}..{hi}"


def max_code(bits: int) -> int:
    """Largest unsigned `bits`-bit code, 2**bits - 1: a cell's top conductance level, the
    largest DAC digit, the ADC's top output code."""
    return 2**bits - 1


def qmax(bits: int) -> int:
    """Largest magnitude of a signed `bits`-bit integer, symmetric: 2**(bits-1) - 1 (Qw, Qx)."""
    return 2 ** (bits - 1) - 1


def in_zero(input_bits: int) -> int:
    """DAC zero point z = 2**(input_bits-1): the offset input u = x_int + z is non-negative."""
    return 2 ** (input_bits - 1)


def weight_slices(weight_bits: int, cell_bits: int, mapping: str) -> int:
    """Cells per weight magnitude: the sign bit is not stored by a differential pair, and
    the offset mapping stores q + Qw, which needs the full width."""
    mag = weight_bits - 1 if mapping == "differential" else weight_bits
    return math.ceil(mag / cell_bits)


def mapping_signs(mapping: str) -> int:
    """Physical columns per weight slice: 2 (G+, G-) for differential, 1 for offset."""
    return 2 if mapping == "differential" else 1


def input_cycles(input_bits: int, dac_bits: int) -> int:
    """DAC cycles per MVM: the offset input u has input_bits bits, dac_bits per cycle."""
    return math.ceil(input_bits / dac_bits)


# ---------------------------------------------------------------- the ADC
def full_scale_pmax(rows: int, dac_bits: int, cell_bits: int, flip: bool = False) -> int:
    """The physical largest partial sum of one column in one cycle,
    rows * (2**dac_bits - 1) * (2**cell_bits - 1). With ISAAC's flip encoding (`flip_mask`)
    no stored column sums above half its levels (rounded down), halving it."""
    levels = rows * max_code(cell_bits)
    return max_code(dac_bits) * (levels // 2 if flip else levels)


def adc_step_for(pmax: float, adc_bits: int) -> int:
    """Smallest power-of-two step with (2**adc_bits - 1) * step >= pmax (1 when pmax <= top)."""
    top = max_code(adc_bits)
    step = 1
    while top * step < pmax:
        step *= 2
    return step


def adc(p: np.ndarray, step: int, adc_bits: int, integral: bool = False,
        no_clip: bool = False, scaled: bool = True) -> np.ndarray:
    """The ADC rule on one row tile's partial sums, in place:
    clip(floor(P/step + 1/2), 0, 2**adc_bits - 1) * step (step a power of two, so the
    scaling is exact). Shortcuts that change no value: `integral` (P holds integers, ideal
    devices) makes step 1 a pure clip; `no_clip` (P provably within [0, top*step]) skips the
    clip; `scaled=False` returns the code (in units of step) for the caller to scale."""
    top = max_code(adc_bits)
    if step == 1 and integral:
        return p if no_clip else np.minimum(p, top, out=p)
    if step != 1:
        p *= 1.0 / step
    p += 0.5
    np.floor(p, out=p)
    if not no_clip:
        np.clip(p, 0, top, out=p)
    if step != 1 and scaled:
        p *= step
    return p


def flip_mask(codes: np.ndarray, used_rows: np.ndarray, cell_bits: int) -> np.ndarray:
    """ISAAC's encoding (Shafiee et al., ISCA 2016, Sec. 5.2): a column of one row tile whose
    levels sum above half of used_rows * (2**cell_bits - 1) is stored complemented, so no
    stored column sums above that half and the ADC needs one bit fewer. codes
    [row_tiles, rows, J] (logical levels) -> bool [row_tiles, J], True where flipped. The
    flag is a function of the logical codes, so programs carry only `adc_flip: true`."""
    top = max_code(cell_bits)
    sums = codes.sum(axis=1, dtype=np.int64)
    return sums > (np.asarray(used_rows).astype(np.int64) * top // 2)[:, None]


def physical_codes(codes: np.ndarray, mask: np.ndarray, used_rows: np.ndarray,
                   cell_bits: int) -> np.ndarray:
    """The levels actually programmed: flipped columns hold 2**cell_bits - 1 - level on the
    used rows (unused rows stay at level 0). codes [row_tiles, rows, J]."""
    out = codes.copy()
    top = max_code(cell_bits)
    for r in range(codes.shape[0]):
        cols = np.flatnonzero(mask[r])
        if cols.size:
            used = int(used_rows[r])
            out[r, :used, cols[:, None]] = (top - codes[r, :used, cols[:, None]]).astype(
                codes.dtype)
    return out


def lossless(steps: Sequence[int] | np.ndarray, stored: np.ndarray, dac_bits: int,
             adc_bits: int) -> bool:
    """The one rule for "the ADC can never change a partial sum": every step is 1 and the
    largest sum one column can reach, (2**dac_bits - 1) * (sum of its *stored* levels),
    fits in 2**adc_bits - 1. `stored` [row_tiles, rows, J] holds the levels the crossbars
    hold (complemented columns included when flip encoding is on)."""
    if not np.all(np.asarray(steps) == 1):
        return False
    peak = int(stored.sum(axis=1, dtype=np.int64).max(initial=0)) * max_code(dac_bits)
    return peak <= max_code(adc_bits)


# ---------------------------------------------------------------- quantization
def input_scale(absmax: float, input_bits: int) -> float:
    """s_x = r / Qx for a calibrated range r, rounded to float32 (the program stores it so);
    1/Qx when the layer never saw a non-zero input."""
    qx = qmax(input_bits)
    return float(np.float32(absmax / qx if absmax > 0 else 1.0 / qx))


def quantize_weights(W: np.ndarray, weight_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-column symmetric quantization: (q int64 [K, N], s_w float32 [N]).
    The rounding divides by the stored float32 scale so q and s_w agree exactly."""
    qw = qmax(weight_bits)
    W = np.asarray(W, dtype=np.float64)
    peak = np.abs(W).max(axis=0)
    s_w = np.where(peak > 0, peak / qw, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / s_w.astype(np.float64)), -qw, qw).astype(np.int64)
    return q, s_w


def quantize_input(x: np.ndarray, in_scale: float, input_bits: int,
                   dtype: type = np.int64) -> np.ndarray:
    """x_int = clip(rint(x / s_x), -Qx, Qx), divided in float32 as ONNX QuantizeLinear does.
    `dtype=np.float32` keeps the integers in float32 (exact: |x_int| < 2**15)."""
    qx = np.float32(qmax(input_bits))
    xi = np.rint(x.astype(np.float32, copy=False) / np.float32(in_scale))
    np.clip(xi, -qx, qx, out=xi)
    return xi if dtype is np.float32 else xi.astype(dtype)


def bit_planes(u: np.ndarray, cycles: int, dac_bits: int) -> np.ndarray:
    """[vectors, K] non-negative ints -> [cycles, vectors, K]: digit c of u in base 2**dac_bits."""
    shifts = (np.arange(cycles, dtype=np.int64) * dac_bits)[:, None, None]
    return (u[None] >> shifts) & max_code(dac_bits)


def digit_counts(input_bits: int, dac_bits: int) -> np.ndarray:
    """Non-zero DAC digits of every offset input u in [0, 2**input_bits): a lookup table."""
    u = np.arange(2**input_bits, dtype=np.int64)
    cycles = input_cycles(input_bits, dac_bits)
    return (bit_planes(u[None], cycles, dac_bits)[:, 0] != 0).sum(axis=0)


def decode_weights(levels: np.ndarray, col_out: np.ndarray, col_slice: np.ndarray,
                   col_sign: np.ndarray, N: int, cell_bits: int, weight_bits: int,
                   mapping: str) -> np.ndarray:
    """Signed integers q [K, N] from logical levels [K, J] and the column maps:
    q[k, n] = sum over the columns j of output n of (+1 | -1 for G-) * 2**(slice*cell_bits)
    * level[k, j], minus Qw for the offset mapping. int64. Every output must own the same
    number of columns (a valid column map: each (output, sign, slice) once)."""
    w = (1 - 2 * col_sign.astype(np.int64)) << (col_slice.astype(np.int64) * cell_bits)
    order = np.argsort(col_out, kind="stable")
    q = (levels.astype(np.int64) * w)[:, order].reshape(levels.shape[0], N, -1).sum(axis=2)
    return q - qmax(weight_bits) if mapping == "offset" else q


# ---------------------------------------------------------------- parameters and geometry
def chip_crossbars(chip: Mapping[str, Any]) -> int:
    """Physical crossbars on a chip: tiles * imas_per_tile * crossbars_per_ima (each an
    int >= 1; ValueError otherwise)."""
    keys = ("tiles", "imas_per_tile", "crossbars_per_ima")
    vals = [chip[k] for k in keys]
    if any(type(v) is not int or v < 1 for v in vals):
        raise ValueError(f"chip {dict(zip(keys, vals))} needs ints >= 1")
    return math.prod(vals)


@dataclass(frozen=True)
class XbarParams:
    """The hardware and quantization facts one layer is packed with. A Target produces them
    once (`Target.xbar`); a program layer records them (`from_layer`)."""

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 8
    adc_range: str = "full"
    weight_bits: int = 8
    input_bits: int = 8
    mapping: str = "differential"
    adc_flip: bool = False

    @property
    def slices(self) -> int:
        return weight_slices(self.weight_bits, self.cell_bits, self.mapping)

    @property
    def signs(self) -> int:
        return mapping_signs(self.mapping)

    @property
    def cycles(self) -> int:
        return input_cycles(self.input_bits, self.dac_bits)

    @property
    def qw(self) -> int:
        return qmax(self.weight_bits)

    @property
    def qx(self) -> int:
        return qmax(self.input_bits)

    @property
    def in_zero(self) -> int:
        return in_zero(self.input_bits)

    @property
    def pmax(self) -> int:
        """The full-scale partial sum of one column in one cycle (flip encoding included)."""
        return full_scale_pmax(self.rows, self.dac_bits, self.cell_bits, self.adc_flip)

    @property
    def full_step(self) -> int:
        """The ADC step of a full-range ADC."""
        return adc_step_for(self.pmax, self.adc_bits)

    @property
    def full_range_lossless(self) -> bool:
        """True when a full-range ADC resolves every possible partial sum exactly."""
        return max_code(self.adc_bits) >= self.pmax

    def geometry(self, K: int, N: int, replicas: int = 1) -> Geometry:
        """How W [K, N] sits on crossbars with these parameters."""
        return Geometry(K, N, self.rows, self.cols, self.slices, self.signs, self.cycles,
                        replicas)

    def adc_steps(self, row_tiles: int, pmax: float | Sequence[float] | None) -> list[int]:
        """One ADC step per row tile: from the physical maximum ('full') or the calibrated
        largest partial sum ('calibrated', `pmax` per layer or per row tile, capped at the
        physical maximum)."""
        if self.adc_range == "full":
            return [self.full_step] * row_tiles
        if pmax is None:
            raise ValueError("a calibrated ADC range needs the calibrated partial-sum maximum")
        per = list(pmax) if isinstance(pmax, Sequence) else [pmax] * row_tiles
        return [adc_step_for(min(float(v), self.pmax), self.adc_bits) for v in per]

    def layer_fields(self) -> dict[str, Any]:
        """The fields a program layer records about its parameters (docs/tile-program.md)."""
        return {"weight_bits": self.weight_bits, "input_bits": self.input_bits,
                "cell_bits": self.cell_bits, "dac_bits": self.dac_bits,
                "adc_bits": self.adc_bits, "mapping": self.mapping, "slices": self.slices,
                "signs": self.signs, "rows": self.rows, "cols": self.cols,
                "in_zero": self.in_zero, "adc_range": self.adc_range,
                "adc_flip": self.adc_flip}

    @classmethod
    def from_target(cls, target: Any) -> XbarParams:
        """From a `farc.targets.Target` (read by attribute, so runtime never imports it);
        the Target itself calls this once (`Target.xbar`)."""
        return cls(rows=target.crossbar.rows, cols=target.crossbar.cols,
                   cell_bits=target.crossbar.cell_bits, dac_bits=target.dac.bits,
                   adc_bits=target.adc.bits, adc_range=target.adc.range,
                   weight_bits=target.quant.weight_bits, input_bits=target.quant.input_bits,
                   mapping=target.quant.mapping, adc_flip=bool(target.adc.flip))

    @classmethod
    def from_target_dict(cls, d: dict[str, Any]) -> XbarParams:
        """From the TOML-shaped target dict stored in a program manifest."""
        return cls(rows=d["crossbar"]["rows"], cols=d["crossbar"]["cols"],
                   cell_bits=d["crossbar"]["cell_bits"], dac_bits=d["dac"]["bits"],
                   adc_bits=d["adc"]["bits"], adc_range=d["adc"]["range"],
                   weight_bits=d["quant"]["weight_bits"], input_bits=d["quant"]["input_bits"],
                   mapping=d["quant"]["mapping"], adc_flip=bool(d["adc"].get("flip", False)))

    @classmethod
    def from_layer(cls, layer: dict[str, Any]) -> XbarParams:
        """The parameters a program layer was packed with (its own recorded fields)."""
        return cls(rows=int(layer["rows"]), cols=int(layer["cols"]),
                   cell_bits=int(layer["cell_bits"]), dac_bits=int(layer["dac_bits"]),
                   adc_bits=int(layer["adc_bits"]), adc_range=str(layer["adc_range"]),
                   weight_bits=int(layer["weight_bits"]),
                   input_bits=int(layer["input_bits"]), mapping=str(layer["mapping"]),
                   adc_flip=bool(layer.get("adc_flip", False)))

    def replace(self, **kw: Any) -> XbarParams:
        return replace(self, **kw)


@dataclass(frozen=True)
class Geometry:
    """How one weight matrix W [K, N] sits on crossbars (dense packing,
    docs/tile-program.md): expanded column j = (n*signs + sign)*slices + s sits in column
    tile j // cols, row k in row tile k // rows."""

    K: int
    """Weight rows (inputs)."""
    N: int
    """Weight columns (outputs)."""
    rows: int
    """Crossbar rows."""
    cols: int
    """Crossbar columns."""
    slices: int
    """Cells per weight magnitude."""
    signs: int
    """Physical columns per slice (2 differential, 1 offset)."""
    cycles: int
    """DAC input cycles per MVM: ceil(input_bits / dac_bits)."""
    replicas: int = 1
    """Copies of the layer; input vectors are split over them."""

    @property
    def phys_cols(self) -> int:
        """Expanded columns J = N * slices * signs."""
        return self.N * self.slices * self.signs

    @property
    def row_tiles(self) -> int:
        return math.ceil(self.K / self.rows)

    @property
    def col_tiles(self) -> int:
        return math.ceil(self.phys_cols / self.cols)

    @property
    def crossbars(self) -> int:
        """Crossbars of one replica: ceil(K/rows) * ceil(N*slices*signs/cols)."""
        return self.row_tiles * self.col_tiles

    @property
    def used_cols(self) -> int:
        """Columns in use in the fullest crossbar."""
        return min(self.cols, self.phys_cols)

    @property
    def rows_in_use(self) -> list[int]:
        """Driven rows of each row tile."""
        return [min(self.rows, self.K - r * self.rows) for r in range(self.row_tiles)]

    @property
    def cols_in_use(self) -> list[int]:
        """Used columns of each column tile."""
        return [min(self.cols, self.phys_cols - c * self.cols) for c in range(self.col_tiles)]

    @property
    def utilization(self) -> float:
        """Fraction of the replica's cells that hold a weight slice."""
        return self.K * self.phys_cols / (self.crossbars * self.rows * self.cols)

    @property
    def cells(self) -> int:
        """Cells programmed to store W: K rows x the expanded columns."""
        return self.K * self.phys_cols

    @staticmethod
    def for_matrix(target: Any, K: int, N: int, replicas: int = 1) -> Geometry:
        """Geometry of W [K, N] on a `farc.targets.Target` (its `xbar` parameters)."""
        return target.xbar.geometry(K, N, replicas)

    @staticmethod
    def from_layer(layer: dict[str, Any]) -> Geometry:
        """Geometry of a crossbar layer of a tile program (its own recorded fields)."""
        return XbarParams.from_layer(layer).geometry(int(layer["K"]), int(layer["N"]),
                                                     int(layer.get("replicas", 1)))


def stored_levels(codes: np.ndarray, K: int, J: int, cell_bits: int,
                  flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Program codes [row_tiles, col_tiles, rows, cols] -> (levels the crossbars hold in
    matmul layout [row_tiles, rows, J], flip mask [row_tiles, J] or None)."""
    rt, ct, rows, cols = codes.shape
    flat = codes.transpose(0, 2, 1, 3).reshape(rt, rows, ct * cols)[:, :, :J]
    if not flip:
        return flat, None
    used = np.minimum(rows, K - np.arange(rt) * rows)
    mask = flip_mask(flat, used, cell_bits)
    return physical_codes(flat, mask, used, cell_bits), mask


def layer_lossless(layer: dict[str, Any], codes: np.ndarray) -> bool:
    """`lossless` for a program layer and its codes array (flip encoding applied)."""
    p = XbarParams.from_layer(layer)
    J = int(layer["N"]) * p.slices * p.signs
    stored, _ = stored_levels(codes, int(layer["K"]), J, p.cell_bits, p.adc_flip)
    return lossless(layer["adc_step"], stored, p.dac_bits, p.adc_bits)
