"""Exact work only where the ADC loses information: the split MVM path.

With ideal devices and one power-of-two ADC step per row tile (the ISAAC-like case), the
bit-level definition (crossbar.mvm_bitlevel) equals

    y_int = x_int @ q + sum over (row tile r, cycle c, column m) of
                        cw[c] * w[m] * s[r, m] * (ADC(P[r, c, m]) - P[r, c, m])

The first term is the fast path (the definition with an identity ADC, one matmul); cw[c]
is the cycle's shift-add weight, w[m] the column's (sign * 2**(slice*cell_bits)), s[r, m]
is -1 where the column is stored complemented (flip encoding: the periphery subtracts the
ADC output, so its error enters negated), else 1. Every (row tile, column) is classified
once, from the programmed codes and the ADC settings (numerics.column_peaks):

- exact: step 1 and the column's largest possible partial sum fits the ADC: ADC(P) = P,
  no work at all;
- residue: step 2**j and the column cannot clip: ADC(P) - P = numerics.adc_error(P mod
  2**j), and P mod 2**j depends only on the low j bits of the digits and of the levels.
  Those products are summed by one float32 matmul for several cycles at once: cycle f of
  a pack sits in bits [f*b, (f+1)*b) of the left operand, b wide enough that a field's
  sum (at most rows * digit * level) never carries into the next, and the whole packed
  sum stays below 2**24, so the matmul is exact whatever BLAS's summation order;
- clip: the column may clip: its partial sums are formed exactly, as in the definition,
  for these columns only, and the ADC rule (numerics.adc) applied.

All terms are integers, summed exactly (int64, then float64 below 2**53), so y_int is the
definition's, bit for bit (tests/runtime/test_split.py, with hypothesis). Layers with
per-slice or non-power-of-two steps, and noisy devices, keep the bit-level path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crossbar import CHUNK_ELEMENTS, F32_EXACT, PreparedLayer, mvm_fast, shift_add_columns
from .numerics import adc, adc_error, column_peaks, max_code, qmax

# A float32 holding 2**23 + R, 0 <= R < 2**23 an integer, has R as its 23 mantissa bits:
# adding 2**23 inside the matmul (a column of ones against a row of 2**23) hands over the
# integer sums as bits, with no conversion pass.
MANTISSA = 2**23
# Elements of one [vectors, columns] block of the residue path: small enough that its
# elementwise passes run in the cache rather than from memory.
CACHE_ELEMENTS = 2**15


@dataclass
class Pack:
    """Cycles whose residues one float32 matmul forms: cycle c0 + f in bits
    [f*b, (f+1)*b) of every sum."""

    cycles: range
    table: np.ndarray
    """Packed low digits of every input value: float32 [2*Qx + 1], indexed by x + Qx."""
    magic: tuple[int, int, int] | None
    """(multiplier, right shift, mask) that turns a sum into sum_f cw[f] * rho_f at once
    (step 2 with cycle weights w, 2w, 4w, ...), else None (field by field)."""
    lows: np.uint32
    """The low bit of every field (what the magic multiply keeps of a sum)."""


@dataclass
class TilePlan:
    """What one row tile needs: its rows of x, its step, its residue and clip columns."""

    lo: int
    hi: int
    """Rows of x (inputs k) this row tile holds."""
    step: int
    res_cols: np.ndarray | None
    """Columns on the residue path (None: all J columns, no gather)."""
    res_levels: np.ndarray | None
    """Stored levels mod step of those columns, float32 [hi - lo (+1), n], with a last row
    of 2**23 when `bias` (None: no residue column)."""
    field_bits: int
    packs: list[Pack]
    bias: bool
    """Sums stay below 2**23: the matmul adds 2**23 and its float32 bits are the integers."""
    clip_cols: np.ndarray
    """Columns whose partial sums may clip (formed exactly), int [n_clip]."""
    clip_levels: np.ndarray | None
    """Stored levels of the clip columns in the bit-level dtype, [hi - lo, n_clip]."""
    sign: np.ndarray | None
    """-1 for flipped columns, 1 otherwise, int32 [J]; None when none is flipped."""


@dataclass
class SplitPlan:
    """The per-layer plan of the split path; None from plan_split when it does not apply."""

    tiles: list[TilePlan]
    cycle_w: np.ndarray
    """Shift-add weight of each cycle, int64 [cycles]."""
    acc_dtype: type
    """int32 when every correction sum provably fits, else int64."""
    exact_cols: int
    """(Row tile, column) pairs needing no work: the ADC is the identity there."""
    residue_cols: int
    clip_cols: int


def pack_width(rows: int, digit_max: int, level_max: int,
               limit: int = F32_EXACT) -> tuple[int, int]:
    """(field bits b, cycles per float32 matmul): b holds a field's largest sum
    rows * digit_max * level_max (level_max: a column's level sum when rows is 1) without
    carrying, and the packed sum of `pack` fields
    stays below `limit` (2**24: every partial sum of the matmul is then an exact float32
    integer)."""
    field_max = rows * digit_max * level_max
    b = max(1, int(field_max).bit_length())
    pack = 1
    while field_max * sum(1 << (b * f) for f in range(pack + 1)) < limit:
        pack += 1
    return b, pack


def plan_split(pl: PreparedLayer) -> SplitPlan | None:
    """Classify every (row tile, column) of a layer once; None where the split path does
    not apply (per-slice or non-power-of-two steps: the residue rule needs one power-of-two
    step per row tile; signed partial sums of bipolar inputs: the bit-level path digitises
    them)."""
    if pl.col_steps is not None or pl.K == 0 or pl.params.adc_signed:
        return None  # the residue rule below is written for non-negative sums
    top = max_code(pl.params.adc.bits)
    digit_max = max_code(pl.params.dac.bits)
    peaks = column_peaks(pl.codes, pl.params.dac.bits)
    cycle_w = pl.cycle_w.astype(np.int64)
    tiles, n_exact, n_res, n_clip, bound = [], 0, 0, 0, 0
    for r in range(pl.row_tiles):
        lo, hi = r * pl.rows, min((r + 1) * pl.rows, pl.K)
        step = int(pl.steps[r])
        if step & (step - 1):
            return None
        levels = pl.codes[r, : hi - lo]
        fits = peaks[r] <= top * step
        res = fits if step > 1 else np.zeros_like(fits)
        clip = ~fits
        n_exact += int((fits & (step == 1)).sum())
        n_res, n_clip = n_res + int(res.sum()), n_clip + int(clip.sum())
        res_cols = None if res.all() else np.flatnonzero(res)
        res_levels, packs, b, bias = None, [], 1, False
        if res.any():
            low = (levels if res_cols is None else levels[:, res_cols]).astype(np.int64)
            low &= step - 1
            # the field's largest sum from the programmed low levels (often well below
            # rows * level_max, which packs more cycles per matmul)
            args = (1, min(digit_max, step - 1), max(1, int(low.sum(axis=0).max())))
            b, pack = pack_width(*args)
            packs = _packs(pl, step, b, pack, cycle_w)
            bias = pack_width(*args, limit=MANTISSA)[1] >= max(len(k.cycles) for k in packs)
            res_levels = np.ascontiguousarray(low, dtype=np.float32)
            if bias:
                res_levels = np.vstack([res_levels, np.full((1, low.shape[1]), MANTISSA,
                                                            np.float32)])
        clip_cols = np.flatnonzero(clip)
        sign = None
        if pl.flip is not None and pl.flip[r].any():
            sign = np.where(pl.flip[r], -1, 1).astype(np.int32)
        tiles.append(TilePlan(
            lo=lo, hi=hi, step=step, res_cols=res_cols, res_levels=res_levels, field_bits=b,
            packs=packs, bias=bias, clip_cols=clip_cols,
            clip_levels=np.ascontiguousarray(levels[:, clip_cols], pl.levels_dtype)
            if clip_cols.size else None, sign=sign))
        # |ADC(P) - P| <= step on residue columns; up to the column's peak where it clips
        bound += max(step, int(peaks[r][clip].max(initial=0)))
    bound *= int(np.abs(cycle_w).sum())
    return SplitPlan(tiles=tiles, cycle_w=cycle_w,
                     acc_dtype=np.int32 if bound < 2**30 else np.int64,
                     exact_cols=n_exact, residue_cols=n_res, clip_cols=n_clip)


def _packs(pl: PreparedLayer, step: int, b: int, pack: int, cycle_w: np.ndarray
           ) -> list[Pack]:
    """The packs of one row tile: lookup tables of packed low digits, one per pack. Where
    the one-multiply gather (_magic) needs fewer cycles per pack than fit, fewer are
    packed: a few more small matmuls cost less than field-by-field extraction."""
    qx = qmax(pl.params.quant.input_bits)
    values = np.arange(-qx, qx + 1, dtype=np.int64)
    digits = pl.params.input_planes(values[None])[:, 0]
    digits &= step - 1
    out, c0 = [], 0
    while c0 < pl.cycles:
        p = min(pack, pl.cycles - c0)
        magic = None
        for q in range(p, 0, -1):
            magic = _magic(step, b, range(c0, c0 + q), cycle_w)
            if magic is not None:
                p = q
                break
        cycles = range(c0, c0 + p)
        table = sum(digits[c] << (b * (c - c0)) for c in cycles)
        out.append(Pack(cycles=cycles, table=np.asarray(table, np.float32), magic=magic,
                        lows=np.uint32(sum(1 << (b * f) for f in range(p)))))
        c0 += p
    return out


def _magic(step: int, b: int, cycles: range, cycle_w: np.ndarray
           ) -> tuple[int, int, int] | None:
    """(multiplier, shift, mask) such that ((s & lows) * multiplier >> shift) & mask is
    sum_f cw[f] * (low bit of field f) for a uint32 s, where lows keeps each field's low
    bit; None where that does not apply: steps above 2 (the error is not the low bit),
    cycle weights not w, 2w, 4w, ... with w a power of two, or partial products that meet
    (so could carry). Field f's low bit times 2**o_g lands at b*f + o_g, o_g = X - (b-1)*g:
    the f = g products fill X .. X + p - 1; every other one must land elsewhere, all apart,
    and the window must stay inside 32 bits."""
    p, c0 = len(cycles), cycles.start
    w = int(cycle_w[c0])
    if step != 2 or w <= 0 or w & (w - 1) or \
            any(cycle_w[c] != w << (c - c0) for c in cycles):
        return None
    k = w.bit_length() - 1
    x = max((b - 1) * (p - 1), k)
    offsets = [x - (b - 1) * g for g in range(p)]
    bits = [b * f + o for f in range(p) for o in offsets]
    kept = [v for v in bits if v < 32]
    cross = [b * f + offsets[g] for f in range(p) for g in range(p) if f != g]
    if len(set(kept)) != len(kept) or any(x <= v < x + p for v in cross) or x + p > 31:
        return None
    return sum(1 << o for o in offsets), x - k, ((1 << p) - 1) << k


def mvm_split(pl: PreparedLayer, sp: SplitPlan, x_int: np.ndarray) -> np.ndarray:
    """y_int [vectors, N] float64 of the bit-level definition, from the fast path plus the
    ADC errors of the residue and clip columns. x_int holds integers (any dtype)."""
    y = mvm_fast(pl, x_int).astype(np.float64)
    if not any(t.res_levels is not None or t.clip_cols.size for t in sp.tiles):
        return y
    heavy = max([t.clip_cols.size * pl.cycles for t in sp.tiles] + [pl.J])
    chunk = max(1, CHUNK_ELEMENTS // max(heavy, 1))
    for lo in range(0, len(x_int), chunk):
        y[lo:lo + chunk] += shift_add_columns(pl, _errors(pl, sp, x_int[lo:lo + chunk]))
    return y


def _errors(pl: PreparedLayer, sp: SplitPlan, x_int: np.ndarray) -> np.ndarray:
    """sum over row tiles and cycles of cw[c] * s * (ADC(P) - P), per column: [V, J]."""
    V = len(x_int)
    idx = x_int.astype(np.intp) + qmax(pl.params.quant.input_bits)
    total = np.zeros((V, pl.J), dtype=sp.acc_dtype)
    planes = None
    for t in sp.tiles:
        err = np.zeros((V, pl.J), dtype=sp.acc_dtype) if t.sign is not None else total
        if t.res_levels is not None:
            _residue_errors(t, idx[:, t.lo:t.hi], sp, err)
        if t.clip_cols.size:
            if planes is None:
                planes = pl.params.input_planes(x_int)
            _clip_errors(pl, t, planes[:, :, t.lo:t.hi], sp, err)
        if t.sign is not None:
            err *= t.sign
            total += err
    return total


def _residue_errors(t: TilePlan, idx: np.ndarray, sp: SplitPlan, err: np.ndarray) -> None:
    """Add cw[c] * adc_error(P mod step) of the residue columns to err: one matmul per
    pack of cycles, in blocks of vectors that stay in cache."""
    V, rows = idx.shape
    lhs = []
    for pk in t.packs:
        a = np.empty((V, rows + t.bias), dtype=np.float32)
        a[:, :rows] = pk.table[idx]
        if t.bias:
            a[:, rows] = 1
        lhs.append(a)
    n = t.res_levels.shape[1]
    block = max(8, CACHE_ELEMENTS // max(n, 1))
    for lo in range(0, V, block):
        hi = min(V, lo + block)
        direct = t.res_cols is None
        acc = err[lo:hi] if direct else np.zeros((hi - lo, n), dtype=err.dtype)
        for pk, a in zip(t.packs, lhs):
            s = a[lo:hi] @ t.res_levels
            u = s.view(np.uint32) if t.bias else s.astype(np.int32).view(np.uint32)
            _add_pack(t.field_bits, t.step, sp.cycle_w, pk, u, acc)
        if not direct:
            err[lo:hi, t.res_cols] += acc


def _add_pack(b: int, step: int, cycle_w: np.ndarray, pk: Pack, u: np.ndarray,
              acc: np.ndarray) -> None:
    """acc += sum over the pack's cycles f of cw[f] * adc_error(field f of u mod step);
    u (uint32, any shape) holds the packed sums and is overwritten."""
    c0 = pk.cycles.start
    if pk.magic is not None:
        mult, shift, mask = pk.magic
        u &= pk.lows
        u *= np.uint32(mult)
        u >>= np.uint32(shift)
        u &= np.uint32(mask)
        acc += u.view(np.int32)
        return
    for c in pk.cycles:
        rho = (u >> np.uint32(b * (c - c0))).view(np.int32)
        rho &= min(step, 1 << b) - 1  # field mod step (a field may be narrower)
        e = rho if step == 2 else adc_error(rho, step)  # step 2: the error is rho
        e *= np.int32(cycle_w[c])
        acc += e


def _clip_errors(pl: PreparedLayer, t: TilePlan, digits: np.ndarray, sp: SplitPlan,
                 err: np.ndarray) -> None:
    """Add cw[c] * (ADC(P) - P) of the clip columns to err, P formed exactly (their
    columns only)."""
    C, V, rows = digits.shape
    p = digits.reshape(C * V, rows).astype(t.clip_levels.dtype) @ t.clip_levels
    d = adc(p.copy(), t.step, pl.params.adc.bits, integral=True)
    d -= p
    e = np.tensordot(pl.cycle_w, d.reshape(C, V, -1).astype(np.float64), axes=(0, 0))
    err[:, t.clip_cols] += e.astype(err.dtype)


# ---------------------------------------------------------------- lockstep groups
@dataclass
class SplitStack:
    """The split path of G layers run as one group (runtime/lockstep.py): layers with one
    row tile, every column on the residue path, the same packing and the same shift-add
    pattern, so each pack is one batched matmul over all of them."""

    tile: TilePlan
    """The first member's tile: packs, tables, field width, step, bias (shared)."""
    res_levels: np.ndarray
    """[G, rows (+1), J] float32."""
    cycle_w: np.ndarray
    acc_dtype: type
    pattern: np.ndarray
    """float64 shift-add weights of an output's columns."""
    qx: int


def stack_key(pl: PreparedLayer, sp: SplitPlan | None) -> tuple | None:
    """What layers must share to be stacked (None: this layer cannot be)."""
    if sp is None or len(sp.tiles) != 1 or pl.pattern is None:  # pattern: dense packing
        return None
    t = sp.tiles[0]
    if t.res_levels is None or t.res_cols is not None or t.clip_cols.size or \
            t.sign is not None:
        return None
    return ("split", t.step, t.field_bits, t.bias, tuple((pk.cycles.start, pk.cycles.stop,
                                                         pk.magic) for pk in t.packs),
            tuple(pl.pattern.tolist()), tuple(sp.cycle_w.tolist()), sp.acc_dtype,
            pl.params.quant.input_bits, pl.params.dac.bits, pl.params.quant.input_encoding)


def stack_plans(pls: list[PreparedLayer], sps: list[SplitPlan]) -> SplitStack:
    """One SplitStack from members with equal stack_key."""
    return SplitStack(tile=sps[0].tiles[0],
                      res_levels=np.stack([sp.tiles[0].res_levels for sp in sps]),
                      cycle_w=sps[0].cycle_w, acc_dtype=sps[0].acc_dtype,
                      pattern=pls[0].pattern.astype(np.float64),
                      qx=qmax(pls[0].params.quant.input_bits))


def stacked_errors(ss: SplitStack, x_int: np.ndarray) -> np.ndarray:
    """The ADC-error term of G layers at once: x_int [G, V, K] (integers, any dtype) ->
    [G, V, N] float64, what mvm_split adds to the fast path of each member."""
    t = ss.tile
    G, V, rows = x_int.shape
    idx = x_int.astype(np.intp) + ss.qx
    J = ss.res_levels.shape[2]
    acc = np.zeros((G, V, J), dtype=ss.acc_dtype)
    block = max(16, CACHE_ELEMENTS // max(G * J, 1))
    for lo in range(0, V, block):
        hi = min(V, lo + block)
        for pk in t.packs:
            a = np.empty((G, hi - lo, rows + t.bias), dtype=np.float32)
            a[..., :rows] = pk.table[idx[:, lo:hi]]
            if t.bias:
                a[..., rows] = 1
            s = a @ ss.res_levels
            u = s.view(np.uint32) if t.bias else s.astype(np.int32).view(np.uint32)
            _add_pack(t.field_bits, t.step, ss.cycle_w, pk, u, acc[:, lo:hi])
    m = ss.pattern.size
    return (acc.reshape(G, V, -1, m).astype(np.float64) @ ss.pattern)
