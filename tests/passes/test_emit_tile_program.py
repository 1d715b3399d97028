"""emit_tile_program: instructions per op, one loop per FAR block, layers read from the IR."""

import numpy as np
import pytest
import torch
from _pass_models import TINY, images, tiny
from farc.runtime.emulator import Emulator
from farc.targets import load_target

from farc.compiler.driver import CompileOptions, compile_checkpoint

pytestmark = pytest.mark.tvm

LOSSLESS = {"adc.bits": 10, "quant.weight_bits": 8, "quant.input_bits": 8}


def _compile(kind):
    target = load_target("isaac").with_overrides(**LOSSLESS)
    opts = CompileOptions(calib_images=images(16), calib_samples=16)
    return compile_checkpoint(tiny(kind), target, opts)


def _loops(code):
    return [i for i in code if i["op"] == "loop"]


@pytest.mark.parametrize("kind", ["deit", "far", "pruned"])
def test_program_runs_like_the_model(kind):
    program = _compile(kind)
    x = images(4, seed=7)
    with torch.no_grad():
        ref = tiny(kind)(x).numpy()
    out = Emulator(program).run({"image": x.numpy()})["logits"]
    assert out.shape == ref.shape
    # 8-bit weights and inputs: small quantisation error, identical structure
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max() + 1e-3


def test_one_loop_per_block_holding_every_head_and_direction():
    program = _compile("far")
    loops = _loops(program.instructions)
    assert len(loops) == TINY.depth
    for loop in loops:
        assert len(loop["gather"]) == len(loop["scatter"]) == 2 * TINY.num_heads
        assert [g["reverse"] for g in loop["gather"]].count(True) == TINY.num_heads
        assert sum(i["op"] == "mvm" for i in loop["body"]) == 2 * TINY.num_heads
        assert len(loop["carry"]) == 4 * TINY.num_heads


def test_deit_attention_is_digital_matmul():
    program = _compile("deit")
    ops = [i["op"] for i in program.instructions]
    assert ops.count("matmul") == 2 * TINY.depth
    assert ops.count("mvm") == 2 + 4 * TINY.depth
    assert not _loops(program.instructions)


def test_manifest_records_target_model_and_schedule():
    program = _compile("far")
    m = program.manifest
    assert m["target"]["adc"]["bits"] == 10
    assert m["model"]["kind"] == "far"
    s = m["schedule"]
    assert s["crossbars_used"] == sum(L["row_tiles"] * L["col_tiles"] for L in m["layers"])
    assert s["crossbars_available"] == load_target("isaac").crossbars
    assert set(s["layer_crossbars"]) == {L["name"] for L in m["layers"]}


def test_op_without_instruction_is_a_pass_error():
    from farc.passes.emit_tile_program import emit_tile_program
    from tvm import relax

    from farc.errors import PassError

    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([bb.emit(relax.op.exp(x))]))
        bb.emit_func_output(out)
    with pytest.raises(PassError, match=r"no tile-program instruction for Relax op relax\.exp"):
        emit_tile_program(bb.get(), load_target("isaac"), {"kind": "far"})


def test_unscheduled_module_is_a_pass_error():
    # Codegen reads every layer number from the IR: a stage left out is named, not guessed.
    from _pass_models import calibrated, partitioned
    from farc.passes.emit_tile_program import emit_tile_program
    from farc.passes.quantize_crossbar import QuantizeCrossbar

    from farc.errors import PassError

    target = load_target("isaac")
    mod = QuantizeCrossbar(target, calibrated("deit"))(partitioned("deit"))
    with pytest.raises(PassError, match=r"crossbar layer \S+ lacks farc\.row_tiles, .*"
                                        r"farc\.crossbars: run QuantizeCrossbar, TileCrossbar"):
        emit_tile_program(mod, target, {"kind": "deit"})
