"""Crossbar MVM numerics of docs/numerics.md: DAC cycles, analog partial sums, ADC,
shift-and-add, digital corrections and rescale.

Two paths compute the same integers:
- the bit-level path builds every (row tile, input cycle, physical column) partial sum and
  digitises it with the ADC rule; it is the definition and the only path that can carry
  device non-idealities;
- the fast path computes `x_int @ q` with one matmul, with `q` rebuilt from the codes once.
  It is used only where it is provably identical: every ADC step of the layer is 1 and the
  largest partial sum any input can produce on the programmed codes fits the ADC.
Lossy layers on ideal devices take a third path, runtime/split.py: this fast path plus the
ADC's errors, formed only where the ADC can lose information (same integers).

Everything here is numpy; arrays are prepared once per layer (`PreparedLayer`) so a run
spends its time in BLAS, never in Python loops over rows, columns or vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .numerics import (
    F32_EXACT,
    XbarParams,
    adc,
    adc_codes,
    column_peaks,
    digit_counts,
    full_scale_pmax,
    lossless,
    max_code,
    plane_weights,
    quantize_input,
    stored_levels,
)
from .schema import StepRule

# Elements of the [row_tiles, cycles, vectors, columns] partial-sum block built at once.
CHUNK_ELEMENTS = 2**22


# ---------------------------------------------------------------- one layer, prepared once
@dataclass
class PreparedLayer:
    """Per-layer arrays derived once from the program, so each MVM is a few BLAS calls."""

    index: int
    K: int
    N: int
    rows: int
    row_tiles: int
    col_tiles: int
    cols: int
    J: int
    """Used expanded columns: N * slices * signs."""
    params: XbarParams
    """The sections the layer was packed with (bit widths, encoding, ADC policy)."""
    cycles: int
    in_scale: float
    offset_qw: int
    """Qw for the offset mapping (its digital correction), 0 for differential."""
    steps: np.ndarray
    """ADC step per row tile, int64 [row_tiles]."""
    codes: np.ndarray
    """Conductance level per cell in matmul layout, [row_tiles, rows, J] uint8 (a view)."""
    levels_dtype: type
    """float32 when partial sums stay below 2**24, else float64."""
    order: np.ndarray | None
    """Expanded columns sorted by output (None when already sorted, as in dense packing)."""
    colw: np.ndarray
    """Shift-add weight of each sorted column, sign * 2**(slice*cell_bits): [N, slices*signs]."""
    cycle_w: np.ndarray
    """Shift-add weight of each cycle, 2**(c*dac_bits): [cycles] float64."""
    colsum: np.ndarray
    scale: np.ndarray
    """s_x * s_w[n] in float32."""
    bias: np.ndarray | None
    q: np.ndarray
    """Signed weights rebuilt from the codes, [K, N] (float32 when sums stay exact)."""
    lossless: bool
    """True when the ADC can never change a partial sum: the fast path is exact."""
    crossbars: list[list[int]]
    used_rows: np.ndarray
    """Driven rows of each row tile, [row_tiles]."""
    used_cols: np.ndarray
    """Used columns of each column tile, [col_tiles]."""
    pulse_table: np.ndarray
    """Non-zero DAC digits per offset input value (see digit_counts)."""
    sum_dtype: type
    """float32 when the row-tile sum of ADC outputs stays below 2**24, else float64."""
    no_clip: np.ndarray
    """Per row tile: the largest ideal partial sum fits the ADC, so it never clips."""
    fold_step: int
    """The common ADC step of all row tiles (applied after the shift-add), else 0."""
    pattern: np.ndarray | None
    """Shift-add weight per column of an output when every output has the same pattern
    (dense packing), in the dtype that keeps the column reduction exact; else None."""
    flip: np.ndarray | None = None
    """Columns stored complemented (flip encoding), bool [row_tiles, J]; None when off."""
    col_steps: np.ndarray | None = None
    """ADC step per (row tile, expanded column), float64, when steps are per slice or
    uniform; None when `steps` (one power of two per row tile) says it all."""
    _levels: np.ndarray | None = None

    @property
    def levels(self) -> np.ndarray:
        """codes as floats for the bit-level matmuls; built on first use only, since layers
        on the fast path never need them (they are 4-8x the size of the codes)."""
        if self._levels is None:
            self._levels = self.codes.astype(self.levels_dtype)
        return self._levels


def prepare_layer(index: int, layer: dict, arrays: dict[str, np.ndarray]) -> PreparedLayer:
    """Derive a PreparedLayer from a validated layer dict and the program's arrays."""
    names = layer["arrays"]
    codes = arrays[names["codes"]]
    p = XbarParams.from_layer(layer)
    g = p.geometry(layer["K"], layer["N"])
    K, N, J, S, signs = g.K, g.N, g.phys_cols, g.slices, g.signs
    rt, ct, rows, cols = codes.shape
    cell_bits, dac_bits, adc_bits = p.crossbar.cell_bits, p.dac.bits, p.adc.bits
    input_bits, encoding = p.quant.input_bits, p.quant.input_encoding
    flat, flip = stored_levels(codes, K, J, cell_bits, flip=False)
    col_out = arrays[names["col_out"]].astype(np.int64)
    order = np.argsort(col_out, kind="stable")
    shift = arrays[names["col_slice"]].astype(np.int64) * cell_bits
    sign = 1 - 2 * arrays[names["col_sign"]].astype(np.int64)
    colw = (sign * (2.0 ** shift))[order].reshape(N, S * signs)
    offset_qw = p.qw if p.signs == 1 else 0  # the offset mapping's digital correction
    # float32 is exact here: every level * 2**shift and every column sum stays < 2**24
    q_all = flat.reshape(rt * rows, J)[:K].astype(np.float32)
    q = np.einsum("knm,nm->kn", q_all[:, order].reshape(K, N, S * signs),
                  colw.astype(np.float32)).astype(np.float64) - offset_qw
    exact32 = p.qx * float(np.abs(q).sum(axis=0).max(initial=0.0)) < F32_EXACT
    col_steps = _column_steps(layer, p, arrays[names["col_slice"]])
    steps = np.asarray(layer["adc_step"], dtype=np.int64) if col_steps is None else \
        np.ceil(col_steps.max(axis=1)).astype(np.int64)  # a bound only: col_steps rule
    used_rows = np.asarray(g.rows_in_use)
    if p.adc.flip:  # the crossbars hold the complemented columns
        flat, flip = stored_levels(codes, K, J, cell_bits, flip=True)
    top = adc_codes(adc_bits, p.adc_signed)[1]
    tile_peak = column_peaks(flat, dac_bits).max(axis=1, initial=0)
    fold = int(steps[0]) if np.all(steps == steps[0]) and flip is None and col_steps is None \
        else 0
    pattern = None
    if np.array_equal(order, np.arange(J)) and np.all(colw == colw[:1]) and col_steps is None:
        bound = rt * top * (1 if fold else int(steps.max())) * float(np.abs(colw[0]).sum())
        pattern = colw[0].astype(np.float32 if bound < F32_EXACT else np.float64)
    w_scale = arrays[names["w_scale"]].astype(np.float32)
    bias = arrays[names["bias"]].astype(np.float32) if names.get("bias") else None
    return PreparedLayer(
        index=index, K=K, N=N, rows=rows, row_tiles=rt, col_tiles=ct, cols=cols, J=J,
        params=p, cycles=p.cycles, in_scale=float(layer["in_scale"]), offset_qw=offset_qw,
        steps=steps, codes=flat,
        levels_dtype=np.float32 if full_scale_pmax(rows, dac_bits, cell_bits) < F32_EXACT
        else np.float64,
        order=None if np.array_equal(order, np.arange(J)) else order, colw=colw,
        cycle_w=plane_weights(input_bits, dac_bits, encoding),
        colsum=arrays[names["colsum"]].astype(np.int64),
        scale=(np.float32(layer["in_scale"]) * w_scale).astype(np.float32), bias=bias,
        q=q.astype(np.float32 if exact32 else np.float64),
        lossless=lossless(layer["adc_step"], flat, dac_bits, adc_bits, p.adc_signed),
        crossbars=[list(c) for c in layer["crossbars"]],
        used_rows=used_rows, used_cols=np.asarray(g.cols_in_use),
        pulse_table=digit_counts(input_bits, dac_bits, encoding),
        sum_dtype=np.float32 if rt * top * int(steps.max()) < F32_EXACT and col_steps is None
        else np.float64,
        no_clip=(tile_peak <= top * steps) & (col_steps is None), fold_step=fold,
        pattern=pattern, flip=flip, col_steps=col_steps)


def _column_steps(layer: dict, p: XbarParams, col_slice: np.ndarray) -> np.ndarray | None:
    """The ADC step of every (row tile, expanded column), float64 [row_tiles, J], when steps
    are per weight slice or not powers of two; None for the per-row-tile power-of-two case
    (which the fast integral shortcuts below handle)."""
    if not p.per_slice and p.adc.step_rule == StepRule.POW2:
        return None
    per = np.asarray(layer["adc_step"], dtype=np.float64)
    if per.ndim == 1:  # one per row tile
        per = np.repeat(per[:, None], p.slices, axis=1)
    return per[:, np.asarray(col_slice, np.int64)]


# ---------------------------------------------------------------- the two paths
def mvm_fast(pl: PreparedLayer, x_q: np.ndarray) -> np.ndarray:
    """y_int = x_int @ q in one matmul (exact: every partial sum is a representable integer).
    x_q holds the integers x_int in any float dtype; the result has q's dtype."""
    return x_q.astype(pl.q.dtype, copy=False) @ pl.q


PartialSums = Callable[[int, np.ndarray], np.ndarray]
"""(row tile r, digits [C*V, rows_r] float32) -> analog partial sums P [C*V, J]."""


def ideal_partial_sums(pl: PreparedLayer) -> PartialSums:
    """Analog partial sums on the ideal programmed levels: one matmul per row tile."""

    def run(r: int, lhs: np.ndarray) -> np.ndarray:
        return lhs @ pl.levels[r, : lhs.shape[1]]

    return run


def offset_inputs(pl: PreparedLayer, x_int: np.ndarray) -> np.ndarray:
    """u = x_int + z on the K real rows: [vectors, K] int64."""
    return x_int.astype(np.int64) + pl.params.in_zero


def mvm_bitlevel(pl: PreparedLayer, x_int: np.ndarray,
                 partial_sums: PartialSums | None = None) -> np.ndarray:
    """The definition: per row tile, cycle and physical column, ADC then shift-and-add,
    then the digital corrections. `partial_sums` replaces the ideal analog sums (noise).
    Returns y_int [vectors, N] as float64 (integers when ideal)."""
    ps = partial_sums or ideal_partial_sums(pl)
    chunk = max(1, CHUNK_ELEMENTS // (pl.cycles * max(pl.J, 1)))
    out = np.empty((x_int.shape[0], pl.N), dtype=np.float64)
    for lo in range(0, x_int.shape[0], chunk):
        out[lo:lo + chunk] = _bitlevel_chunk(pl, x_int[lo:lo + chunk], ps,
                                             integral=partial_sums is None)
    return out


def _bitlevel_chunk(pl: PreparedLayer, x_int: np.ndarray, ps: PartialSums,
                    integral: bool) -> np.ndarray:
    """Row tiles one at a time (only their rows in use), all cycles and vectors at once;
    the digits of all row tiles are summed as they come (the digital row-tile add)."""
    u = offset_inputs(pl, x_int)
    planes = pl.params.input_planes(x_int).astype(np.float32)
    cv = pl.cycles * len(u)
    total = None
    for r in range(pl.row_tiles):
        lhs = planes[:, :, r * pl.rows:(r + 1) * pl.rows].reshape(cv, -1)
        step = int(pl.steps[r]) if pl.col_steps is None else pl.col_steps[r]
        digit = adc(ps(r, lhs), step, pl.params.adc.bits, integral,
                    no_clip=integral and bool(pl.no_clip[r]), scaled=not pl.fold_step,
                    signed=pl.params.adc_signed)
        if pl.flip is not None and pl.flip[r].any():
            unflip(digit, lhs, pl.flip[r], max_code(pl.params.crossbar.cell_bits))
        if total is None:
            total = digit.astype(pl.sum_dtype, copy=False)
        else:
            total += digit
    acc = shift_add(pl, total.reshape(pl.cycles, len(u), pl.J))
    if pl.fold_step > 1:
        acc *= pl.fold_step
    zero_point = pl.params.in_zero * pl.colsum
    return acc - pl.offset_qw * u.sum(axis=1, dtype=np.int64)[:, None] - zero_point


def unflip(digit: np.ndarray, lhs: np.ndarray, mask: np.ndarray, cell_top: int) -> None:
    """Recover flipped columns' partial sums in place, digitally after the ADC:
    P = cell_top * sum_k u_c[k] - ADC(P'), the input digit sum counted by the periphery."""
    cols = np.flatnonzero(mask)
    total = lhs.sum(axis=1, dtype=np.float64)[:, None] * cell_top
    digit[:, cols] = (total - digit[:, cols]).astype(digit.dtype, copy=False)


def shift_add(pl: PreparedLayer, digit: np.ndarray) -> np.ndarray:
    """Summed ADC outputs [cycles, vectors, J] -> acc [vectors, N]: shift-add across
    cycles, then across slices (and the G+ - G- subtraction)."""
    if pl.pattern is not None:  # columns first (exact in pattern's dtype), then cycles
        c, v = digit.shape[:2]
        m = pl.pattern.size
        per_n = digit.reshape(-1, m).astype(pl.pattern.dtype, copy=False) @ pl.pattern
        return (pl.cycle_w @ per_n.reshape(c, -1)).reshape(v, pl.N)
    return shift_add_columns(pl, np.tensordot(pl.cycle_w, digit, axes=(0, 0)))


def shift_add_columns(pl: PreparedLayer, per_col: np.ndarray) -> np.ndarray:
    """Per-column integers [V, J] -> [V, N]: each output's columns weighted by
    sign * 2**(slice*cell_bits) and summed (float64, exact for these magnitudes)."""
    v = per_col.shape[0]
    if pl.order is not None:
        per_col = per_col[:, pl.order]
    per_col = per_col.astype(np.float64, copy=False).reshape(v, pl.N, -1)
    if pl.pattern is not None:
        return per_col @ pl.pattern.astype(np.float64)
    return np.einsum("vnm,nm->vn", per_col, pl.colw)


def dequantize(pl: PreparedLayer, y_int: np.ndarray) -> np.ndarray:
    """y = float32(y_int) * (s_x * s_w[n]) + b[n]."""
    y = y_int.astype(np.float32, copy=False) * pl.scale
    if pl.bias is not None:
        y += pl.bias
    return y


def dac_pulses(pl: PreparedLayer, x_int: np.ndarray) -> int:
    """Non-zero DAC digits applied, summed over every crossbar that receives them.
    x_int may hold the integers in a float dtype. Bit-serial DACs: a popcount of u;
    wider DACs: a histogram of u against the per-value digit table."""
    u = pl.params.drive(x_int)
    if pl.params.dac.bits == 1:
        n = int(np.bitwise_count(u.astype(np.uint16)).sum(dtype=np.int64))
    else:
        hist = np.bincount(u.astype(np.intp).ravel(), minlength=pl.pulse_table.size)
        n = int(hist @ pl.pulse_table)
    return n * pl.col_tiles


def partial_sum_max(pl: PreparedLayer, x: np.ndarray) -> int:
    """Largest analog partial sum the ideal crossbars produce on float inputs x [..., K]:
    what a 'calibrated' ADC range is set from (the compiler may call this)."""
    x_int = quantize_input(x.reshape(-1, pl.K), pl.in_scale, pl.params.quant.input_bits)
    chunk = max(1, CHUNK_ELEMENTS // (pl.cycles * max(pl.J, 1)))
    ps = ideal_partial_sums(pl)
    best = 0.0
    for lo in range(0, len(x_int), chunk):
        planes = pl.params.input_planes(x_int[lo:lo + chunk]).astype(np.float32)
        for r in range(pl.row_tiles):
            lhs = planes[:, :, r * pl.rows:(r + 1) * pl.rows]
            best = max(best, float(ps(r, lhs.reshape(-1, lhs.shape[-1])).max(initial=0.0)))
    return int(best)
