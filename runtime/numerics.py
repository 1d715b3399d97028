"""Crossbar numerics of docs/numerics.md: every closed form, written once.

The compiler's passes, the emulator, the validator, the cost model and `farc verify` all
call these functions; none of them restates a formula. (The verification reference in
farc's checking side is the one deliberate exception: it is written from the spec, not from
this module, so that a bug here cannot hide from it.)

What lives here:
- bit widths: `qmax` (Qw, Qx), `in_zero` (the DAC offset z), `weight_slices`,
  `mapping_signs`, `input_cycles`;
- the input encodings' arithmetic (`EncodingRule`, one per schema.InputEncoding member):
  `input_planes`, `plane_weights`, `drive`, `digit_counts`;
- the ADC: `full_scale_pmax`, `adc_step_for`, `adc_steps` (one per row tile), the
  ADC rule `adc`, ISAAC's flip encoding (`flip_mask`, `physical_codes`) and the one
  "is this layer lossless" rule (`lossless`, `layer_lossless`);
- quantization: `input_scale`, `quantize_weights`, `quantize_input`, `bit_planes`;
- how a [K, N] weight sits on crossbars: `XbarParams` (the schema sections one layer is
  packed with; a Target composes them, a program layer records them) and `Geometry` (tile
  counts, columns and rows in use, crossbar count, utilization);
- decoding the integer weights back from codes and column maps (`decode_weights`).

The sections themselves and their policies (string enums) are typed in runtime/schema.py.
numpy only, like the rest of farc.runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .schema import (
    XBAR_SECTIONS,
    AdcGranularity,
    AdcRange,
    AdcSection,
    AdcStatistic,
    Calibration,
    CrossbarSection,
    DacSection,
    InputEncoding,
    QuantSection,
    StepRule,
    WeightMapping,
    parse_section,
    section_dict,
)

# ---------------------------------------------------------------- bit widths
# Largest integer magnitude below which float32 arithmetic on integers is exact.
F32_EXACT = 2**24
STEP_DENOM = 256
"""A uniform step is a multiple of 1/256: every ADC output and every sum of them stays a
dyadic rational, exact in float64, so emulator and reference agree bit for bit."""


def max_code(bits: int) -> int:
    """Largest unsigned `bits`-bit code, 2**bits - 1: a cell's top conductance level, the
    largest DAC digit, the ADC's top output code."""
    return 2**bits - 1


def qmax(bits: int) -> int:
    """Largest magnitude of a signed `bits`-bit integer, symmetric: 2**(bits-1) - 1 (Qw, Qx)."""
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class EncodingRule:
    """The arithmetic of one input encoding (schema.InputEncoding): which non-negative
    values the DAC applies, in how many phases, and with which sign each phase's sums enter
    the output. Every function below that depends on the encoding reads it here, so a new
    encoding is a schema member plus one rule (docs/numerics.md, "Input encodings")."""

    phase_signs: tuple[int, ...]
    """The sign each phase's partial sums enter the output with, in phase order."""
    zero_point: bool
    """True: the DAC applies u = x + 2**(B-1) (one phase, B digit bits); False: phase i
    applies max(phase_signs[i] * x, 0), the B-1 magnitude bits."""
    signed_pulses: bool = False
    """True: one phase applies the digits of |x| with the sign of x on each row (bipolar
    read pulses); partial sums take either sign and the ADC range is signed (`adc_codes`)."""

    def zero(self, input_bits: int) -> int:
        return 2 ** (input_bits - 1) if self.zero_point else 0

    def digit_bits(self, input_bits: int) -> int:
        """Bits of the value one phase applies."""
        return input_bits if self.zero_point else input_bits - 1

    def phase_values(self, x: Any, input_bits: int) -> list[Any]:
        """The non-negative value each phase applies for signed integers x (a numpy array
        or a torch tensor: the torch twin applies the same rule)."""
        if self.zero_point:
            return [x + self.zero(input_bits)]
        if self.signed_pulses:
            return [x]
        return [(s * x).clip(min=0) for s in self.phase_signs]

    def drive(self, x: Any, input_bits: int) -> Any:
        """The value whose digits an input puts on its row in the phase that drives it."""
        return x + self.zero(input_bits) if self.zero_point else abs(x)


ENCODING_RULES: dict[InputEncoding, EncodingRule] = {
    InputEncoding.OFFSET: EncodingRule(phase_signs=(1,), zero_point=True),
    InputEncoding.SIGN_MAGNITUDE: EncodingRule(phase_signs=(1, -1), zero_point=False),
    InputEncoding.BIPOLAR: EncodingRule(phase_signs=(1,), zero_point=False,
                                        signed_pulses=True),
}


def encoding_rule(encoding: str) -> EncodingRule:
    """The rule of an encoding given as its member or its string."""
    return ENCODING_RULES[InputEncoding(encoding)]


def in_zero(input_bits: int, encoding: str = InputEncoding.OFFSET) -> int:
    """DAC zero point z: 2**(input_bits-1) for offset inputs (u = x_int + z >= 0), 0 for
    encodings that apply magnitudes."""
    return encoding_rule(encoding).zero(input_bits)


def weight_slices(weight_bits: int, cell_bits: int, mapping: str) -> int:
    """Cells per weight magnitude: the sign bit is not stored by a differential pair, and
    the offset mapping stores q + Qw, which needs the full width."""
    mag = weight_bits - 1 if mapping == WeightMapping.DIFFERENTIAL else weight_bits
    return math.ceil(mag / cell_bits)


def mapping_signs(mapping: str) -> int:
    """Physical columns per weight slice: 2 (G+, G-) for differential, 1 for offset."""
    return 2 if mapping == WeightMapping.DIFFERENTIAL else 1


def phase_cycles(input_bits: int, dac_bits: int, encoding: str = InputEncoding.OFFSET) -> int:
    """DAC cycles of one phase: ceil(digit bits / dac_bits) (digit bits: input_bits for
    offset inputs, input_bits - 1 for magnitudes)."""
    return math.ceil(encoding_rule(encoding).digit_bits(input_bits) / dac_bits)


def input_cycles(input_bits: int, dac_bits: int, encoding: str = InputEncoding.OFFSET) -> int:
    """DAC cycles per MVM: phases x `phase_cycles` (offset: ceil(input_bits / dac_bits);
    sign-magnitude: 2 * ceil((input_bits - 1) / dac_bits))."""
    rule = encoding_rule(encoding)
    return len(rule.phase_signs) * phase_cycles(input_bits, dac_bits, encoding)


def input_planes(x_int: np.ndarray, input_bits: int, dac_bits: int,
                 encoding: str = InputEncoding.OFFSET) -> np.ndarray:
    """The DAC digits of signed integers x_int [V, K]: [cycles, V, K] ints, phase by phase,
    LSB first within a phase (offset: the digits of u = x + z; sign-magnitude: of max(x, 0),
    then of max(-x, 0); bipolar: of |x| times the sign of x, the only negative digits)."""
    x = np.asarray(x_int).astype(np.int64)
    per = phase_cycles(input_bits, dac_bits, encoding)
    rule = encoding_rule(encoding)
    if rule.signed_pulses:  # the digits of |x|, each row's pulses with the sign of x
        return np.concatenate([np.sign(v)[None] * bit_planes(np.abs(v), per, dac_bits)
                               for v in rule.phase_values(x, input_bits)])
    return np.concatenate([bit_planes(v, per, dac_bits)
                           for v in rule.phase_values(x, input_bits)])


def plane_weights(input_bits: int, dac_bits: int,
                  encoding: str = InputEncoding.OFFSET) -> np.ndarray:
    """Shift-add weight of each input plane of `input_planes`: the phase's sign times
    2**(c*dac_bits). float64 [cycles]."""
    w = 2.0 ** (np.arange(phase_cycles(input_bits, dac_bits, encoding)) * dac_bits)
    return np.concatenate([s * w for s in encoding_rule(encoding).phase_signs])


# ---------------------------------------------------------------- the ADC
def full_scale_pmax(rows: int, dac_bits: int, cell_bits: int, flip: bool = False) -> int:
    """The physical largest partial sum of one column in one cycle,
    rows * (2**dac_bits - 1) * (2**cell_bits - 1). With ISAAC's flip encoding (`flip_mask`)
    no stored column sums above half its levels (rounded down), halving it."""
    levels = rows * max_code(cell_bits)
    return max_code(dac_bits) * (levels // 2 if flip else levels)


def adc_codes(adc_bits: int, signed: bool = False) -> tuple[int, int]:
    """(lowest, highest) output code of an ADC: 0 .. 2**adc_bits - 1, or for a signed range
    (bipolar inputs) a sign bit and adc_bits - 1 magnitude bits, -(2**(b-1) - 1) ..
    2**(b-1) - 1 (symmetric)."""
    if signed:
        return -qmax(adc_bits), qmax(adc_bits)
    return 0, max_code(adc_bits)


def adc_step_for(pmax: float, adc_bits: int, rule: str = StepRule.POW2,
                 signed: bool = False) -> float:
    """The step that makes top * step cover pmax (top: the ADC's highest code, `adc_codes`).
    pow2: the smallest power of two (an int); uniform: the smallest multiple of
    1/STEP_DENOM (a float). Never below 1: the partial sums are integers, a finer step
    resolves nothing more."""
    top = adc_codes(adc_bits, signed)[1]
    if rule == StepRule.UNIFORM:
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
    if rule == StepRule.UNIFORM:
        return float(step) * STEP_DENOM == math.floor(float(step) * STEP_DENOM)
    return isinstance(step, int) and step & (step - 1) == 0


def adc(p: np.ndarray, step: int | np.ndarray, adc_bits: int, integral: bool = False,
        no_clip: bool = False, scaled: bool = True, signed: bool = False) -> np.ndarray:
    """The ADC rule on one row tile's partial sums, in place when it can be:
    clip(floor(P/step + 1/2), low, top) * step, (low, top) = `adc_codes` (0, 2**adc_bits - 1
    unless the range is signed). A power-of-two `step` scales
    exactly by its reciprocal; a `step` array (one per column: per-slice or uniform steps)
    divides in float64, as the spec's P/step does. Shortcuts that change no value:
    `integral` (P holds integers, ideal devices) makes step 1 a pure clip; `no_clip` (P
    provably within [0, top*step]) skips the clip; `scaled=False` returns the code (in units
    of step) for the caller to scale (scalar steps only)."""
    low, top = adc_codes(adc_bits, signed)
    if isinstance(step, np.ndarray):
        code = np.floor(p.astype(np.float64) / step + 0.5)
        np.clip(code, low, top, out=code)
        return code * step
    if step == 1 and integral:
        if no_clip:
            return p
        return np.minimum(p, top, out=p) if low == 0 else np.clip(p, low, top, out=p)
    if step != 1:
        p *= 1.0 / step
    p += 0.5
    np.floor(p, out=p)
    if not no_clip:
        np.clip(p, low, top, out=p)
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
             adc_bits: int, signed: bool = False) -> bool:
    """The one rule for "the ADC can never change a partial sum": every step is 1 and the
    largest sum one column can reach, (2**dac_bits - 1) * (sum of its *stored* levels),
    fits in the ADC's highest code (`adc_codes`; a signed range's sums reach as far
    below 0). `stored` [row_tiles, rows, J] holds the levels the crossbars
    hold (complemented columns included when flip encoding is on)."""
    if not np.all(np.asarray(steps, dtype=np.float64) == 1):  # per row tile or per slice
        return False
    return int(column_peaks(stored, dac_bits).max(initial=0)) <= adc_codes(adc_bits, signed)[1]


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


def clip_rate(p: np.ndarray, step: float, adc_bits: int, signed: bool = False) -> float:
    """Fraction of partial sums p that the ADC's range (`adc_codes` times step) clips."""
    if not np.size(p):
        return 0.0
    low, top = adc_codes(adc_bits, signed)
    code = np.floor(np.asarray(p, dtype=np.float64) / step + 0.5)
    return float(((code > top) | (code < low)).mean())


def range_of(p: np.ndarray, statistic: str, percentile: float,
             step_of: Any = None, adc_bits: int = 0, signed: bool = False) -> float:
    """The partial-sum range a calibrated ADC covers: the largest p, its percentile, or
    the MSE-optimal clip point (`mse_range`; needs the step rule `step_of` and the ADC)."""
    if not np.size(p):
        return 0.0
    if statistic == AdcStatistic.MSE:
        return mse_range(p, step_of, adc_bits, signed)
    return float(np.max(p) if statistic == AdcStatistic.MAX else np.percentile(p, percentile))


def _distinct(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a (float64, ascending) and how often each occurs: a count per
    integer when a holds non-negative integers (ideal sums: linear time), a sort otherwise."""
    ints = a.astype(np.int64)
    if a.size and ints.min() >= 0 and np.array_equal(ints, a):
        counts = np.bincount(ints)
        vals = np.flatnonzero(counts)
        return vals.astype(np.float64), counts[vals]
    return np.unique(a.astype(np.float64), return_counts=True)


MSE_CANDIDATES = 41
"""Clip points the 'mse' statistic tries: m * 2**(-k/8), k = 0..40 (m the largest sum, down
to 3 % of it)."""


def mse_range(p: np.ndarray, step_of: Any, adc_bits: int, signed: bool = False) -> float:
    """The clip point whose ADC output has the smallest squared error on the sums p
    (rounding and clipping together): among m * 2**(-k/8), k = 0..MSE_CANDIDATES-1, each
    turned into its step by the step rule `step_of`, the first (widest) with the least
    sum of (clip(floor(p/step + 1/2), low, top) * step - p)**2. Sums are counted once per
    distinct value (exact: ideal sums are integers)."""
    vals, counts = _distinct(np.asarray(p).ravel())
    top_sum = float(vals[-1])
    if top_sum <= 0:
        return 0.0
    low, top = adc_codes(adc_bits, signed)
    best, best_err = top_sum, math.inf
    for k in range(MSE_CANDIDATES):
        v = top_sum * 2.0 ** (-k / 8)
        step = step_of(v)
        out = np.clip(np.floor(vals / step + 0.5), low, top) * step
        err = float((((out - vals) ** 2) * counts).sum())
        if err < best_err:
            best, best_err = v, err
    return best


KEEP_VECTORS = 256
"""Calibration input vectors kept per layer to set a calibrated ADC range (compile, the
fine-tune's recalibration and the ADC-error check alike)."""


def keep_vectors(n: int, rng: np.random.Generator, keep: int = KEEP_VECTORS) -> np.ndarray:
    """The one subsample rule: `keep` of `n` vectors drawn without replacement from `rng`,
    in their original order (all of them when n <= keep)."""
    return np.sort(rng.choice(n, size=min(keep, n), replace=False))


def input_range(x: np.ndarray, calibration: str, percentile: float) -> float:
    """The input range r an input scale covers (s_x = r / Qx): max |x|, or the `percentile`
    of |x| under the 'percentile' calibration policy; 0 for no inputs."""
    mag = np.abs(x)
    if not mag.size:
        return 0.0
    if calibration == Calibration.PERCENTILE and percentile < 100.0:
        return float(np.percentile(mag, percentile))
    return float(mag.max())


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


def drive(x_int: np.ndarray, input_bits: int,
          encoding: str = InputEncoding.OFFSET) -> np.ndarray:
    """The value whose digits a signed input puts on its row (`EncodingRule.drive`): u = x +
    z (offset) or |x| (sign-magnitude: one phase drives it, the other sees 0)."""
    return encoding_rule(encoding).drive(x_int, input_bits)


def digit_counts(input_bits: int, dac_bits: int,
                 encoding: str = InputEncoding.OFFSET) -> np.ndarray:
    """Non-zero DAC digits of every drive value (`drive`): a lookup table indexed by it."""
    values = np.arange(2 ** encoding_rule(encoding).digit_bits(input_bits), dtype=np.int64)
    planes = bit_planes(values[None], phase_cycles(input_bits, dac_bits, encoding), dac_bits)
    return (planes[:, 0] != 0).sum(axis=0)


def decode_weights(levels: np.ndarray, col_out: np.ndarray, col_slice: np.ndarray,
                   col_sign: np.ndarray, N: int, cell_bits: int, weight_bits: int,
                   mapping: str) -> np.ndarray:
    """Signed integers q [K, N] from logical levels [K, J] and the column maps:
    q[k, n] = sum over the columns j of output n of (+1 | -1 for G-) * 2**(slice*cell_bits)
    * level[k, j], minus Qw for the offset mapping. int64. Every output must own the same
    number of columns (a valid column map: each (output, sign, slice) once)."""
    w = (1 - 2 * col_sign.astype(np.int64)) << (col_slice.astype(np.int64) * cell_bits)
    order = np.argsort(col_out, kind="stable")
    if not np.array_equal(order, np.arange(order.size)):  # the dense packing needs no gather
        levels, w = levels[:, order], w[order]
    grouped, coef = levels.reshape(levels.shape[0], N, -1), w.reshape(N, -1)
    # one [K, N] product per column of an output: no [K, J] int64 temporary (a VGG-8
    # classifier's 134M cells took 10 s that way, 1.7 s this way)
    q = np.zeros((levels.shape[0], N), np.int64)
    for c in range(grouped.shape[2]):
        q += grouped[:, :, c] * coef[:, c]
    return q - qmax(weight_bits) if mapping == WeightMapping.OFFSET else q


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
    """The crossbar, DAC, ADC and quantization sections one layer is packed with (the
    schema's own classes, runtime/schema.py): a Target composes the same sections
    (`Target.xbar`), a program layer records them (`from_layer`). Everything below is
    derived from them; nothing is a copy."""

    crossbar: CrossbarSection = field(default_factory=CrossbarSection)
    dac: DacSection = field(default_factory=DacSection)
    adc: AdcSection = field(default_factory=AdcSection)
    quant: QuantSection = field(default_factory=QuantSection)

    @property
    def slices(self) -> int:
        return weight_slices(self.quant.weight_bits, self.crossbar.cell_bits,
                             self.quant.mapping)

    @property
    def signs(self) -> int:
        return mapping_signs(self.quant.mapping)

    @property
    def cycles(self) -> int:
        return input_cycles(self.quant.input_bits, self.dac.bits, self.quant.input_encoding)

    @property
    def qw(self) -> int:
        return qmax(self.quant.weight_bits)

    @property
    def qx(self) -> int:
        return qmax(self.quant.input_bits)

    @property
    def in_zero(self) -> int:
        return in_zero(self.quant.input_bits, self.quant.input_encoding)

    @property
    def pmax(self) -> int:
        """The full-scale partial sum of one column in one cycle (flip encoding included)."""
        return full_scale_pmax(self.crossbar.rows, self.dac.bits, self.crossbar.cell_bits,
                               self.adc.flip)

    @property
    def adc_signed(self) -> bool:
        """True when the partial sums take either sign (bipolar inputs): a signed ADC."""
        return encoding_rule(self.quant.input_encoding).signed_pulses

    @property
    def full_step(self) -> float:
        """The ADC step of a full-range ADC."""
        return adc_step_for(self.pmax, self.adc.bits, self.adc.step_rule, self.adc_signed)

    @property
    def full_range_lossless(self) -> bool:
        """True when a full-range ADC resolves every possible partial sum exactly."""
        return adc_codes(self.adc.bits, self.adc_signed)[1] >= self.pmax

    @property
    def per_slice(self) -> bool:
        """True when the ADC steps are one per weight slice of each row tile."""
        return self.adc.granularity == AdcGranularity.SLICE

    def input_planes(self, x_int: np.ndarray) -> np.ndarray:
        """`input_planes` of signed integers x_int [V, K] with these widths and encoding."""
        return input_planes(x_int, self.quant.input_bits, self.dac.bits,
                            self.quant.input_encoding)

    def drive(self, x_int: np.ndarray) -> np.ndarray:
        """`drive` with these widths and encoding."""
        return drive(x_int, self.quant.input_bits, self.quant.input_encoding)

    def geometry(self, K: int, N: int, replicas: int = 1) -> Geometry:
        """How W [K, N] sits on crossbars with these parameters."""
        return Geometry(K, N, self.crossbar.rows, self.crossbar.cols, self.slices, self.signs,
                        self.cycles, replicas)

    def adc_steps(self, row_tiles: int, pmax: Any) -> list:
        """The ADC steps of a layer: one per row tile (granularity 'tile') or a list of one
        per weight slice for each row tile ('slice'). From the physical maximum ('full') or
        the calibrated range ('calibrated': `pmax` one value per row tile, or per row tile a
        list per slice; capped at the physical maximum)."""
        if self.adc.range == AdcRange.FULL:
            one = self.full_step
            return [[one] * self.slices if self.per_slice else one for _ in range(row_tiles)]
        if pmax is None:
            raise ValueError("a calibrated ADC range needs the calibrated partial-sum maximum")
        per = list(pmax) if isinstance(pmax, Sequence) else [pmax] * row_tiles
        if self.per_slice:  # a value per row tile serves all its slices
            per = [r if isinstance(r, Sequence) else [r] * self.slices for r in per]
        return [[self.step_for(v) for v in r] if isinstance(r, Sequence) else self.step_for(r)
                for r in per]

    def step_for(self, pmax: float) -> float:
        """The ADC step for a calibrated range pmax, capped at the physical maximum."""
        return adc_step_for(min(float(pmax), self.pmax), self.adc.bits, self.adc.step_rule,
                            self.adc_signed)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The sections as a program layer records them (docs/tile-program.md)."""
        return {name: section_dict(getattr(self, name)) for name in XBAR_SECTIONS}

    @classmethod
    def from_sections(cls, data: dict[str, Any], source: str,
                      error: type[Exception] = ValueError) -> XbarParams:
        """From recorded sections (a program layer, a target's TOML-shaped dict), parsed by
        the schema's one constructor: unknown keys refused with a suggestion, values checked
        against the same limits as a target file; an absent section is an error."""
        missing = [name for name in XBAR_SECTIONS if name not in data]
        if missing:
            raise error(f"{source}: missing section {', '.join(map(repr, missing))}")
        return cls(**{name: parse_section(sec, data[name], name, source, error)
                      for name, sec in XBAR_SECTIONS.items()})

    @classmethod
    def from_layer(cls, layer: dict[str, Any]) -> XbarParams:
        """The parameters a program layer was packed with (its own recorded sections)."""
        return cls.from_sections(layer, f"layer {layer.get('name', '?')!r}")

    def with_overrides(self, **dotted: Any) -> XbarParams:
        """A copy with `section.key` overrides, e.g. with_overrides(**{"adc.bits": 6});
        None values are skipped, each value parsed like a target file's."""
        sections = self.sections()
        for key, value in dotted.items():
            if value is not None:
                name, _, field = key.partition(".")
                sections[name][field] = value
        return XbarParams.from_sections(sections, "overrides")


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
    def all_crossbars(self) -> int:
        """Crossbars of every replica: the one count of what a layer occupies."""
        return self.crossbars * self.replicas

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
    the largest partial sum or the `adc.percentile` of them; and the fraction of those
    partial sums the resulting steps clip (0 with 'max')."""
    rt, rows = codes.shape[0], p.crossbar.rows
    padded = np.zeros((len(x_int), rt * rows), dtype=np.int64)
    padded[:, :K] = x_int
    dtype = np.float32 if full_scale_pmax(rows, p.dac.bits, p.crossbar.cell_bits) < F32_EXACT \
        else np.float64
    planes = input_planes(padded, p.quant.input_bits, p.dac.bits,
                          p.quant.input_encoding).astype(dtype)
    stored, _ = stored_levels(codes, K, len(col_slice), p.crossbar.cell_bits, p.adc.flip)
    out: list = []
    clipped, total = 0.0, 0
    for r in range(rt):
        part = planes[:, :, r * rows:(r + 1) * rows] @ stored[r].astype(dtype)
        if p.adc_signed:  # a signed range covers the sums' magnitudes
            part = np.abs(part)
        groups = _by_slice(part, col_slice, p.slices) if p.per_slice else [part]
        ranges = [range_of(g, p.adc.statistic, p.adc.percentile, p.step_for, p.adc.bits,
                           p.adc_signed) for g in groups]
        for g, v in zip(groups, ranges):
            clipped += clip_rate(g, p.step_for(v), p.adc.bits, p.adc_signed) * g.size
            total += g.size
        out.append(ranges if p.per_slice else ranges[0])
    return out, clipped / total if total else 0.0


def _by_slice(part: np.ndarray, col_slice: np.ndarray, slices: int) -> list[np.ndarray]:
    """The sums of each weight slice: one contiguous copy for the dense packing (column j
    holds slice j % slices), a boolean selection per slice otherwise."""
    if np.array_equal(col_slice, np.arange(col_slice.size) % slices):
        return list(np.moveaxis(part.reshape(*part.shape[:-1], -1, slices), -1, 0)
                    .reshape(slices, -1))
    return [part[..., col_slice == s] for s in range(slices)]


def layer_lossless(layer: dict[str, Any], codes: np.ndarray) -> bool:
    """`lossless` for a program layer and its codes array (flip encoding applied)."""
    p = XbarParams.from_layer(layer)
    J = int(layer["N"]) * p.slices * p.signs
    stored, _ = stored_levels(codes, int(layer["K"]), J, p.crossbar.cell_bits, p.adc.flip)
    return lossless(layer["adc_step"], stored, p.dac.bits, p.adc.bits, p.adc_signed)
