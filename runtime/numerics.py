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
# Largest integer magnitude below which float32 arithmetic on integers is exact.
F32_EXACT = 2**24
MAPPINGS = ("differential", "offset")
ADC_RANGES = ("full", "calibrated")
ADC_GRANULARITIES = ("tile", "slice")
"""One ADC range per (layer, row tile), or per (layer, row tile, weight slice)."""
ADC_STATISTICS = ("max", "percentile")
"""What a calibrated range is set from: the largest partial sum, or a percentile of them."""
STEP_RULES = ("pow2", "uniform")
"""ADC step: a power of two (shift-only rescale), or any multiple of 1/STEP_DENOM >= 1."""
STEP_DENOM = 256
"""A uniform step is a multiple of 1/256: every ADC output and every sum of them stays a
dyadic rational, exact in float64, so emulator and reference agree bit for bit."""
INPUT_ENCODINGS = ("offset", "sign_magnitude")
"""How a signed input reaches the rows: u = x + z on the DAC (zero point removed
digitally), or |x| in two phases (rows with positive inputs, then rows with negative
inputs; the second phase's sums are subtracted)."""
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


def in_zero(input_bits: int, encoding: str = "offset") -> int:
    """DAC zero point z = 2**(input_bits-1): the offset input u = x_int + z is non-negative.
    0 for sign-magnitude inputs, which need none."""
    return 0 if encoding == "sign_magnitude" else 2 ** (input_bits - 1)


def weight_slices(weight_bits: int, cell_bits: int, mapping: str) -> int:
    """Cells per weight magnitude: the sign bit is not stored by a differential pair, and
    the offset mapping stores q + Qw, which needs the full width."""
    mag = weight_bits - 1 if mapping == "differential" else weight_bits
    return math.ceil(mag / cell_bits)


def mapping_signs(mapping: str) -> int:
    """Physical columns per weight slice: 2 (G+, G-) for differential, 1 for offset."""
    return 2 if mapping == "differential" else 1


def input_cycles(input_bits: int, dac_bits: int, encoding: str = "offset") -> int:
    """DAC cycles per MVM: the offset input u has input_bits bits, dac_bits per cycle; a
    sign-magnitude input has input_bits - 1 magnitude bits, applied in two phases."""
    if encoding == "sign_magnitude":
        return 2 * math.ceil((input_bits - 1) / dac_bits)
    return math.ceil(input_bits / dac_bits)


def input_planes(x_int: np.ndarray, input_bits: int, dac_bits: int,
                 encoding: str = "offset") -> np.ndarray:
    """The DAC digits of signed integers x_int [V, K]: [cycles, V, K] non-negative ints.
    offset: digits of u = x + z, LSB first; sign_magnitude: digits of max(x, 0), then of
    max(-x, 0) (the second phase)."""
    x = np.asarray(x_int).astype(np.int64)
    if encoding == "sign_magnitude":
        per = math.ceil((input_bits - 1) / dac_bits)
        return np.concatenate([bit_planes(np.maximum(x, 0), per, dac_bits),
                               bit_planes(np.maximum(-x, 0), per, dac_bits)])
    return bit_planes(x + in_zero(input_bits, encoding), input_cycles(input_bits, dac_bits),
                      dac_bits)


def plane_weights(input_bits: int, dac_bits: int, encoding: str = "offset") -> np.ndarray:
    """Shift-add weight of each input plane of `input_planes`: 2**(c*dac_bits), negated for
    the negative phase of sign-magnitude. float64 [cycles]."""
    if encoding == "sign_magnitude":
        per = math.ceil((input_bits - 1) / dac_bits)
        w = 2.0 ** (np.arange(per) * dac_bits)
        return np.concatenate([w, -w])
    return 2.0 ** (np.arange(input_cycles(input_bits, dac_bits)) * dac_bits)


# ---------------------------------------------------------------- the ADC
def full_scale_pmax(rows: int, dac_bits: int, cell_bits: int, flip: bool = False) -> int:
    """The physical largest partial sum of one column in one cycle,
    rows * (2**dac_bits - 1) * (2**cell_bits - 1). With ISAAC's flip encoding (`flip_mask`)
    no stored column sums above half its levels (rounded down), halving it."""
    levels = rows * max_code(cell_bits)
    return max_code(dac_bits) * (levels // 2 if flip else levels)


def adc_step_for(pmax: float, adc_bits: int, rule: str = "pow2") -> float:
    """The step that makes (2**adc_bits - 1) * step cover pmax. pow2: the smallest power of
    two (an int); uniform: the smallest multiple of 1/STEP_DENOM (a float). Never below 1:
    the partial sums are integers, a finer step resolves nothing more."""
    top = max_code(adc_bits)
    if rule == "uniform":
        return max(1.0, math.ceil(pmax / top * STEP_DENOM) / STEP_DENOM)
    step = 1
    while top * step < pmax:
        step *= 2
    return step


def valid_step(step: Any, rule: str) -> bool:
    """A step the rule can produce: pow2, an int power of two >= 1; uniform, a multiple of
    1/STEP_DENOM >= 1."""
    if isinstance(step, bool) or not isinstance(step, int | float) or not step >= 1:
        return False
    if rule == "uniform":
        return float(step) * STEP_DENOM == math.floor(float(step) * STEP_DENOM)
    return isinstance(step, int) and step & (step - 1) == 0


def adc(p: np.ndarray, step: int | np.ndarray, adc_bits: int, integral: bool = False,
        no_clip: bool = False, scaled: bool = True) -> np.ndarray:
    """The ADC rule on one row tile's partial sums, in place when it can be:
    clip(floor(P/step + 1/2), 0, 2**adc_bits - 1) * step. A power-of-two `step` scales
    exactly by its reciprocal; a `step` array (one per column: per-slice or uniform steps)
    divides in float64, as the spec's P/step does. Shortcuts that change no value:
    `integral` (P holds integers, ideal devices) makes step 1 a pure clip; `no_clip` (P
    provably within [0, top*step]) skips the clip; `scaled=False` returns the code (in units
    of step) for the caller to scale (scalar steps only)."""
    if isinstance(step, np.ndarray):
        code = np.floor(p.astype(np.float64) / step + 0.5)
        np.clip(code, 0, max_code(adc_bits), out=code)
        return code * step
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
    if not np.all(np.asarray(steps, dtype=np.float64) == 1):  # per row tile or per slice
        return False
    return int(column_peaks(stored, dac_bits).max(initial=0)) <= max_code(adc_bits)


def column_peaks(stored: np.ndarray, dac_bits: int) -> np.ndarray:
    """The largest partial sum each column of each row tile can reach on any input,
    (2**dac_bits - 1) * (sum of its stored levels): int64 [row_tiles, J]. A column whose
    peak is at most (2**adc_bits - 1) * step never clips (the rule `lossless` applies to
    the whole layer with step 1)."""
    return stored.sum(axis=1, dtype=np.int64) * max_code(dac_bits)


def adc_error(residue: np.ndarray, step: int) -> np.ndarray:
    """ADC(P) - P for a partial sum that cannot clip (0 <= P <= top * step) under a
    power-of-two `step`, from r = P mod step alone: the ADC rounds P/step half up, so
    ADC(P) = P - r + step * [2r >= step]. This is what lets the emulator form only the
    residues (a few low bits of digits and levels) instead of every partial sum. Integer
    array in, same dtype out."""
    return np.where(2 * residue >= step, step - residue, -residue)


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


def clip_rate(p: np.ndarray, step: float, adc_bits: int) -> float:
    """Fraction of partial sums p that a range of (2**adc_bits - 1) * step clips."""
    return float((np.asarray(p) / step + 0.5 >= max_code(adc_bits) + 1).mean()) if np.size(p) \
        else 0.0


def range_of(p: np.ndarray, statistic: str, percentile: float) -> float:
    """The partial-sum range a calibrated ADC covers: the largest p, or its percentile."""
    if not np.size(p):
        return 0.0
    return float(np.max(p) if statistic == "max" else np.percentile(p, percentile))


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


def drive(x_int: np.ndarray, input_bits: int, encoding: str = "offset") -> np.ndarray:
    """The value whose digits a signed input puts on its row: u = x + z (offset) or |x|
    (sign-magnitude: one phase drives it, the other sees 0). Same dtype as x_int."""
    if encoding == "sign_magnitude":
        return np.abs(x_int)
    return x_int + in_zero(input_bits, encoding)


def digit_counts(input_bits: int, dac_bits: int, encoding: str = "offset") -> np.ndarray:
    """Non-zero DAC digits of every drive value (`drive`): a lookup table indexed by it."""
    if encoding == "sign_magnitude":
        values = np.arange(2 ** (input_bits - 1), dtype=np.int64)
    else:
        values = np.arange(2**input_bits, dtype=np.int64) - in_zero(input_bits)
    return (input_planes(values[None], input_bits, dac_bits, encoding)[:, 0] != 0).sum(axis=0)


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
    input_encoding: str = "offset"
    adc_granularity: str = "tile"
    adc_step_rule: str = "pow2"
    adc_statistic: str = "max"
    adc_percentile: float = 99.99

    @property
    def slices(self) -> int:
        return weight_slices(self.weight_bits, self.cell_bits, self.mapping)

    @property
    def signs(self) -> int:
        return mapping_signs(self.mapping)

    @property
    def cycles(self) -> int:
        return input_cycles(self.input_bits, self.dac_bits, self.input_encoding)

    @property
    def qw(self) -> int:
        return qmax(self.weight_bits)

    @property
    def qx(self) -> int:
        return qmax(self.input_bits)

    @property
    def in_zero(self) -> int:
        return in_zero(self.input_bits, self.input_encoding)

    @property
    def pmax(self) -> int:
        """The full-scale partial sum of one column in one cycle (flip encoding included)."""
        return full_scale_pmax(self.rows, self.dac_bits, self.cell_bits, self.adc_flip)

    @property
    def full_step(self) -> float:
        """The ADC step of a full-range ADC."""
        return adc_step_for(self.pmax, self.adc_bits, self.adc_step_rule)

    @property
    def full_range_lossless(self) -> bool:
        """True when a full-range ADC resolves every possible partial sum exactly."""
        return max_code(self.adc_bits) >= self.pmax

    def geometry(self, K: int, N: int, replicas: int = 1) -> Geometry:
        """How W [K, N] sits on crossbars with these parameters."""
        return Geometry(K, N, self.rows, self.cols, self.slices, self.signs, self.cycles,
                        replicas)

    def adc_steps(self, row_tiles: int, pmax: Any) -> list:
        """The ADC steps of a layer: one per row tile (granularity 'tile') or a list of one
        per weight slice for each row tile ('slice'). From the physical maximum ('full') or
        the calibrated range ('calibrated': `pmax` one value per row tile, or per row tile a
        list per slice; capped at the physical maximum)."""
        if self.adc_range == "full":
            one = self.full_step
            return [[one] * self.slices if self.adc_granularity == "slice" else one
                    for _ in range(row_tiles)]
        if pmax is None:
            raise ValueError("a calibrated ADC range needs the calibrated partial-sum maximum")
        per = list(pmax) if isinstance(pmax, Sequence) else [pmax] * row_tiles
        if self.adc_granularity == "slice":  # a value per row tile serves all its slices
            per = [r if isinstance(r, Sequence) else [r] * self.slices for r in per]
        return [[self.step_for(v) for v in r] if isinstance(r, Sequence) else self.step_for(r)
                for r in per]

    def step_for(self, pmax: float) -> float:
        """The ADC step for a calibrated range pmax, capped at the physical maximum."""
        return adc_step_for(min(float(pmax), self.pmax), self.adc_bits, self.adc_step_rule)

    def layer_fields(self) -> dict[str, Any]:
        """The fields a program layer records about its parameters (docs/tile-program.md)."""
        return {"weight_bits": self.weight_bits, "input_bits": self.input_bits,
                "cell_bits": self.cell_bits, "dac_bits": self.dac_bits,
                "adc_bits": self.adc_bits, "mapping": self.mapping, "slices": self.slices,
                "signs": self.signs, "rows": self.rows, "cols": self.cols,
                "in_zero": self.in_zero, "adc_range": self.adc_range,
                "adc_flip": self.adc_flip, "input_encoding": self.input_encoding,
                "adc_granularity": self.adc_granularity, "adc_step_rule": self.adc_step_rule}

    @classmethod
    def from_target(cls, target: Any) -> XbarParams:
        """From a `farc.targets.Target` (through its TOML-shaped dict, so runtime never
        imports it); the Target itself calls this once (`Target.xbar`)."""
        return cls.from_target_dict(target.to_dict())

    @classmethod
    def from_target_dict(cls, d: dict[str, Any]) -> XbarParams:
        """From the TOML-shaped target dict stored in a program manifest."""
        return cls(rows=d["crossbar"]["rows"], cols=d["crossbar"]["cols"],
                   cell_bits=d["crossbar"]["cell_bits"], dac_bits=d["dac"]["bits"],
                   adc_bits=d["adc"]["bits"], adc_range=d["adc"]["range"],
                   weight_bits=d["quant"]["weight_bits"], input_bits=d["quant"]["input_bits"],
                   mapping=d["quant"]["mapping"], adc_flip=bool(d["adc"].get("flip", False)),
                   input_encoding=d["quant"].get("input_encoding", "offset"),
                   adc_granularity=d["adc"].get("granularity", "tile"),
                   adc_step_rule=d["adc"].get("step_rule", "pow2"),
                   adc_statistic=d["adc"].get("statistic", "max"),
                   adc_percentile=float(d["adc"].get("percentile", 99.99)))

    @classmethod
    def from_layer(cls, layer: dict[str, Any]) -> XbarParams:
        """The parameters a program layer was packed with (its own recorded fields)."""
        return cls(rows=int(layer["rows"]), cols=int(layer["cols"]),
                   cell_bits=int(layer["cell_bits"]), dac_bits=int(layer["dac_bits"]),
                   adc_bits=int(layer["adc_bits"]), adc_range=str(layer["adc_range"]),
                   weight_bits=int(layer["weight_bits"]),
                   input_bits=int(layer["input_bits"]), mapping=str(layer["mapping"]),
                   adc_flip=bool(layer.get("adc_flip", False)),
                   input_encoding=str(layer.get("input_encoding", "offset")),
                   adc_granularity=str(layer.get("adc_granularity", "tile")),
                   adc_step_rule=str(layer.get("adc_step_rule", "pow2")))

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


def adc_ranges(codes: np.ndarray, col_slice: np.ndarray, K: int, x_int: np.ndarray,
               p: XbarParams) -> tuple[list, float]:
    """The ranges a calibrated ADC covers, from calibration inputs x_int [V, K] replayed on
    the stored levels of `codes`: per row tile (or per row tile a list per weight slice),
    the largest partial sum or the `adc_percentile` of them; and the fraction of those
    partial sums the resulting steps clip (0 with 'max')."""
    rt = codes.shape[0]
    padded = np.zeros((len(x_int), rt * p.rows), dtype=np.int64)
    padded[:, :K] = x_int
    dtype = np.float32 if full_scale_pmax(p.rows, p.dac_bits, p.cell_bits) < F32_EXACT \
        else np.float64
    planes = input_planes(padded, p.input_bits, p.dac_bits, p.input_encoding).astype(dtype)
    stored, _ = stored_levels(codes, K, len(col_slice), p.cell_bits, p.adc_flip)
    out: list = []
    clipped, total = 0.0, 0
    for r in range(rt):
        part = planes[:, :, r * p.rows:(r + 1) * p.rows] @ stored[r].astype(dtype)
        groups = [part[..., col_slice == s] for s in range(p.slices)] \
            if p.adc_granularity == "slice" else [part]
        ranges = [range_of(g, p.adc_statistic, p.adc_percentile) for g in groups]
        for g, v in zip(groups, ranges):
            clipped += clip_rate(g, p.step_for(v), p.adc_bits) * g.size
            total += g.size
        out.append(ranges if p.adc_granularity == "slice" else ranges[0])
    return out, clipped / total if total else 0.0


def layer_lossless(layer: dict[str, Any], codes: np.ndarray) -> bool:
    """`lossless` for a program layer and its codes array (flip encoding applied)."""
    p = XbarParams.from_layer(layer)
    J = int(layer["N"]) * p.slices * p.signs
    stored, _ = stored_levels(codes, int(layer["K"]), J, p.cell_bits, p.adc_flip)
    return lossless(layer["adc_step"], stored, p.dac_bits, p.adc_bits)
