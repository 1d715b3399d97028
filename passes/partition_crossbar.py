"""PartitionCrossbar: every matmul with a constant weight -> a `farc.*` crossbar composite.

Expects: Relax after LegalizeLSTM, weights as `[K, N]` constants named in their spans
(`kind:layer`, see farc.compiler.importer), code in dataflow blocks.

Leaves: each `matmul(x, W) [+ b]` with constant W (and constant b) fused into a function
with `Codegen = "farc"` (FuseOpsByPattern(annotate_codegen=True)) wrapping a composite
named `farc.crossbar` (or `farc.crossbar.nobias`). The outer function gets the attributes
the later passes read: `farc.layer` (name), `farc.kind` (linear, patch_embed, lstm_cell,
classifier, from the weight's name), `farc.K`, `farc.N`. (One pattern pair for every kind:
FuseOpsByPattern's cost grows with the number of patterns.)
Matmuls of two activations (DeiT attention: QK^T and AV) cannot be weight-stationary; they
are fused into composites named `farc.digital.matmul` without a codegen, so they stay on
the digital units and are visible as such in the IR.

Patterns live in the TVM pattern registry under the `farc` prefix; a pattern's check refuses
(host fallback) weights that are not 2-D float32 constants or carry no layer name."""

from __future__ import annotations

import tvm
from farc.passes._crossbar_ir import CODEGEN, const_label
from tvm import relax
from tvm.relax.backend.pattern_registry import get_patterns_with_prefix, register_patterns
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.transform import PatternCheckContext

CROSSBAR_KINDS = ("linear", "patch_embed", "lstm_cell", "classifier")
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


def _register() -> None:
    table = []
    for bias in (True, False):
        pat, ann = _matmul_pattern(bias)
        table.append((CROSSBAR + ("" if bias else ".nobias"), pat, ann, _check_named_weight))
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
        mod = relax.transform.FuseOpsByPattern(crossbar_patterns(), annotate_codegen=True)(mod)
        digital = relax.transform.FusionPattern(
            DIGITAL_MATMUL, is_op("relax.matmul")(wildcard(), wildcard()))
        mod = relax.transform.FuseOpsByPattern([digital], annotate_codegen=False)(mod)
        for gv, func in list(mod.functions.items()):
            if (func.attrs or {}).get("Codegen") == CODEGEN:
                mod[gv] = _annotate(func)
        return mod


def crossbar_functions(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, relax.Function]]:
    """The (GlobalVar, function) pairs of every crossbar layer, sorted by layer name."""
    out = [(gv, f) for gv, f in mod.functions.items()
           if isinstance(f, relax.Function) and (f.attrs or {}).get("Codegen") == CODEGEN]
    return sorted(out, key=lambda p: str(p[1].attrs["farc.layer"]))


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
