"""Every pass, and codegen, leaves the module it was given (and the calibration statistics)
unchanged: the compiler's state is only what each stage returns."""

import functools
import hashlib

import numpy as np
import pytest
import tvm
import tvm_ffi
from _pass_models import calibrated, imported
from farc.passes.emit_tile_program import emit_tile_program
from farc.passes.legalize_lstm import LegalizeLSTM
from farc.passes.partition_crossbar import PartitionCrossbar
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.passes.schedule_crossbar import ScheduleCrossbar
from farc.passes.tile_crossbar import TileCrossbar
from farc.runtime.program import Program
from farc.targets import load_target

pytestmark = pytest.mark.tvm

# calibrated ADC range: TileCrossbar reads the calibration vectors too
TARGET = load_target("isaac").with_overrides(**{"adc.range": "calibrated"})


def _stages(kind):
    calib = calibrated(kind)
    return [("legalize", LegalizeLSTM()), ("partition", PartitionCrossbar()),
            ("quantize", QuantizeCrossbar(TARGET, calib)), ("tile", TileCrossbar(TARGET, calib)),
            ("schedule", ScheduleCrossbar(TARGET, replicate=True)),
            ("emit", lambda mod: emit_tile_program(mod, TARGET, {"kind": kind}))]


STAGES = [name for name, _ in _stages("far")]


@functools.cache
def _input_of(kind: str, stage: str) -> tvm.IRModule:
    """The module `stage` reads: the importer's, run through every earlier stage."""
    mod = imported(kind)
    for name, run in _stages(kind):
        if name == stage:
            return mod
        mod = run(mod)
    raise KeyError(stage)


def _calib_digest(kind: str) -> str:
    h = hashlib.sha256()
    for name, c in sorted(calibrated(kind).items()):
        h.update(f"{name}:{c.absmax!r}:{c.percentile!r}".encode())
        h.update(np.ascontiguousarray(c.vectors).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["far", "deit"])
@pytest.mark.parametrize("stage", STAGES)
def test_stage_leaves_its_input_unchanged(stage, kind):
    mod = _input_of(kind, stage)
    copy = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs,
                        global_infos=mod.global_infos)
    # the structural hash covers tensor contents (constants and tensor attributes), which
    # a copy of the function map shares with the original
    digest, text, calib = tvm_ffi.structural_hash(mod), mod.script(show_meta=False), \
        _calib_digest(kind)
    out = dict(_stages(kind))[stage](mod)
    tvm.ir.assert_structural_equal(mod, copy)
    assert tvm_ffi.structural_hash(mod) == digest
    assert mod.script(show_meta=False) == text
    assert _calib_digest(kind) == calib
    if stage == "emit":
        assert isinstance(out, Program)
    elif not (stage == "legalize" and kind == "deit"):  # DeiT has no LSTM to legalize
        assert out is not mod and not tvm_ffi.structural_equal(out, mod)


def test_check_catches_an_in_place_edit():
    # The check above must see `mod[gv] = f`, the TVM idiom that edits a module in place.
    mod = _input_of("far", "quantize")
    copy = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    edited = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    gv = edited.get_global_var("main")
    edited[gv] = edited[gv].with_attr("farc.note", 1)
    assert tvm_ffi.structural_hash(edited) != tvm_ffi.structural_hash(copy)
    with pytest.raises(ValueError):
        tvm.ir.assert_structural_equal(edited, copy)
