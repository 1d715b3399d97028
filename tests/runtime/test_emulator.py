"""Whole-program behaviour: a FAR block (BiLSTM heads in one loop) against an independent
numpy model of the same quantization, counters (run vs static), input checking, purity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from farc.runtime.counters import static_counts
from farc.runtime.emulator import Emulator
from farc.runtime.handmade import FarBlockWeights, far_block_program
from hypothesis import given, settings
from hypothesis import strategies as st
from xbar_flat import xp

from farc.errors import EmulatorError

P = xp(rows=32, cols=64, adc_bits=10)  # 32 * 1 * 3 = 96 <= 1023: lossless


def qlinear(x: np.ndarray, W: np.ndarray, b: np.ndarray, s_x: float, bits: int = 8):
    """The quantized matmul of docs/numerics.md, written independently of the runtime."""
    qw, qx = 2 ** (bits - 1) - 1, 2 ** (bits - 1) - 1
    peak = np.abs(W).max(axis=0)
    s_w = np.where(peak > 0, peak / qw, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / s_w.astype(np.float64)), -qw, qw)
    xi = np.clip(np.rint(x / np.float32(s_x)), -qx, qx)
    return (xi @ q).astype(np.float32) * (np.float32(s_x) * s_w) + b


def ref_block(w: FarBlockWeights, x: np.ndarray, x_peak: float) -> np.ndarray:
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    p = qlinear(x, *w.pre, x_peak / 127)
    heads = []
    for h in range(w.heads):
        ph = p[:, :, h * w.d:(h + 1) * w.d]
        outs = []
        for di in (0, 1):
            c = w.lstm[h][di]
            H = w.hidden[h][di]
            W = np.concatenate([c["w_ih"].T, c["w_hh"].T])
            hs, cs = np.zeros((len(x), H), np.float32), np.zeros((len(x), H), np.float32)
            out = np.zeros((len(x), x.shape[1], H), np.float32)
            steps = range(x.shape[1]) if di == 0 else range(x.shape[1] - 1, -1, -1)
            for t in steps:
                g = qlinear(np.concatenate([ph[:, t], hs], -1), W, c["b"],
                            max(x_peak, 1.0) / 127)
                i, f, u, o = (g[:, k * H:(k + 1) * H] for k in range(4))
                cs = sig(f) * cs + sig(i) * np.tanh(u)
                hs = sig(o) * np.tanh(cs)
                out[:, t] = hs
            outs.append(out)
        heads.append(qlinear(np.concatenate(outs, -1), *w.head_proj[h], 1 / 127))
    return x + qlinear(np.concatenate(heads, -1), *w.post, 1 / 127)


@pytest.fixture(scope="module")
def block():
    w = FarBlockWeights.random(D=16, heads=2, hidden=[(5, 3), (4, 4)], seed=3)
    x = np.random.default_rng(0).normal(size=(3, 7, 16)).astype(np.float32)
    return w, x, far_block_program(w, T=7, p=P, calib=x)


def test_far_block_matches_reference(block) -> None:
    w, x, prog = block
    got = Emulator(prog).run({"x": x})["y"]
    want = ref_block(w, x, float(np.abs(x).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_far_block_paths_identical(block) -> None:
    _, x, prog = block
    assert all(pl.lossless for pl in Emulator(prog).layers)
    np.testing.assert_array_equal(Emulator(prog, mvm_path="fast").run({"x": x})["y"],
                                  Emulator(prog, mvm_path="bitlevel").run({"x": x})["y"])


def test_static_counts_equal_run_counts(block) -> None:
    _, x, prog = block
    emu = Emulator(prog)
    emu.run({"x": x})
    static = static_counts(prog, batch=3)
    assert static.dac_pulses is None and emu.counters.dac_pulses > 0
    assert emu.counters.static_part() == static.static_part()


def test_counters_closed_forms(block) -> None:
    """Per-layer MVM counts: one per token for projections, one per token per step cell."""
    _, x, prog = block
    emu = Emulator(prog)
    emu.run({"x": x})
    c = emu.counters
    B, T = x.shape[:2]
    for i, L in enumerate(prog.layers):
        assert c.mvms_per_layer[i] == B * T, L["name"]
        for xb in L["crossbars"][0]:
            assert c.mvms_per_crossbar[xb] == B * T
        cycles, slices, signs = 8, 4, 2  # W8 differential: 7 magnitude bits on 2-bit cells
        J = L["N"] * slices * signs
    assert c.adc_conversions == sum(B * T * cycles * L["row_tiles"] * L["N"] * slices * signs
                                    for L in prog.layers)
    assert c.dac_conversions == sum(B * T * cycles * L["col_tiles"] * L["K"]
                                    for L in prog.layers)
    assert J > 0


def test_replicas_share_vectors() -> None:
    from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
    W = np.ones((8, 2), np.float32)
    x = np.ones((5, 8), np.float32)
    layer, arrays = pack_layer(W, None, scale_for_inputs(x, 8), xp(rows=8, cols=8),
                               replicas=2)
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [8]}, {"y": [2]}, [(layer, arrays)])
    emu = Emulator(prog)
    emu.run({"x": x})
    per = emu.counters.mvms_per_crossbar
    assert [per[i] for i in layer["crossbars"][0]] == [3, 3]
    assert [per[i] for i in layer["crossbars"][1]] == [2, 2]
    assert static_counts(prog, 5).static_part() == emu.counters.static_part()


@pytest.mark.parametrize("bad,match", [
    ({"x": np.zeros((2, 7, 15), np.float32)}, r"input 'x' has shape \[2, 7, 15\], expected "
                                              r"\['batch', 7, 16\]"),
    ({"x": np.zeros((2, 7, 16), np.int64)}, "input 'x' has dtype int64, expected float32"),
    ({}, "missing input 'x'"),
    ({"x": np.zeros((2, 7, 16), np.float32), "z": np.zeros(1)}, r"unknown inputs \['z'\]"),
])
def test_bad_inputs(block, bad, match) -> None:
    with pytest.raises(EmulatorError, match=match):
        Emulator(block[2]).run(bad)


def test_fast_path_refused_when_lossy() -> None:
    w = FarBlockWeights.random(D=8, heads=1, hidden=2)
    prog = far_block_program(w, T=2, p=xp(rows=128, cols=64, adc_bits=8))
    with pytest.raises(EmulatorError, match=r"mvm_path 'fast' is not exact here: layers \[0"):
        Emulator(prog, mvm_path="fast")


def test_runtime_imports_numpy_only() -> None:
    code = ("import sys, farc.runtime, farc.runtime.emulator, farc.runtime.handmade; "
            "bad = [m for m in ('torch', 'tvm', 'onnx', 'onnxruntime', 'scipy', 'farc.targets')"
            " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", ["auto", "bitlevel"])
def test_lockstep_changes_nothing(block, path) -> None:
    """Grouping the LSTMs of a loop body gives the same outputs and the same events."""
    _, x, prog = block
    a = Emulator(prog, mvm_path=path, lockstep=True)
    b = Emulator(prog, mvm_path=path, lockstep=False)
    assert any(len(g.members) > 1 for plan in a._plans.values() for lv in plan for g in lv)
    np.testing.assert_allclose(a.run({"x": x})["y"], b.run({"x": x})["y"], rtol=1e-6,
                               atol=1e-6)
    assert a.counters.to_dict() == b.counters.to_dict()


def test_lockstep_groups_equal_lstms() -> None:
    """Unpruned heads: each chain instruction of the 4 LSTMs joins a group of >= 4 (the
    three sigmoid gates of all LSTMs even form one group of 12)."""
    w = FarBlockWeights.random(D=8, heads=2, hidden=3, seed=1)
    x = np.random.default_rng(2).normal(size=(2, 4, 8)).astype(np.float32)
    emu = Emulator(far_block_program(w, T=4, p=P, calib=x))
    (plan,) = emu._plans.values()
    assert all(len(g.members) >= 4 for lv in plan for g in lv)
    assert [len(g.members) for lv in plan for g in lv if g.op == "mvm"] == [4]
    ref = Emulator(far_block_program(w, T=4, p=P, calib=x), lockstep=False)
    np.testing.assert_array_equal(emu.run({"x": x})["y"], ref.run({"x": x})["y"])


def test_hoisted_input_projection_changes_nothing(block) -> None:
    """Moving x_t @ q_x out of the loop gives the same integers: identical outputs and
    identical events (DAC pulses included)."""
    _, x, prog = block
    a = Emulator(prog, hoist=True)
    b = Emulator(prog, hoist=False)
    c = Emulator(prog, lockstep=False)
    assert any(g.hoist is not None for plan in a._plans.values() for lv in plan for g in lv)
    ya, yb, yc = (e.run({"x": x})["y"] for e in (a, b, c))
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, yc)
    assert a.counters.to_dict() == b.counters.to_dict() == c.counters.to_dict()


def test_hoist_refused_when_h_changes_before_the_mvm() -> None:
    """If the body rewrites the concatenated register before the MVM, no hoisting."""
    from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
    from farc.runtime.lockstep import plan_body
    W = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    layer, arrays = pack_layer(W, None, scale_for_inputs(np.ones(1), 8), P)
    body = [{"op": "concat", "in": ["xt", "h"], "axis": -1, "out": "z"},
            {"op": "scale", "in": ["h"], "value": 2.0, "out": "h"},
            {"op": "mvm", "layer": 0, "in": ["z"], "out": "y"},
            {"op": "slice", "in": ["y"], "axis": -1, "start": 0, "stop": 2, "out": "h"}]
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "zeros", "in": ["x"], "shape": [2], "out": "h"},
           {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": ["h"],
            "gather": [{"src": "x", "axis": 1, "dst": "xt"}], "body": body, "scatter": []},
           {"op": "output", "name": "y", "in": ["h"]}]
    prog = make_program(ins, {"x": [3, 2]}, {"y": [2]}, [(layer, arrays)])
    emu = Emulator(prog)
    plan = plan_body(body, emu.layers, True, prog.instructions[2]["gather"])
    assert all(g.hoist is None for lv in plan for g in lv)
    x = np.random.default_rng(1).normal(size=(2, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(emu.run({"x": x})["y"],
                                  Emulator(prog, lockstep=False).run({"x": x})["y"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "tanh", "output"]),
                          st.lists(st.sampled_from("abcde"), min_size=1, max_size=2),
                          st.sampled_from("abcde")), min_size=1, max_size=25))
def test_dependency_levels_linear_equals_quadratic(ops) -> None:
    """The linear-time level assignment equals the pairwise definition."""
    from farc.runtime.lockstep import _levels, _levels_quadratic
    body = [{"op": op, "in": ins, **({} if op == "output" else {"out": out})}
            for op, ins, out in ops]
    assert _levels(body) == _levels_quadratic(body)
