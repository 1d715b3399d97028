"""The cost model counts what the emulator counts: its static events equal
farc.runtime.counters.static_counts and the emulator's counters on hand-built FAR-like and
attention programs (the compiler's digits FAR program is checked in test_digits.py)."""

from __future__ import annotations

import numpy as np
import pytest
from farc.runtime.counters import static_counts
from farc.runtime.emulator import Emulator
from farc.targets import load_target
from farc.targets.cost import cost_program, static_events
from farc.targets.derived import adc_conversion_pj
from farc.targets.events import price
from handmade_programs import D, T, attention_program, far_program

COUNTER_KEYS = ("mvms_per_layer", "mvms_per_crossbar", "dac_cycles", "dac_conversions",
                "adc_conversions", "digital_ops", "bytes_moved", "instructions")


def _ours(program, target):
    ev = static_events(program, target)
    return {k: ev[k] for k in COUNTER_KEYS}


def _emulated(program):
    emu = Emulator(program)
    emu.run({"x": np.random.default_rng(1).normal(size=(1, T, D)).astype(np.float32)})
    return emu.counters


@pytest.mark.parametrize("build", [far_program, attention_program])
@pytest.mark.parametrize("name", ["isaac", "neurosim_rram"])
def test_static_events_equal_runtime_static_counts(build, name):
    t = load_target(name)
    p = build(t)
    assert _ours(p, t) == static_counts(p, batch=1).static_part()


@pytest.mark.parametrize("build", [far_program, attention_program])
def test_static_events_equal_emulator_counters(build, isaac):
    p = build(isaac)
    counters = _emulated(p)
    assert _ours(p, isaac) == counters.static_part()
    # DAC pulses are data dependent: the static slots bound them from above
    assert 0 < counters.dac_pulses <= static_events(p, isaac)["dac_conversions"]


def test_digits_shaped_far_block_counts_match_emulator(isaac):
    # the digits FAR shape (docs/architecture.md: D = 64, 4 heads, 17 tokens), pruned
    # hidden sizes; compiled digits programs are checked in test_digits.py
    hidden = [(16, 12), (9, 16), (5, 3), (16, 1)]
    p = far_program(isaac, tokens=17, dim=64, hidden=hidden, name="far-digits-block")
    emu = Emulator(p)
    emu.run({"x": np.random.default_rng(2).normal(size=(2, 17, 64)).astype(np.float32)})
    ev = static_events(p, isaac)
    # the emulator ran a batch of 2: every count doubles except the instruction count
    twice = {k: ({n: 2 * v for n, v in ev[k].items()} if isinstance(ev[k], dict)
                 else ev[k] if k == "instructions" else 2 * ev[k]) for k in COUNTER_KEYS}
    assert emu.counters.static_part() == twice


def test_replicated_layer_shares_vectors(isaac):
    p = far_program(isaac, replicas=2)
    ev = static_events(p, isaac)
    assert ev == {**ev, **{k: v for k, v in static_counts(p, 1).static_part().items()}}
    pre = [int(x) for x in p.manifest["layers"][0]["crossbars"][0]]
    rep = [int(x) for x in p.manifest["layers"][0]["crossbars"][1]]
    assert [ev["mvms_per_crossbar"][str(x)] for x in pre + rep] == [3] * len(pre) + [2] * len(rep)


def test_emulator_counters_priced_directly(far_prog, isaac):
    counters = _emulated(far_prog).to_dict()
    measured = price(counters, isaac)
    static = cost_program(far_prog, isaac).energy_pj
    for comp in ("crossbar", "adc", "shift_add", "digital", "buffer"):
        assert measured[comp] == pytest.approx(static[comp]), comp
    assert 0 < measured["dac"] <= static["dac"]  # measured pulses <= slots


def test_cost_uses_the_same_events(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    assert r.energy_pj["adc"] == pytest.approx(r.events["adc_conversions"] *
                                               adc_conversion_pj(isaac))
