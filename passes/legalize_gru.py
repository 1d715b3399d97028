"""LegalizeGRU: each GRU recurrence node -> a scan over a cell function with two crossbar
matmuls.

Expects: the importer's IR (`farc.compiler.importer`), where each GRU is
`R.call_dps_packed("farc.gru", (x [B,T,I], W_ih [3H,I], W_hh [3H,H], b_ih, b_hh, reverse,
linear_before_reset[, h0]))`, gates in PyTorch order r, z, n, constant weights named in
their spans.

Leaves: for each GRU a private Relax function `cell_<layer>(x_t [B,I], h [B,H]) -> (h',)`
with two weight-stationary matmuls (docs/compiler.md, "GRU"):
- `gru_cell:<layer>`, [x_t ; h] @ (I+H) x 3H: the columns r and z read x_t and h
  (`[W_ir^T W_iz^T ; W_hr^T W_hz^T]`), the columns n_x read x_t alone (`W_in^T` over zero
  rows for h); bias b_ir + b_hr, b_iz + b_hz, b_in;
- `gru_hidden:<layer>.hidden`, W_hn^T (H x H) with bias b_hn, reading r * h
  (linear_before_reset = 0, ONNX's default: n = tanh(n_x + W_hn (r*h) + b_hn)) or h
  (= 1, torch's: n = tanh(n_x + r * (W_hn h + b_hn)));
then h' = n + z * (h - n) (= (1 - z) * n + z * h). The W_hn matmul cannot join the first
one when it reads r * h, since r comes out of it; one form for both keeps the layer names
and the calibration alike. The recurrence becomes `R.call_pure_packed("farc.lstm_scan",
x, cell_<layer>, reverse[, h0])`, the scan LegalizeLSTM leaves (one loop per direction,
IR size independent of T).

Returns a new module; the input is left unchanged. Run before PartitionCrossbar, which then
finds both matmuls like any other constant matmul. Does not handle batch-dependent initial
states or multi-layer GRUs (the front ends split layers and directions)."""

from __future__ import annotations

import numpy as np
import tvm
from farc.passes._crossbar_ir import (
    GRU_EXTERN,
    GRU_HIDDEN,
    SCAN_EXTERN,
    const_label,
    const_value,
    is_extern_call,
    named_const,
    rewrite_functions,
)
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="LegalizeGRU")
class LegalizeGRU:
    """Rewrite every `farc.gru` recurrence into a `farc.lstm_scan` over a cell function."""

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
        if not is_extern_call(call, "relax.call_dps_packed", GRU_EXTERN):
            return call
        x, w_ih, w_hh, b_ih, b_hh, reverse, lbr, *state = call.args[1].fields
        layer = const_label(w_ih)[1].rsplit(".", 1)[0]
        weights = gate_weights(*(const_value(c) for c in (w_ih, w_hh, b_ih, b_hh)))
        cell = _cell_function(layer, int(x.ty.shape[0]), bool(int(lbr.value)), *weights)
        gv = tvm.ir.GlobalVar("cell_" + layer.replace(".", "_"))
        relax.expr._update_type(gv, cell.ty)
        self.cells[gv] = cell
        return relax.call_pure_packed(SCAN_EXTERN, x, gv, reverse, *state, ty_args=call.ty)


def gate_weights(w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W [(I+H), 3H], b [3H], W_hn^T [H, H], b_hn [H]) of the two crossbar layers."""
    hidden = w_hh.shape[1]
    h2 = 2 * hidden
    top = w_ih.T                                                        # [I, 3H]: r, z, n_x
    bottom = np.concatenate([w_hh[:h2].T, np.zeros((hidden, hidden), np.float32)], axis=1)
    w = np.concatenate([top, bottom], axis=0).astype(np.float32)
    b = np.concatenate([b_ih[:h2] + b_hh[:h2], b_ih[h2:]]).astype(np.float32)
    return w, b, np.ascontiguousarray(w_hh[h2:].T, np.float32), b_hh[h2:].astype(np.float32)


def _cell_function(layer: str, batch: int, linear_before_reset: bool, w: np.ndarray,
                   b: np.ndarray, w_hn: np.ndarray, b_hn: np.ndarray) -> relax.Function:
    """cell(x_t, h) -> (h',) with two crossbar matmuls and digital gate math."""
    hidden = w_hn.shape[0]
    inputs = w.shape[0] - hidden
    x_t = relax.Var("x_t", relax.TensorType((batch, inputs), "float32"))
    h = relax.Var("h", relax.TensorType((batch, hidden), "float32"))
    hid = layer + GRU_HIDDEN
    bb = relax.BlockBuilder()
    with bb.function("cell", [x_t, h], private=True):
        with bb.dataflow():
            xh = bb.emit(relax.op.concat([x_t, h], axis=1))
            g = bb.emit(relax.op.matmul(xh, named_const(w, "gru_cell", layer)))
            g = bb.emit(relax.op.add(g, named_const(b, "gru_cell", layer + ".bias")))
            parts = bb.emit(relax.op.split(g, 3, axis=1))
            r, z, n_x = (bb.emit(relax.TupleGetItem(parts, k)) for k in range(3))
            r, z = bb.emit(relax.op.sigmoid(r)), bb.emit(relax.op.sigmoid(z))
            read = h if linear_before_reset else bb.emit(relax.op.multiply(r, h))
            n_h = bb.emit(relax.op.matmul(read, named_const(w_hn, "gru_hidden", hid)))
            n_h = bb.emit(relax.op.add(n_h, named_const(b_hn, "gru_hidden", hid + ".bias")))
            if linear_before_reset:
                n_h = bb.emit(relax.op.multiply(r, n_h))
            n = bb.emit(relax.op.tanh(relax.op.add(n_x, n_h)))
            h2 = bb.emit(relax.op.add(n, relax.op.multiply(z, relax.op.subtract(h, n))))
            out = bb.emit_output(relax.Tuple([h2]))
        bb.emit_func_output(out)
    return bb.get()["cell"]
