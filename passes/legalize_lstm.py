"""LegalizeLSTM: each LSTM recurrence node -> a scan over a crossbar-shaped cell function.

Expects: the importer's IR (`farc.compiler.importer`), where each LSTM is
`R.call_dps_packed("farc.lstm", (x [B,T,I], W_ih [4H,I], W_hh [4H,H], b_ih, b_hh, reverse))`
with constant weights named in their spans.

Leaves: for each LSTM a private Relax function `cell_<layer>(x_t [B,I], h [B,H], c [B,H])
-> (h', c')` whose body is ONE matmul of `concat[x_t ; h]` with the stacked constant
`[W_ih^T ; W_hh^T]` ((I+H) x 4H, named `lstm_cell:<layer>`) plus the summed bias, and the
digital gate math (split into i, f, g, o; sigmoid/tanh; c' = f*c + i*g; h' = o*tanh(c')).
The recurrence becomes `R.call_pure_packed("farc.lstm_scan", x, cell_<layer>, reverse)`:
the scan runs the cell over T steps from zero state (from the last step when reverse = 1)
and returns every h in original time order. IR size does not depend on T. A recurrence
with a constant initial state (the importer's two extra fields h0, c0 [H]) keeps them as
two more scan arguments, `(x, cell, reverse, h0, c0)`: the scan starts from h0, c0 on
every batch row.

Returns a new module; the input is left unchanged. Run before PartitionCrossbar, which then
finds the cell's matmul like any other constant matmul. Does not handle batch-dependent
initial states, multi-layer or projected LSTMs (the importer refuses those)."""

from __future__ import annotations

import numpy as np
import tvm
from farc.passes._crossbar_ir import (
    LSTM_EXTERN,
    SCAN_EXTERN,
    const_label,
    const_value,
    is_extern_call,
    named_const,
    rewrite_functions,
)
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="LegalizeLSTM")
class LegalizeLSTM:
    """Rewrite every `farc.lstm` recurrence into a `farc.lstm_scan` over a cell function."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        return rewrite_functions(mod, rewriter, rewriter.cells)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.cells: dict[tvm.ir.GlobalVar, relax.Function] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_extern_call(call, "relax.call_dps_packed", LSTM_EXTERN):
            return call
        x, w_ih, w_hh, b_ih, b_hh, reverse, *state = call.args[1].fields
        layer = const_label(w_ih)[1].rsplit(".", 1)[0]
        w = np.concatenate([const_value(w_ih).T, const_value(w_hh).T], axis=0)
        b = const_value(b_ih) + const_value(b_hh)
        batch = int(x.ty.shape[0])
        cell = _cell_function(layer, batch, w, b)
        gv = tvm.ir.GlobalVar("cell_" + layer.replace(".", "_"))
        relax.expr._update_type(gv, cell.ty)
        self.cells[gv] = cell
        return relax.call_pure_packed(SCAN_EXTERN, x, gv, reverse, *state, ty_args=call.ty)


def _cell_function(layer: str, batch: int, w: np.ndarray, b: np.ndarray) -> relax.Function:
    """cell(x_t, h, c) -> (h', c') with one crossbar matmul and digital gate math."""
    inputs, hidden = w.shape[0] - w.shape[1] // 4, w.shape[1] // 4
    x_t = relax.Var("x_t", relax.TensorType((batch, inputs), "float32"))
    h = relax.Var("h", relax.TensorType((batch, hidden), "float32"))
    c = relax.Var("c", relax.TensorType((batch, hidden), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("cell", [x_t, h, c], private=True):
        with bb.dataflow():
            xh = bb.emit(relax.op.concat([x_t, h], axis=1))
            g = bb.emit(relax.op.matmul(xh, named_const(w, "lstm_cell", layer)))
            g = bb.emit(relax.op.add(g, named_const(b, "lstm_cell", layer + ".bias")))
            parts = bb.emit(relax.op.split(g, 4, axis=1))
            i, f, gg, o = (bb.emit(relax.TupleGetItem(parts, k)) for k in range(4))
            i, f, o = (bb.emit(relax.op.sigmoid(v)) for v in (i, f, o))
            gg = bb.emit(relax.op.tanh(gg))
            c2 = bb.emit(relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, gg)))
            h2 = bb.emit(relax.op.multiply(o, relax.op.tanh(c2)))
            out = bb.emit_output(relax.Tuple([h2, c2]))
        bb.emit_func_output(out)
    return bb.get()["cell"]
