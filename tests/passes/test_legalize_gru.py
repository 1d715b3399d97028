"""LegalizeGRU: farc.gru recurrence -> farc.lstm_scan over a two-matmul cell function."""

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from farc.passes._crossbar_ir import GRU_EXTERN, const_label, const_value, is_scan, named_const
from farc.passes.legalize_gru import LegalizeGRU
from tvm import relax

pytestmark = pytest.mark.tvm

INPUTS, HIDDEN, STEPS = 3, 2, 5


def _one_gru(reverse: int, lbr: int, h0: np.ndarray | None = None):
    rng = np.random.default_rng(reverse + 2 * lbr)
    params = (rng.normal(size=(3 * HIDDEN, INPUTS)), rng.normal(size=(3 * HIDDEN, HIDDEN)),
              rng.normal(size=3 * HIDDEN), rng.normal(size=3 * HIDDEN))
    x = relax.Var("x", relax.TensorType((1, STEPS, INPUTS), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            consts = [named_const(v, "gru", f"rnn.{n}") for v, n in zip(
                params, ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))]
            init = [] if h0 is None else [relax.const(h0.astype(np.float32))]
            y = bb.emit(relax.call_dps_packed(
                GRU_EXTERN, relax.Tuple([x, *consts, relax.prim_value(reverse),
                                         relax.prim_value(lbr), *init]),
                relax.TensorType((1, STEPS, HIDDEN), "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), params


def _calls(func, name):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name else None)
    return found


def _layers(cell) -> dict:
    """kind -> (weight, bias) of the cell's two crossbar matmuls."""
    out = {}
    adds = [a for a in _calls(cell, "relax.add") if isinstance(a.args[1], tvm.ir.GenericConst)]
    for mm in _calls(cell, "relax.matmul"):
        kind, name = const_label(mm.args[1])
        (bias,) = [a.args[1] for a in adds if const_label(a.args[1])[1] == name + ".bias"]
        out[kind] = (name, const_value(mm.args[1]), const_value(bias))
    return out


def _step(layers: dict, x: np.ndarray, h: np.ndarray, lbr: int) -> np.ndarray:
    """One step from the two layers' constants, as docs/compiler.md writes the cell."""
    _, w, b = layers["gru_cell"]
    _, w_hn, b_hn = layers["gru_hidden"]
    r, z, n_x = np.split(np.concatenate([x, h], axis=1) @ w + b, 3, axis=1)
    r, z = 1 / (1 + np.exp(-r)), 1 / (1 + np.exp(-z))
    n_h = r * (h @ w_hn + b_hn) if lbr else (r * h) @ w_hn + b_hn
    n = np.tanh(n_x + n_h)
    return (1 - z) * n + z * h


@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("lbr", [0, 1])
def test_recurrence_becomes_scan_over_two_layer_cell(reverse, lbr):
    mod, (w_ih, w_hh, b_ih, b_hh) = _one_gru(reverse, lbr)
    out = LegalizeGRU()(mod)
    binding = out["main"].body.blocks[0].bindings[0]
    assert is_scan(binding.value) and int(binding.value.args[3].value) == reverse
    cell = out[binding.value.args[2]]
    assert len(cell.params) == 2  # x_t, h: one carried state
    layers = _layers(cell)
    assert {k: v[0] for k, v in layers.items()} == {"gru_cell": "rnn",
                                                    "gru_hidden": "rnn.hidden"}
    assert layers["gru_cell"][1].shape == (INPUTS + HIDDEN, 3 * HIDDEN)
    assert layers["gru_hidden"][1].shape == (HIDDEN, HIDDEN)
    rng = np.random.default_rng(5)
    x, h = rng.normal(size=(4, INPUTS)), rng.normal(size=(4, HIDDEN))
    if lbr:  # torch's GRU is linear_before_reset = 1
        ref = torch.nn.GRUCell(INPUTS, HIDDEN).double()
        with torch.no_grad():
            for p, v in zip((ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh),
                            (w_ih, w_hh, b_ih, b_hh)):
                p.copy_(torch.from_numpy(v))
            want = ref(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    else:  # ONNX GRU, linear_before_reset = 0, gates in torch's order r, z, n
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        gx, gh = x @ w_ih.T + b_ih, h @ w_hh[:2 * HIDDEN].T + b_hh[:2 * HIDDEN]
        r = sig(gx[:, :HIDDEN] + gh[:, :HIDDEN])
        z = sig(gx[:, HIDDEN:2 * HIDDEN] + gh[:, HIDDEN:])
        n = np.tanh(gx[:, 2 * HIDDEN:] + (r * h) @ w_hh[2 * HIDDEN:].T + b_hh[2 * HIDDEN:])
        want = (1 - z) * n + z * h
    np.testing.assert_allclose(_step(layers, x, h, lbr), want, rtol=1e-5, atol=1e-5)
    assert relax.analysis.well_formed(out) is not False


def test_constant_initial_state_is_a_scan_argument():
    h0 = np.array([0.5, -0.25], np.float32)
    out = LegalizeGRU()(_one_gru(0, 0, h0)[0])
    binding = out["main"].body.blocks[0].bindings[0]
    np.testing.assert_array_equal(const_value(binding.value.args[4]), h0)


def test_input_module_unchanged_and_lstms_left_alone():
    mod, _ = _one_gru(0, 1)
    before = tvm_ffi.structural_hash(mod)
    LegalizeGRU()(mod)
    assert tvm_ffi.structural_hash(mod) == before
    from _pass_models import imported  # a FAR model: LSTMs only, nothing for this pass

    far = imported("far")
    tvm.ir.assert_structural_equal(LegalizeGRU()(far), far)
