"""One test per opcode (VTA-style): a minimal hand-built program against an independent
numpy reference; exact equality wherever the path is integer or a pure data move.

The crossbar reference below re-derives docs/numerics.md from scratch with Python loops
over row tiles, cycles, signs and slices; it never calls farc.runtime's numerics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from _rt_util import linear_program, one_op_program, ref_linear, ref_quantize_weights, run1
from farc.runtime.builder import XbarParams
from farc.runtime.emulator import Emulator
from hypothesis import given, settings
from hypothesis import strategies as st
from xbar_flat import xp

RNG = np.random.default_rng(1234)


def rand(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- mvm
SWEEP = [
    xp(rows=rows, cols=16, cell_bits=cb, dac_bits=db, adc_bits=ab, mapping=mp,
               adc_range=rg, weight_bits=wb, input_bits=ib)
    for (rows, cb, db, ab, mp, rg), (wb, ib) in itertools.product(
        itertools.product([8, 16], [1, 2, 3], [1, 2, 4], [4, 7, 12], ["differential", "offset"],
                          ["full", "calibrated"]), [(8, 8)])
]
SWEEP += [xp(rows=8, cols=8, cell_bits=2, dac_bits=3, adc_bits=5, weight_bits=wb,
                     input_bits=ib, mapping=mp)
          for wb, ib, mp in itertools.product([2, 5, 16], [2, 6, 16], ["differential", "offset"])]


# ISAAC's flip encoding: lossless and lossy ADCs, both mappings, both ranges
SWEEP += [xp(rows=rows, cols=16, cell_bits=cb, dac_bits=db, adc_bits=ab, mapping=mp,
                     adc_range=rg, adc_flip=True)
          for rows, cb, db, ab, mp, rg in itertools.product(
              [8, 16], [1, 2], [1, 2], [3, 5, 8], ["differential", "offset"],
              ["full", "calibrated"])]


@pytest.mark.parametrize("p", SWEEP, ids=lambda p: (
    f"r{p.crossbar.rows}-c{p.crossbar.cell_bits}-d{p.dac.bits}-a{p.adc.bits}-{p.quant.mapping[:4]}-{p.adc.range[:3]}"
    f"-w{p.quant.weight_bits}-i{p.quant.input_bits}" + ("-flip" if p.adc.flip else "")))
def test_mvm_matches_definition(p: XbarParams) -> None:
    W, b, x = rand(21, 3), rand(3), rand(5, 21)
    want, pmax = ref_linear(W, b, x, p, calibrated=p.adc.range == "calibrated")
    got = run1(linear_program(W, b, x, p, adc_pmax=pmax), x=x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_mvm_adc_step_per_row_tile(mapping) -> None:
    """Calibrated ranges may differ per row tile: steps 1, 4 and 8 on three row tiles."""
    from _rt_util import ref_mvm_int

    p = xp(rows=8, cols=16, adc_bits=2, adc_range="calibrated", mapping=mapping)
    W, x = rand(20, 3), rand(6, 20)
    pmax = [2, 10, 24]
    prog = linear_program(W, None, x, p, adc_pmax=pmax)
    assert prog.layers[0]["adc_step"] == [1, 4, 8]
    emu = Emulator(prog)
    pl = emu.layers[0]
    x_int = np.clip(np.rint(x / np.float32(pl.in_scale)), -127, 127).astype(np.int64)
    q, _ = ref_quantize_weights(W, 8)
    want = ref_mvm_int(x_int, q, p, pmax).astype(np.float32) * pl.scale
    np.testing.assert_array_equal(emu.run({"x": x})["y"], want)


@pytest.mark.parametrize("p", [
    xp(rows=128, cols=128, cell_bits=2, dac_bits=1, adc_bits=8),
    xp(rows=128, cols=64, cell_bits=2, dac_bits=1, adc_bits=8, mapping="offset",
               weight_bits=16, input_bits=16),
    xp(rows=128, cols=128, cell_bits=2, dac_bits=2, adc_bits=10),
    xp(rows=64, cols=32, cell_bits=3, dac_bits=1, adc_bits=8, mapping="offset"),
], ids=["isaac8", "isaac16-offset", "dac2", "rows64-cell3"])
def test_mvm_full_range_step2(p: XbarParams) -> None:
    """ISAAC-like full-range ADCs step by 2 (Pmax just over the ADC's top code), over
    several row tiles with a partial last one; the slow reference rounds every P."""
    W, b, x = rand(300, 5), rand(5), rand(7, 300)
    prog = linear_program(W, b, x, p)
    assert set(Emulator(prog).layers[0].steps.tolist()) == {2}
    want, _ = ref_linear(W, b, x, p, calibrated=False)
    np.testing.assert_array_equal(run1(prog, x=x), want)


def test_mvm_fast_and_bitlevel_paths_identical() -> None:
    """Lossless layer: the one-matmul path and the per-cycle ADC path agree bit for bit."""
    p = xp(rows=16, cols=32, adc_bits=8)  # 16 * 1 * 3 = 48 <= 255
    W, b, x = rand(70, 9), rand(9), rand(6, 4, 70)
    prog = linear_program(W, b, x.reshape(-1, 70), p)
    fast, slow = Emulator(prog, mvm_path="fast"), Emulator(prog, mvm_path="bitlevel")
    assert fast.layers[0].lossless
    np.testing.assert_array_equal(fast.run({"x": x.reshape(-1, 70)})["y"],
                                  slow.run({"x": x.reshape(-1, 70)})["y"])


def test_mvm_lossless_equals_quantized_matmul() -> None:
    p = xp(rows=32, cols=64, adc_bits=9)
    W, b, x = rand(50, 7), rand(7), rand(8, 50)
    qx = 127
    s_x = float(np.abs(x).max()) / qx
    q, s_w = ref_quantize_weights(W, 8)
    x_int = np.clip(np.rint(x / np.float32(s_x)), -qx, qx).astype(np.int64)
    want = (x_int @ q).astype(np.float32) * (np.float32(s_x) * s_w) + b
    np.testing.assert_array_equal(run1(linear_program(W, b, x, p), x=x), want)


def test_mvm_batched_leading_axes() -> None:
    p = xp(rows=8, cols=16)
    W, x = rand(10, 4), rand(3, 5, 10)
    prog = one_op_program({"op": "mvm", "layer": 0, "in": ["x"]}, {"x": [5, 10]},
                          layers=[_layer(W, x, p)])
    got = run1(prog, x=x)
    flat = run1(linear_program(W, None, x.reshape(-1, 10), p), x=x.reshape(-1, 10))
    np.testing.assert_array_equal(got.reshape(-1, 4), flat)


def _layer(W, x, p):
    from farc.runtime.builder import pack_layer, scale_for_inputs
    return pack_layer(W, None, scale_for_inputs(x, p.quant.input_bits), p)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 40), N=st.integers(1, 6), rows=st.sampled_from([8, 16, 32]),
       cb=st.integers(1, 4), db=st.integers(1, 4), wb=st.integers(2, 10), ib=st.integers(2, 10),
       mapping=st.sampled_from(["differential", "offset"]), seed=st.integers(0, 2**16))
def test_property_lossless_exact(K, N, rows, cb, db, wb, ib, mapping, seed) -> None:
    """With an ADC that resolves every partial sum, y_int == x_int @ q exactly."""
    rng = np.random.default_rng(seed)
    W, x = rng.normal(size=(K, N)).astype(np.float32), rng.normal(size=(3, K)).astype(np.float32)
    p = xp(rows=rows, cols=8, cell_bits=cb, dac_bits=db, adc_bits=16, weight_bits=wb,
                   input_bits=ib, mapping=mapping)
    qx = 2 ** (ib - 1) - 1
    s_x = float(np.abs(x).max()) / qx
    q, s_w = ref_quantize_weights(W, wb)
    x_int = np.clip(np.rint(x / np.float32(s_x)), -qx, qx).astype(np.int64)
    want = (x_int @ q).astype(np.float32) * (np.float32(s_x) * s_w)
    prog = linear_program(W, None, x, p)
    for path in ("auto", "bitlevel"):
        np.testing.assert_array_equal(Emulator(prog, mvm_path=path).run({"x": x})["y"], want)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 30), N=st.integers(1, 4), rows=st.sampled_from([8, 16]),
       cb=st.integers(1, 3), db=st.integers(1, 3), ab=st.integers(1, 8),
       mapping=st.sampled_from(["differential", "offset"]), calibrated=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_lossy_adc_vs_slow_reference(K, N, rows, cb, db, ab, mapping, calibrated,
                                              seed) -> None:
    rng = np.random.default_rng(seed)
    W, x = rng.normal(size=(K, N)).astype(np.float32), rng.normal(size=(4, K)).astype(np.float32)
    b = rng.normal(size=N).astype(np.float32)
    p = xp(rows=rows, cols=8, cell_bits=cb, dac_bits=db, adc_bits=ab, mapping=mapping,
                   adc_range="calibrated" if calibrated else "full", weight_bits=6,
                   input_bits=5)
    want, pmax = ref_linear(W, b, x, p, calibrated)
    np.testing.assert_array_equal(run1(linear_program(W, b, x, p, adc_pmax=pmax), x=x), want)


# ---------------------------------------------------------------- digital ops
@pytest.mark.parametrize("op,fn", [("add", np.add), ("sub", np.subtract), ("mul", np.multiply)])
def test_binary_elementwise(op, fn) -> None:
    a, b = rand(3, 4, 5), rand(3, 4, 5)
    prog = one_op_program({"op": op, "in": ["a", "b"]}, {"a": [4, 5], "b": [4, 5]})
    np.testing.assert_array_equal(run1(prog, a=a, b=b), fn(a, b))


def test_input_and_output_identity() -> None:
    x = rand(2, 3)
    prog = one_op_program({"op": "scale", "in": ["x"], "value": 1.0}, {"x": [3]})
    np.testing.assert_array_equal(run1(prog, x=x), x)


def test_const_broadcasts_over_batch() -> None:
    x, c = rand(4, 3, 2), rand(3, 2)
    ins = [{"op": "input", "name": "x", "out": "x"}, {"op": "const", "name": "c", "out": "c"},
           {"op": "add", "in": ["x", "c"], "out": "y"}, {"op": "output", "name": "y", "in": ["y"]}]
    from farc.runtime.builder import make_program
    prog = make_program(ins, {"x": [3, 2]}, {"y": [3, 2]}, constants={"c": c})
    np.testing.assert_array_equal(run1(prog, x=x), x + c)


def test_sigmoid() -> None:
    x = np.concatenate([rand(2, 50) * 5, np.array([[-100.0] * 50, [100.0] * 50], np.float32)])
    got = run1(one_op_program({"op": "sigmoid", "in": ["x"]}, {"x": [50]}), x=x)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6,
                               atol=1e-7)


def test_tanh() -> None:
    x = rand(3, 40) * 3
    got = run1(one_op_program({"op": "tanh", "in": ["x"]}, {"x": [40]}), x=x)
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=1e-6, atol=1e-7)


def test_gelu_erf_form() -> None:
    x = np.linspace(-9, 9, 600, dtype=np.float32).reshape(3, -1)
    got = run1(one_op_program({"op": "gelu", "in": ["x"]}, {"x": [x.shape[1]]}), x=x)
    want = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(
        x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-12)


def test_layernorm() -> None:
    x, g, b = rand(2, 3, 8), rand(8), rand(8)
    ins = [{"op": "input", "name": "x", "out": "x"}, {"op": "const", "name": "g", "out": "g"},
           {"op": "const", "name": "b", "out": "b"},
           {"op": "layernorm", "in": ["x", "g", "b"], "eps": 1e-6, "out": "y"},
           {"op": "output", "name": "y", "in": ["y"]}]
    from farc.runtime.builder import make_program
    prog = make_program(ins, {"x": [3, 8]}, {"y": [3, 8]}, constants={"g": g, "b": b})
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(run1(prog, x=x), want * g + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(axis) -> None:
    x = rand(2, 4, 6) * 30
    got = run1(one_op_program({"op": "softmax", "in": ["x"], "axis": axis}, {"x": [4, 6]}), x=x)
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=axis, keepdims=True), rtol=1e-5, atol=1e-7)


def test_matmul() -> None:
    a, b = rand(2, 3, 4, 5), rand(2, 3, 5, 6)
    prog = one_op_program({"op": "matmul", "in": ["a", "b"]}, {"a": [3, 4, 5], "b": [3, 5, 6]})
    np.testing.assert_allclose(run1(prog, a=a, b=b), a.astype(np.float64) @ b, rtol=1e-5,
                               atol=1e-5)


def test_scale() -> None:
    x = rand(2, 5)
    got = run1(one_op_program({"op": "scale", "in": ["x"], "value": 0.125}, {"x": [5]}), x=x)
    np.testing.assert_array_equal(got, x * np.float32(0.125))


# ---------------------------------------------------------------- data moves
def test_reshape() -> None:
    x = rand(2, 3, 4)
    got = run1(one_op_program({"op": "reshape", "in": ["x"], "shape": [4, -1]}, {"x": [3, 4]}),
               x=x)
    np.testing.assert_array_equal(got, x.reshape(2, 4, 3))


def test_transpose() -> None:
    x = rand(2, 3, 4, 5)
    got = run1(one_op_program({"op": "transpose", "in": ["x"], "perm": [0, 3, 1, 2]},
                              {"x": [3, 4, 5]}), x=x)
    np.testing.assert_array_equal(got, x.transpose(0, 3, 1, 2))


def test_concat() -> None:
    a, b, c = rand(2, 3), rand(2, 1), rand(2, 4)
    got = run1(one_op_program({"op": "concat", "in": ["a", "b", "c"], "axis": -1},
                              {"a": [3], "b": [1], "c": [4]}), a=a, b=b, c=c)
    np.testing.assert_array_equal(got, np.concatenate([a, b, c], axis=1))


def test_slice() -> None:
    x = rand(2, 10, 3)
    got = run1(one_op_program({"op": "slice", "in": ["x"], "axis": 1, "start": 2, "stop": 7},
                              {"x": [10, 3]}), x=x)
    np.testing.assert_array_equal(got, x[:, 2:7])


def test_zeros() -> None:
    x = rand(3, 2)
    got = run1(one_op_program({"op": "zeros", "in": ["x"], "shape": [4, 5]}, {"x": [2]}), x=x)
    np.testing.assert_array_equal(got, np.zeros((3, 4, 5), np.float32))


@pytest.mark.parametrize("reverse", [False, True])
def test_loop_gather_carry_scatter(reverse) -> None:
    """A running sum over axis 1: carry s, gather x_t, scatter s_t (reverse flips both)."""
    x = rand(2, 6, 3)
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "zeros", "in": ["x"], "shape": [3], "out": "s"},
           {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": ["s"],
            "gather": [{"src": "x", "axis": 1, "dst": "xt", "reverse": reverse}],
            "body": [{"op": "add", "in": ["s", "xt"], "out": "s"}],
            "scatter": [{"src": "s", "axis": 1, "dst": "ys", "reverse": reverse}]},
           {"op": "output", "name": "y", "in": ["ys"]},
           {"op": "output", "name": "last", "in": ["s"]}]
    from farc.runtime.builder import make_program
    prog = make_program(ins, {"x": [6, 3]}, {"y": [6, 3], "last": [3]})
    out = Emulator(prog).run({"x": x})
    want = np.zeros_like(x)
    acc = np.zeros((2, 3), np.float32)
    for t in (range(5, -1, -1) if reverse else range(6)):
        acc = acc + x[:, t]
        want[:, t] = acc
    np.testing.assert_array_equal(out["y"], want)
    np.testing.assert_array_equal(out["last"], acc)


def test_partial_sum_max_matches_definition() -> None:
    """The calibration helper returns the largest analog partial sum of the definition."""
    from _rt_util import ref_partial_sums
    from farc.runtime.crossbar import partial_sum_max

    p = xp(rows=8, cols=16, dac_bits=2, cell_bits=3)
    W, x = rand(19, 4), rand(7, 19)
    emu = Emulator(linear_program(W, None, x, p))
    pl = emu.layers[0]
    x_int = np.clip(np.rint(x / np.float32(pl.in_scale)), -127, 127).astype(np.int64)
    q, _ = ref_quantize_weights(W, 8)
    want = max(int(P.max()) for _, _, _, _, P, _, _ in ref_partial_sums(x_int, q, p))
    assert partial_sum_max(pl, x) == want


@pytest.mark.parametrize("dac_bits", [1, 2, 3])
def test_dac_pulses_count_nonzero_digits(dac_bits) -> None:
    """DAC pulses = non-zero input digits over all cycles, once per column tile."""
    p = xp(rows=8, cols=8, dac_bits=dac_bits)
    W, x = rand(10, 3), rand(4, 10)
    emu = Emulator(linear_program(W, None, x, p))
    emu.run({"x": x})
    pl = emu.layers[0]
    u = np.clip(np.rint(x / np.float32(pl.in_scale)), -127, 127).astype(np.int64) + 128
    digits = [(u >> (c * dac_bits)) & (2**dac_bits - 1) for c in range(math.ceil(8 / dac_bits))]
    assert emu.counters.dac_pulses == sum(int(np.count_nonzero(d)) for d in digits) * pl.col_tiles
