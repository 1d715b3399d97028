"""The split MVM path (runtime/split.py) against the bit-level definition, bit for bit:
random crossbar parameters (rows, cells, DACs, ADC widths and ranges, mappings, encodings,
flip), weights and inputs; the classification of (row tile, column) pairs; the bit gather;
and whole programs (loops included) run on `auto` against `bitlevel`."""

from __future__ import annotations

import numpy as np
import pytest
from farc.runtime import crossbar as xb
from farc.runtime.builder import XbarParams, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.handmade import FarBlockWeights, far_block_program
from farc.runtime.split import _magic, mvm_split, pack_width, plan_split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xbar_flat import xp


def _layer(W: np.ndarray, x: np.ndarray, p: XbarParams, adc_pmax=None) -> xb.PreparedLayer:
    s_x = scale_for_inputs(x, p.quant.input_bits)
    layer, arrays = pack_layer(W, None, s_x, p, adc_pmax=adc_pmax)
    return xb.prepare_layer(0, layer, arrays)


def _x_int(pl: xb.PreparedLayer, x: np.ndarray) -> np.ndarray:
    return xb.quantize_input(x, pl.in_scale, pl.params.quant.input_bits)


@st.composite
def layers(draw):
    """A random layer (parameters, weights, inputs) with one power-of-two step per row
    tile: full-range ADCs (often lossy) and calibrated ranges below the peak (clipping)."""
    p = xp(
        rows=draw(st.sampled_from([8, 16, 32, 64, 128])),
        cols=draw(st.sampled_from([8, 16, 64])),
        cell_bits=draw(st.integers(1, 3)), dac_bits=draw(st.integers(1, 3)),
        adc_bits=draw(st.integers(2, 9)), weight_bits=draw(st.integers(3, 8)),
        input_bits=draw(st.integers(3, 8)),
        mapping=draw(st.sampled_from(["differential", "offset"])),
        adc_flip=draw(st.booleans()),
        input_encoding=draw(st.sampled_from(["offset", "sign_magnitude"])),
        adc_range=draw(st.sampled_from(["full", "calibrated"])))
    K, N = draw(st.integers(1, 300)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, N)) * rng.uniform(0.1, 3.0, size=(1, N))
    if draw(st.booleans()):  # sparse weights: many columns with small peaks
        W *= rng.random((K, N)) < 0.2
    x = rng.normal(size=(draw(st.integers(1, 40)), K)).astype(np.float32)
    if draw(st.booleans()):
        x = np.abs(x)  # one-sided inputs: top digits constant
    pmax = None
    if p.adc.range == "calibrated":  # a fraction of the physical peak: some columns clip
        pmax = draw(st.floats(0.02, 1.0)) * p.pmax
    return p, W, x, pmax


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_split_equals_bitlevel(case) -> None:
    p, W, x, pmax = case
    pl = _layer(W, x, p, pmax)
    sp = plan_split(pl)
    assert sp is not None  # pow2 steps per row tile: the split path applies
    x_int = _x_int(pl, x)
    want = xb.mvm_bitlevel(pl, x_int)
    got = mvm_split(pl, sp, x_int)
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_extreme_inputs_and_levels() -> None:
    """All-ones digits on all-odd stored levels: every field sum at its maximum (the
    packing's carry bound is tight), with and without flip, on 128-row tiles."""
    for flip in (False, True):
        p = xp(rows=128, cols=64, adc_bits=8, adc_flip=flip)
        K, N = 256, 8
        W = np.full((K, N), 1.0)
        W[:, 1::2] = -1.0
        x = np.concatenate([np.full((2, K), v, np.float32) for v in (1.0, -1.0, 0.0)])
        x[4] = np.linspace(-1, 1, K)
        pl = _layer(W, x, p)
        sp = plan_split(pl)
        x_int = _x_int(pl, x)
        np.testing.assert_array_equal(mvm_split(pl, sp, x_int), xb.mvm_bitlevel(pl, x_int))


def test_wide_parameters_take_int64_accumulators() -> None:
    """Clipping columns on 4096-row tiles with 8-bit cells and DACs and 16-bit inputs: the
    errors exceed int32, the plan says so, and the result is still the definition's."""
    p = xp(rows=4096, cols=64, cell_bits=8, dac_bits=8, adc_bits=6, weight_bits=8,
                   input_bits=16, adc_range="calibrated")
    rng = np.random.default_rng(3)
    W = np.abs(rng.normal(size=(4096, 2))) + 1.0  # large levels on every row
    x = np.ones((3, 4096), np.float32)  # every digit at its top: P near the peak
    x[1:] = rng.random((2, 4096))
    pl = _layer(W, x, p, adc_pmax=p.pmax / 50)
    sp = plan_split(pl)
    assert sp.acc_dtype == np.int64 and sp.clip_cols > 0
    x_int = _x_int(pl, x)
    np.testing.assert_array_equal(mvm_split(pl, sp, x_int), xb.mvm_bitlevel(pl, x_int))


def test_classification() -> None:
    """Lossless layer: every pair exact, no work. ISAAC-like 8-bit full range without flip
    (step 2, cannot clip): every pair on the residue path. A calibrated range well below
    the peak: some pairs may clip and are formed exactly."""
    rng = np.random.default_rng(0)
    W, x = rng.normal(size=(200, 6)), rng.normal(size=(4, 200)).astype(np.float32)
    J = 6 * XbarParams().slices * XbarParams().signs
    sp = plan_split(_layer(W, x, xp(adc_bits=9)))
    assert (sp.exact_cols, sp.residue_cols, sp.clip_cols) == (2 * J, 0, 0)
    sp = plan_split(_layer(W, x, xp(adc_bits=8)))
    assert (sp.exact_cols, sp.residue_cols, sp.clip_cols) == (0, 2 * J, 0)
    pl = _layer(W, x, xp(adc_bits=6, adc_range="calibrated"), adc_pmax=40)
    sp = plan_split(pl)
    peaks = pl.codes.sum(axis=1).max(axis=0)  # 1-bit DAC: a column's peak is its level sum
    assert sp.clip_cols == int((pl.codes.sum(axis=1) > 63).sum()) and sp.clip_cols > 0
    assert peaks.max() > 63


def test_slice_granularity_keeps_the_definition() -> None:
    """Per-slice or uniform steps are outside the residue rule: no split plan."""
    rng = np.random.default_rng(1)
    W, x = rng.normal(size=(40, 3)), rng.normal(size=(4, 40)).astype(np.float32)
    for p in (xp(adc_bits=6, adc_granularity="slice"),
              xp(adc_bits=6, adc_step_rule="uniform")):
        assert plan_split(_layer(W, x, p)) is None


@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 4), st.integers(0, 2**31 - 1))
@settings(max_examples=200, deadline=None)
def test_magic_gathers_the_low_bits(b: int, p: int, k: int, seed: int) -> None:
    """Where _magic accepts (b, p), one multiply gathers each field's low bit, weighted
    2**k, 2**(k+1), ...: checked against a plain per-field loop on random field values."""
    cycle_w = np.array([2**k << f for f in range(p)], dtype=np.int64)
    magic = _magic(2, b, range(p), cycle_w)
    if magic is None or b * p > 31:
        return
    mult, shift, mask = magic
    rng = np.random.default_rng(seed)
    fields = rng.integers(0, 2**b, size=(50, p))
    s = (fields << (b * np.arange(p))).sum(axis=1).astype(np.uint32)
    lows = np.uint32(sum(1 << (b * f) for f in range(p)))
    got = (((s & lows) * np.uint32(mult)) >> np.uint32(shift)) & np.uint32(mask)
    want = ((fields & 1) << (k + np.arange(p))).sum(axis=1)
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_pack_width_bound() -> None:
    """The packed maximum stays under the limit and one more field would not."""
    for rows, d, lv in [(128, 1, 1), (64, 1, 1), (4, 1, 1), (128, 3, 3), (1, 1, 37)]:
        b, pack = pack_width(rows, d, lv)
        top = rows * d * lv
        assert top < 2**b
        assert top * sum(2 ** (b * f) for f in range(pack)) < 2**24
        assert top * sum(2 ** (b * f) for f in range(pack + 1)) >= 2**24


@pytest.mark.parametrize("flip", [False, True])
def test_programs_with_loops(flip: bool) -> None:
    """A FAR block (BiLSTMs in a loop) with a lossy 8-bit ADC: `auto` (split path) and
    `bitlevel` give the same outputs, per-MVM integers and counters."""
    w = FarBlockWeights.random(D=24, heads=2, hidden=[(6, 5), (4, 4)], seed=5)
    x = np.random.default_rng(2).normal(size=(3, 6, 24)).astype(np.float32)
    p = xp(rows=16, cols=32, adc_bits=4 if flip else 5, adc_flip=flip)  # lossy
    prog = far_block_program(w, T=6, p=p, calib=x)
    a = Emulator(prog, trace=True)
    b = Emulator(prog, mvm_path="bitlevel", trace=True)
    assert any(a._split_plan(i) is not None for i in range(len(a.layers)))
    ya, yb = a.run({"x": x})["y"], b.run({"x": x})["y"]
    np.testing.assert_array_equal(ya.view(np.int32), yb.view(np.int32))
    for layer, tr in a.traces.items():
        for s, t in zip(tr, b.traces[layer]):
            np.testing.assert_array_equal(s.y_int, t.y_int)
    assert a.counters.to_dict() == b.counters.to_dict()
    c = Emulator(prog)  # lockstep, not traced: lossy cell MVMs stacked on the split path
    assert any(g.mvm is not None and g.mvm.split is not None
               for plan in c._plans.values() for level in plan for g in level)
    np.testing.assert_array_equal(c.run({"x": x})["y"].view(np.int32), ya.view(np.int32))
