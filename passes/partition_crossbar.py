"""PartitionCrossbar: every matmul with a constant weight -> a `farc.*` crossbar composite.

Expects: Relax after LegalizeLSTM, weights as `[K, N]` constants named in their spans
(`kind:layer`, see farc.compiler.importer), code in dataflow blocks.

Leaves: each `matmul(x, W) [+ b]` with constant W (and constant b) fused into a function
with `Codegen = "farc"` (FuseOpsByPattern(annotate_codegen=True)) wrapping a composite
named `farc.crossbar` (or `farc.crossbar.nobias`). The outer function gets the attributes
the later passes read: `farc.layer` (name), `farc.kind` (linear, patch_embed, lstm_cell,
classifier, gru_cell, gru_hidden, from the weight's name), `farc.K`, `farc.N`. (One
pattern pair for every kind: FuseOpsByPattern's cost grows with the number of patterns.)
Matmuls of two activations (DeiT attention: QK^T and AV) cannot be weight-stationary; they
are fused into composites named `farc.digital.matmul` without a codegen, so they stay on
the digital units and are visible as such in the IR.

Patterns live in the TVM pattern registry under the `farc` prefix; a pattern's check refuses
(host fallback) weights that are not 2-D float32 constants or carry no layer name. Returns a
new module; the input is left unchanged."""

from __future__ import annotations

import tvm
from farc.passes._crossbar_ir import CODEGEN, const_label
from tvm import relax
from tvm.relax.backend.pattern_registry import get_patterns_with_prefix, register_patterns
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import PatternCheckContext

CROSSBAR_KINDS = ("linear", "patch_embed", "conv", "lstm_cell", "classifier", "gru_cell",
                  "gru_hidden")
"""Crossbar layer kinds (from the weight's name; the `farc.kind` attribute)."""
CROSSBAR = "farc.crossbar"
DIGITAL_MATMUL = "farc.digital.matmul"


def _matmul_pattern(with_bias: bool):
    weight = is_const()
    mm = is_op("relax.matmul")(wildcard(), weight)
    if not with_bias:
        return mm, {"weight": weight, "root": mm}
    bias = is_const()
    add = is_op("relax.add")(mm, bias)
    return add, {"weight": weight, "bias": bias, "root": add}


def _check_named_weight(ctx: PatternCheckContext) -> bool:
    """Host fallback unless W is a named 2-D float32 constant of a crossbar kind."""
    weight = ctx.annotated_expr["weight"]
    label = const_label(weight)
    ty = weight.ty
    return (label is not None and label[0] in CROSSBAR_KINDS and ty.dtype == "float32"
            and len(ty.shape) == 2)


def _check_named_bias(ctx: PatternCheckContext) -> bool:
    """As `_check_named_weight`, and the added constant is the layer's named bias: a plain
    constant added after the matmul (hardswish's `x + 3`) stays a digital add."""
    return _check_named_weight(ctx) and const_label(ctx.annotated_expr["bias"]) is not None


def _register() -> None:
    table = []
    for bias in (True, False):
        pat, ann = _matmul_pattern(bias)
        table.append((CROSSBAR + ("" if bias else ".nobias"), pat, ann,
                      _check_named_bias if bias else _check_named_weight))
    register_patterns(table)


_register()


def crossbar_patterns() -> list:
    """The registered crossbar patterns (the biased form first, so it wins)."""
    pats = [p for p in get_patterns_with_prefix(CROSSBAR)]
    return sorted(pats, key=lambda p: p.name.endswith(".nobias"))


@tvm.transform.module_pass(opt_level=0, name="PartitionCrossbar")
class PartitionCrossbar:
    """Offload constant-weight matmuls to crossbar composites; mark digital matmuls."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        crossbar = relax.transform.FuseOpsByPattern(crossbar_patterns(), annotate_codegen=True)
        digital = relax.transform.FuseOpsByPattern([relax.transform.FusionPattern(
            DIGITAL_MATMUL, is_op("relax.matmul")(wildcard(), wildcard()))],
            annotate_codegen=False)
        funcs: dict = {}
        # One function at a time: FuseOpsByPattern's time grows with the square of the
        # functions in its module (288 LSTM cells of FAR-Base: 6 s together, 1 ms each).
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function) or "Codegen" in (func.attrs or {}):
                funcs[gv] = func
                continue
            part = digital(crossbar(tvm.IRModule({gv: func})))
            funcs.update(_merge_names(part, gv, "" if gv.name_hint == "main" else
                                      gv.name_hint + "_"))
        for gv, func in list(funcs.items()):
            if (func.attrs or {}).get("Codegen") == CODEGEN:
                funcs[gv] = _annotate(func)
        return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def _merge_names(part: tvm.IRModule, origin: tvm.ir.GlobalVar, prefix: str) -> dict:
    """The functions of `part` with the new ones renamed `<prefix><name>`, so the parts of
    different functions can share one module."""
    if not prefix:
        return dict(part.functions.items())
    rename = {}
    for gv, func in part.functions.items():
        if gv.name_hint != origin.name_hint:
            new = tvm.ir.GlobalVar(prefix + gv.name_hint)
            relax.expr._update_type(new, func.ty)
            rename[gv] = new
    out = {}
    for gv, func in part.functions.items():
        if gv in rename:
            named = "global_symbol" in (func.attrs or {})
            out[rename[gv]] = func.with_attr("global_symbol", rename[gv].name_hint) \
                if named else func
        else:
            out[origin] = _Rename(rename).visit_expr(func) if rename else func
    return out


@relax.expr_functor.mutator
class _Rename(relax.PyExprMutator):
    def __init__(self, mapping: dict) -> None:
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, gv: tvm.ir.GlobalVar) -> relax.Expr:
        return self.mapping.get(gv, gv)


def composite_parts(func: relax.Function) -> tuple[relax.Expr, relax.Expr | None]:
    """(weight constant, bias constant or None) of a crossbar function."""
    weight, bias = None, None

    def visit(e: relax.Expr) -> None:
        nonlocal weight, bias
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            if e.op.name == "relax.matmul" and isinstance(e.args[1], tvm.ir.GenericConst):
                weight = e.args[1]
            elif e.op.name == "relax.add":
                bias = next((a for a in e.args if isinstance(a, tvm.ir.GenericConst)), bias)

    relax.analysis.post_order_visit(func, visit)
    return weight, bias


def _annotate(func: relax.Function) -> relax.Function:
    weight, _ = composite_parts(func)
    kind, layer = const_label(weight)
    k, n = (int(s) for s in weight.ty.shape)
    return func.with_attrs({"farc.layer": layer, "farc.kind": kind, "farc.K": k, "farc.N": n})
