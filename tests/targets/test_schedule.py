"""The sequence schedule (targets/schedule.py) and the network (targets/interconnect.py):
the replication rule, steady-state throughput with images in flight, which replicas earn
their crossbars, hop counts on a mesh and a bus."""

from __future__ import annotations

import copy

import pytest
from farc.targets.cost import cost_program
from farc.targets.interconnect import hops, input_hops
from farc.targets.mvm import Geometry, mvm_latency_ns
from farc.targets.schedule import layer_load, plan_replicas, steady_state
from handmade_programs import T, far_program


def test_replicas_go_to_the_bottleneck_only():
    # a: 20 vectors per image on 2 crossbars, b: 10 on 1, c: 1 on 5
    tiles, vectors = {"a": 2, "b": 1, "c": 5}, {"a": 20, "b": 10, "c": 1}
    plan = plan_replicas(tiles, vectors, spare=3, caps=vectors)
    # a (20) -> 2 replicas (10 each, 2 crossbars); now a and b tie at 10: a needs 2 more,
    # only 1 spare -> stop; b's replica would not raise throughput and is not given
    assert plan.replicas == {"a": 2, "b": 1, "c": 1}
    assert plan.added == 2
    assert "bottleneck a needs 2 more crossbars" in plan.reason


def test_ties_are_given_back_and_vectors_cap_replicas():
    v = {"a": 4, "b": 4}
    plan = plan_replicas({"a": 1, "b": 1}, v, spare=100, caps=v)
    assert plan.replicas == {"a": 4, "b": 4}  # one replica per vector, then stop
    assert "one replica per vector" in plan.reason
    plan = plan_replicas({"a": 1, "b": 1}, v, spare=1, caps=v)
    assert plan.replicas == {"a": 1, "b": 1} and plan.added == 0  # a alone: b still limits


def test_pipeline_fill_per_step_makes_an_lstm_cell_the_bottleneck():
    # puma-like: 16 cycles per vector + 2 fill per MVM instruction; an LSTM cell issues one
    # instruction per step (197), a linear layer one for all 197 tokens
    cell = layer_load(197, 197, 16, 2)
    linear = layer_load(197, 1, 16, 2)
    assert cell == 197 * 18 and linear == 197 * 16 + 2
    plan = plan_replicas({"cell": 1, "linear": 1}, {"cell": cell, "linear": linear}, spare=1,
                         caps={"cell": 197, "linear": 197})
    assert plan.replicas == {"cell": 2, "linear": 1}


def test_steady_state_is_set_by_the_largest_occupancy():
    thr = steady_state(1000.0, {"x": 100.0, "y": 250.0})
    assert thr.bottleneck == "y" and thr.interval_ns == 250.0
    assert thr.images_per_s == pytest.approx(4e6) and thr.in_flight == 4


def test_lstm_cell_occupancy_is_its_steps(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    one_step = mvm_latency_ns(isaac, Geometry.for_matrix(isaac, 8, 12))
    occ = r.throughput.occupancy_ns
    assert occ["crossbars lstm0f"] == pytest.approx(T * one_step)
    assert r.throughput.interval_ns == max(occ.values())
    assert r.throughput.in_flight == -(-r.latency_ns // r.throughput.interval_ns)


def test_replicas_of_a_linear_layer_cut_latency_not_a_tied_bottleneck(isaac):
    one, two = far_program(isaac), far_program(isaac, replicas=2)
    r1, r2 = cost_program(one, isaac), cost_program(two, isaac)
    assert r2.latency_ns < r1.latency_ns  # pre_proj's tokens split over 2 replicas
    (v,) = r2.replication
    assert v.layer == "pre_proj" and v.replicas == 2 and v.cuts_latency
    # pre_proj (T vectors) ties with each LSTM cell (T steps): halving it alone leaves the
    # cells as the bottleneck, so its replica does not raise throughput
    assert not v.raises_throughput
    assert r2.throughput.images_per_s == pytest.approx(r1.throughput.images_per_s)


def test_mesh_and_bus_hops(isaac):
    per_router = isaac.interconnect.tiles_per_router
    assert hops(isaac, 3, 3) == 0
    assert hops(isaac, 0, per_router - 1) == 1  # same router
    assert hops(isaac, 0, per_router) == 2  # next router on the grid row
    bus = isaac.with_overrides(**{"interconnect.topology": "bus"})
    assert hops(bus, 0, 1000) == 1


def test_bytes_between_tiles_cost_hops(far_prog, isaac):
    # spread the layers over tiles: one crossbar per tile
    spread = isaac.with_overrides(**{"chip.imas_per_tile": 1, "chip.crossbars_per_ima": 1,
                                     "chip.tiles": 16_128})
    local, far = cost_program(far_prog, isaac), cost_program(far_prog, spread)
    assert local.energy_pj["interconnect"] == 0  # everything on one tile
    h = input_hops(far_prog.manifest, spread)
    assert max(h.values()) >= 1
    assert far.events["interconnect_byte_hops"] > 0
    assert far.energy_pj["interconnect"] == pytest.approx(
        far.events["interconnect_byte_hops"] * 2 / 4 * spread.energy.interconnect_pj_per_byte)
    assert far.latency_ns > local.latency_ns  # hops and serialisation on the path


def test_layers_without_placement_are_packed(far_prog, isaac):
    m = copy.deepcopy(far_prog.manifest)
    for lay in m["layers"]:
        lay.pop("crossbars", None)
    assert cost_program(m, isaac).latency_ns > 0


def _mlp_program(target):
    """x -> fc1 -> gelu -> fc2 -> y over T tokens: a token pipeline."""
    from farc.runtime.builder import make_program
    from handmade_programs import D, _Prog

    pb = _Prog(target)
    ins = [{"op": "input", "in": [], "out": "x", "name": "x"},
           {"op": "mvm", "in": ["x"], "out": "h", "layer": pb.layer("fc1", D, D)},
           {"op": "gelu", "in": ["h"], "out": "g"},
           {"op": "mvm", "in": ["g"], "out": "y", "layer": pb.layer("fc2", D, D)},
           {"op": "output", "in": ["y"], "name": "y"}]
    return make_program(ins, {"x": [T, D]}, {"y": [T, D]}, pb.layers, target=target.to_dict(),
                        model={"kind": "deit", "name": "mlp", "config": {}, "provenance": {}})


def test_token_wise_layers_stream_into_each_other(isaac):
    r = cost_program(_mlp_program(isaac), isaac)
    mvm = mvm_latency_ns(isaac, Geometry.for_matrix(isaac, 8, 8), T)
    per_token = mvm_latency_ns(isaac, Geometry.for_matrix(isaac, 8, 8), 1)
    # fc2 starts on fc1's first token: the chain takes one layer's T tokens + one token of
    # the other (plus GELU), far less than two layers back to back
    assert r.latency_ns < 2 * mvm
    assert r.latency_ns == pytest.approx(mvm + per_token, rel=0.05)


def test_a_bidirectional_loop_is_a_barrier(far_prog, isaac):
    r = cost_program(far_prog, isaac)
    spans = {s.label: s for s in r.timeline}
    loop = next(s for s in r.timeline if s.kind == "loop")
    assert loop.start_ns >= spans["pre_proj"].end_ns  # the backward pass needs token T-1
    assert spans["head_proj0"].start_ns >= loop.end_ns
