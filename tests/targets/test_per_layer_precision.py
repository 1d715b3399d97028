"""Per-layer precision: a program layer records its own sections, and every stage reads them
there. Two layers of one program on one chip, one with the chip's 8-bit ADC and one with 5
bits: the emulator digitises each at its own width, and the cost model prices each layer's
conversions and cycle with that layer's ADC (targets/derived.py's law at its bits)."""

from __future__ import annotations

import numpy as np
import pytest
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.walk import walk
from farc.targets import load_target
from farc.targets.cost import cost_program, op_cost
from farc.targets.derived import adc_conversion_pj
from farc.targets.mvm import mvm_latency_ns

from farc.errors import ProgramError


def _two_layers(bits_second: int, rows_second: int = 128):
    t = load_target("isaac").with_overrides(**{"quant.weight_bits": 8, "quant.input_bits": 8})
    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(size=(32, 16)).astype(np.float32) for _ in range(2))
    s_x = scale_for_inputs(np.ones(1), 8)
    lossy = t.xbar.with_overrides(**{"adc.bits": bits_second, "crossbar.rows": rows_second})
    first = pack_layer(w1, None, s_x, t.xbar, layer_id=0, name="eight")
    second = pack_layer(w2, None, s_x, lossy, layer_id=1, name="five",
                        first_crossbar=len(first[0]["crossbars"][0]))
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "mvm", "layer": 0, "in": ["x"], "out": "h"},
           {"op": "mvm", "layer": 1, "in": ["x"], "out": "y"},
           {"op": "add", "in": ["h", "y"], "out": "z"},
           {"op": "output", "name": "z", "in": ["z"]}]
    return t, make_program(ins, {"x": [32]}, {"z": [16]}, [first, second], target=t.to_dict())


def test_each_layer_is_emulated_and_priced_at_its_own_adc_width():
    t, prog = _two_layers(5)
    assert [L["adc"]["bits"] for L in prog.layers] == [8, 5]
    emu = Emulator(prog)
    assert emu.layers[0].lossless and not emu.layers[1].lossless  # 5 bits < 192 levels
    emu.run({"x": np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)})
    layers = dict(enumerate(prog.layers))
    mvms = [op_cost(s, t, layers, "digital") for s in walk(prog.manifest)
            if s.instr["op"] == "mvm"]
    conv = [c.events["adc_conversions"] for c in mvms]
    assert conv[0] == conv[1] > 0  # same shape: the same number of conversions
    assert [c.energy_pj["adc"] for c in mvms] == pytest.approx(
        [conv[0] * adc_conversion_pj(t, 8), conv[1] * adc_conversion_pj(t, 5)])
    assert mvms[1].energy_pj["adc"] < mvms[0].energy_pj["adc"]
    by_layer = cost_program(prog, t).by_layer
    assert by_layer["five"]["energy_pj"] < by_layer["eight"]["energy_pj"]
    g = emu.geoms[1]
    lossy_adc = prog.layers[1]["adc"]
    assert mvms[1].latency_ns == pytest.approx(mvm_latency_ns(
        t, g, 1, t.adc.__class__(**{**lossy_adc, "range": "full"})))


def test_a_layer_on_another_array_is_refused():
    with pytest.raises(ProgramError, match=r"layer 1 \(five\): crossbar .*'rows': 64.* but "
                                           r"the program's chip has .*'rows': 128"):
        _two_layers(8, rows_second=64)
