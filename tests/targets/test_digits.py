"""On compiled digits programs (random-init digits DeiT and its FAR student, compiled for
isaac by farc.compiler): the cost model's static events equal the emulator's counters, and
the FAR-vs-DeiT report runs with both attention assumptions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

from farc.runtime.counters import static_counts  # noqa: E402
from farc.runtime.emulator import Emulator  # noqa: E402
from farc.targets import load_target  # noqa: E402
from farc.targets.cost import cost_program, static_events  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]
KEYS = ("mvms_per_layer", "mvms_per_crossbar", "dac_cycles", "dac_conversions",
        "adc_conversions", "digital_ops", "bytes_moved", "instructions")


@pytest.fixture(scope="module")
def digits_programs():
    from farc.compiler import CompileOptions, compile_checkpoint
    from farc.models.deit import DEIT_PRESETS, DeiT
    from farc.models.far import FAR

    torch.manual_seed(0)
    teacher = DeiT(DEIT_PRESETS["deit_digits"])
    far = FAR.from_teacher(teacher)
    t = load_target("isaac")
    opts = CompileOptions(data=None, calib_samples=8)
    return {"far": compile_checkpoint(far, t, opts), "deit": compile_checkpoint(teacher, t, opts)}


@pytest.mark.parametrize("kind", ["far", "deit"])
def test_static_events_equal_emulator_counters_on_digits(digits_programs, kind):
    p = digits_programs[kind]
    t = load_target("isaac")
    ev = static_events(p, t)
    ours = {k: ev[k] for k in KEYS}
    assert ours == static_counts(p, batch=1).static_part()
    spec = p.manifest["inputs"][0]
    x = np.random.default_rng(0).normal(size=(1, *spec["shape"][1:])).astype(np.float32)
    emu = Emulator(p)
    emu.run({spec["name"]: x})
    assert emu.counters.static_part() == ours
    assert 0 < emu.counters.dac_pulses <= ev["dac_conversions"]


def test_far_has_no_attention_matmuls_deit_needs_rewrites(digits_programs):
    t = load_target("isaac")
    far = cost_program(digits_programs["far"], t, attention="rewrite")
    deit = cost_program(digits_programs["deit"], t, attention="rewrite")
    assert far.rewrite["cell_writes"] == 0
    assert deit.rewrite["cell_writes"] > 0 and deit.energy_pj["write"] > 0
    assert deit.rewrite["lifetime_inferences"] <= t.write.endurance
    loops = [s for s in far.timeline if s.kind == "loop"]
    assert len(loops) == 4  # one loop per FAR block: all heads and directions in lockstep
