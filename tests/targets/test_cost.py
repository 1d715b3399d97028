"""Cost model behaviour: critical path of loops and independent work, energy by component,
attention costed as a digital matmul unit or as crossbar rewrites, area of what is used."""

from __future__ import annotations

import math

import pytest
from farc.targets.cost import COMPONENTS, cost_program
from farc.targets.mvm import Geometry, mvm_latency_ns
from handmade_programs import HIDDEN, T

from farc.errors import ConfigError


def test_loop_costs_t_times_its_body_and_heads_overlap(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    loop = next(s for s in r.timeline if s.kind == "loop")
    # every LSTM cell is one crossbar here, one vector per step: the body's critical path is
    # ONE cell MVM (heads and directions overlap), not four, plus the digital gate math
    cell = mvm_latency_ns(isaac, Geometry.for_matrix(isaac, 8, 12))
    per_step = (loop.end_ns - loop.start_ns) / T
    assert cell < per_step < 2 * cell
    assert loop.label == f"loop x{T}"


def test_layers_in_sequence_add_up(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    spans = {s.label: s for s in r.timeline}
    assert spans["pre_proj"].end_ns <= next(s for s in r.timeline if s.kind == "loop").start_ns
    assert r.latency_ns == pytest.approx(max(s.end_ns for s in r.timeline))
    # head projections of the two heads are independent: they overlap
    assert spans["head_proj0"].start_ns == pytest.approx(spans["head_proj1"].start_ns)


def test_energy_components_and_breakdowns_agree(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    assert set(r.energy_pj) == set(COMPONENTS)
    total = r.energy_total_pj
    assert sum(v["energy_pj"] for v in r.by_layer.values()) == pytest.approx(total)
    assert sum(v["energy_pj"] for v in r.by_kind.values()) == pytest.approx(total)
    assert {f"lstm{h}{d}" for h in range(len(HIDDEN)) for d in "fb"} <= set(r.by_layer)


def test_area_counts_used_crossbars(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    assert r.area_mm2["crossbar"] == pytest.approx(r.crossbars_used *
                                                   isaac.area.crossbar_mm2)
    assert r.area_mm2["adc"] == pytest.approx(r.crossbars_used * isaac.area.adc_mm2)


def test_attention_digital_vs_rewrite(attn_prog, isaac):
    dig = cost_program(attn_prog, isaac, attention="digital")
    rw = cost_program(attn_prog, isaac, attention="rewrite")
    assert dig.energy_pj["write"] == 0 and rw.energy_pj["write"] > 0
    assert dig.events["digital_ops"]["matmul_mac"] > 0
    assert "matmul_mac" not in rw.events["digital_ops"]
    assert rw.rewrite["writes_per_cell"] == 1
    assert rw.rewrite["lifetime_inferences"] == isaac.write.endurance
    assert rw.rewrite["cell_writes"] == rw.events["cell_writes"] > 0
    assert rw.area_mm2["crossbar"] > dig.area_mm2["crossbar"]  # rewrite crossbars added


def test_far_program_has_no_rewrites(far_prog, isaac):
    r = cost_program(far_prog, isaac, attention="rewrite")
    assert r.rewrite["cell_writes"] == 0 and math.isinf(r.rewrite["lifetime_inferences"])


def test_unknown_attention_mode(far_prog, isaac):
    with pytest.raises(ConfigError, match="attention = 'analog' must be one of digital, rewrite"):
        cost_program(far_prog, isaac, attention="analog")


def test_unknown_digital_kind_is_refused(isaac):
    from farc.targets.events import new_events, price

    ev = new_events()
    ev["digital_ops"]["cosine"] = 3
    with pytest.raises(ConfigError, match="no \\[digital\\] energy for digital op kind 'cosine'"):
        price(ev, isaac)
