"""PartitionCrossbar: every constant-weight matmul of DeiT, FAR and pruned FAR on crossbars;
activation x activation matmuls marked digital."""

import numpy as np
import pytest
import tvm
from _pass_models import PRUNED_HIDDEN, TINY, expected_crossbar_layers, partitioned
from farc.passes._crossbar_ir import crossbar_functions, named_const
from farc.passes.partition_crossbar import DIGITAL_MATMUL, PartitionCrossbar
from tvm import relax

pytestmark = pytest.mark.tvm


def _matmuls_outside_crossbars(mod: tvm.IRModule) -> int:
    """Matmuls with a constant right operand anywhere but inside a crossbar function."""
    count = 0
    for _, func in mod.functions.items():
        if (func.attrs or {}).get("Codegen") == "farc":
            continue

        def visit(e):
            nonlocal count
            if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and \
                    e.op.name == "relax.matmul" and isinstance(e.args[1], tvm.ir.GenericConst):
                count += 1

        relax.analysis.post_order_visit(func, visit)
    return count


@pytest.mark.parametrize("kind", ["deit", "far", "pruned"])
def test_every_constant_matmul_lands_on_a_crossbar(kind):
    mod = partitioned(kind)
    layers = crossbar_functions(mod)
    assert len(layers) == expected_crossbar_layers(kind)
    assert _matmuls_outside_crossbars(mod) == 0
    kinds = [str(f.attrs["farc.kind"]) for _, f in layers]
    assert kinds.count("patch_embed") == 1 and kinds.count("classifier") == 1
    assert kinds.count("lstm_cell") == (0 if kind == "deit" else 2 * TINY.depth * TINY.num_heads)


def test_pruned_lstm_cells_stack_input_and_hidden():
    mod = partitioned("pruned")
    shapes = {str(f.attrs["farc.layer"]): (int(f.attrs["farc.K"]), int(f.attrs["farc.N"]))
              for _, f in crossbar_functions(mod)}
    d = TINY.head_dim
    for b, heads in enumerate(PRUNED_HIDDEN):
        for h, (fwd, bwd) in enumerate(heads):
            assert shapes[f"blocks.{b}.far.lstm_fwd.{h}"] == (d + fwd, 4 * fwd)
            assert shapes[f"blocks.{b}.far.lstm_bwd.{h}"] == (d + bwd, 4 * bwd)


def test_attention_matmuls_stay_digital_and_marked():
    mod = partitioned("deit")
    calls = [b.value.op for b in mod["main"].body.blocks[0].bindings
             if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.GlobalVar)
             and (mod[b.value.op].attrs or {}).get("Composite") == DIGITAL_MATMUL]
    assert len(calls) == 2 * TINY.depth  # QK^T and AV per block
    assert all("Codegen" not in mod[gv].attrs for gv in calls)


def test_do_not_offload_unnamed_constant_matmul():
    # A constant without a layer name (not from the importer) fails the pattern check:
    # it stays on the host instead of becoming an anonymous crossbar layer.
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(np.ones((4, 2), "float32"))))
            z = bb.emit(relax.op.matmul(x, named_const(np.ones((4, 2)), "linear", "fc")))
            out = bb.emit_output(relax.op.add(y, z))
        bb.emit_func_output(out)
    mod = PartitionCrossbar()(bb.get())
    assert [str(f.attrs["farc.layer"]) for _, f in crossbar_functions(mod)] == ["fc"]
