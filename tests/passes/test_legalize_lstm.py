"""LegalizeLSTM: farc.lstm recurrence -> farc.lstm_scan over a one-matmul cell function."""

import numpy as np
import pytest
import tvm
from _pass_models import imported
from farc.passes._crossbar_ir import LSTM_EXTERN, const_label, const_value, is_scan, named_const
from farc.passes.legalize_lstm import LegalizeLSTM
from tvm import relax

pytestmark = pytest.mark.tvm


def _one_lstm(reverse: int, inputs: int = 3, hidden: int = 2, steps: int = 5) -> tvm.IRModule:
    rng = np.random.default_rng(0)
    w_ih, w_hh = rng.normal(size=(4 * hidden, inputs)), rng.normal(size=(4 * hidden, hidden))
    b_ih, b_hh = rng.normal(size=4 * hidden), rng.normal(size=4 * hidden)
    x = relax.Var("x", relax.TensorType((1, steps, inputs), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            consts = [named_const(v, "lstm", f"rnn.{n}") for v, n in
                      ((w_ih, "weight_ih_l0"), (w_hh, "weight_hh_l0"),
                       (b_ih, "bias_ih_l0"), (b_hh, "bias_hh_l0"))]
            y = bb.emit(relax.call_dps_packed(
                LSTM_EXTERN, relax.Tuple([x, *consts, relax.prim_value(reverse)]),
                relax.TensorType((1, steps, hidden), "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), (w_ih, w_hh, b_ih, b_hh)


def _calls(func, name):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name else None)
    return found


@pytest.mark.parametrize("reverse", [0, 1])
def test_recurrence_becomes_scan_over_stacked_cell(reverse):
    mod, (w_ih, w_hh, b_ih, b_hh) = _one_lstm(reverse)
    out = LegalizeLSTM()(mod)
    binding = out["main"].body.blocks[0].bindings[0]
    assert is_scan(binding.value)
    assert int(binding.value.args[3].value) == reverse
    cell = out[binding.value.args[2]]
    (mm,) = _calls(cell, "relax.matmul")  # ONE crossbar matmul per step
    w = mm.args[1]
    assert const_label(w) == ("lstm_cell", "rnn")
    np.testing.assert_allclose(const_value(w), np.concatenate([w_ih.T, w_hh.T]), rtol=1e-6)
    (add,) = [a for a in _calls(cell, "relax.add") if isinstance(a.args[1], tvm.ir.GenericConst)]
    np.testing.assert_allclose(const_value(add.args[1]), b_ih + b_hh, rtol=1e-6)
    assert len(_calls(cell, "relax.sigmoid")) == 3 and len(_calls(cell, "relax.tanh")) == 2
    assert relax.analysis.well_formed(out) is not False


def test_far_model_has_one_cell_per_head_and_direction():
    out = LegalizeLSTM()(imported("far"))
    cells = [gv for gv in out.get_global_vars() if gv.name_hint.startswith("cell_")]
    assert len(cells) == 2 * 2 * 2  # blocks x heads x directions


def test_do_not_touch_models_without_lstms():
    # DeiT has no recurrence: the pass must return a structurally identical module.
    mod = imported("deit")
    tvm.ir.assert_structural_equal(LegalizeLSTM()(mod), mod)
