"""The opcode table (runtime/isa.py) is the one table: every per-opcode table elsewhere has
exactly its key set, and its shape rules and event kinds agree with what the emulator does.

`TABLES` lists each per-opcode table with the key set isa implies for it; the agreement
check (`isa.disagreements`, compared both ways) is shown to fail on deliberately broken
copies, so a table that drifts from the opcode table cannot pass silently."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
from farc.runtime import emulator, isa, lockstep
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.counters import static_counts
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program
from farc.runtime.walk import walk
from farc.targets import cost, events
from xbar_flat import xp

from farc.errors import EmulatorError

RNG = np.random.default_rng(7)


def _qdq_handlers() -> Iterable[str]:
    qdq = pytest.importorskip("farc.check.qdq")  # needs onnx
    return qdq._HANDLERS


# table name -> (its keys, the keys isa implies for it)
TABLES: dict[str, tuple[Callable[[], Iterable[str]], Iterable[str]]] = {
    "emulator HANDLERS": (lambda: emulator.HANDLERS, isa.HANDLED_OPS),
    "qdq reference handlers": (_qdq_handlers, isa.OPS),
    "lockstep GROUPABLE": (lambda: lockstep.GROUPABLE, isa.LOCKSTEP_OPS),
    "lockstep AXIS_OPS": (lambda: lockstep.AXIS_OPS, isa.AXIS_OPS),
    "pricing DIGITAL_KEY + PRICED_APART": (lambda: [*events.DIGITAL_KEY, *events.PRICED_APART],
                                           isa.DIGITAL_KINDS),
    "cost FREE": (lambda: cost.FREE, isa.IN_PLACE_OPS),
}


@pytest.mark.parametrize("name", TABLES)
def test_table_agrees_with_isa(name: str) -> None:
    keys, expected = TABLES[name]
    assert isa.disagreements(name, keys(), expected) == []


@pytest.mark.parametrize("name", TABLES)
def test_agreement_check_catches_a_broken_copy(name: str) -> None:
    keys, expected = TABLES[name]
    good = list(keys())
    missing = isa.disagreements(name, good[1:], expected)
    assert missing == [f"{name}: missing {good[0]!r} (runtime/isa.py expects it)"]
    extra = isa.disagreements(name, [*good, "frobnicate"], expected)
    assert extra == [f"{name}: 'frobnicate' is not expected by runtime/isa.py"]


def test_emulator_check_catches_a_missing_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    assert emulator.handler_disagreements() == []
    monkeypatch.delitem(emulator.HANDLERS, "mul")
    assert emulator.handler_disagreements() == [
        "emulator HANDLERS: missing 'mul' (runtime/isa.py expects it)"]


def test_pricing_check_catches_an_unpriced_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    assert events.pricing_disagreements() == []
    monkeypatch.delitem(events.DIGITAL_KEY, "gelu")
    assert events.pricing_disagreements() == [
        "targets/events.py DIGITAL_KEY + PRICED_APART: missing 'gelu' (runtime/isa.py "
        "expects it)"]


def test_handler_refuses_an_unknown_opcode() -> None:
    with pytest.raises(EmulatorError, match="handler for 'frobnicate': not an opcode"):
        emulator.handler("frobnicate")(lambda emu, ins, xs: None)


def test_every_spec_is_complete() -> None:
    for op, spec in isa.OPS.items():
        assert spec.event in isa.EVENT_KINDS, op
        assert (spec.shape is None) == (spec.event == "loop"), op


# ---------------------------------------------------------------- shape rules and events
def _program(op: dict, regs: dict[str, list[int]], consts: dict | None = None,
             layers: tuple = ()) -> Program:
    """Inputs `regs` (shapes without the batch axis) and constants -> op -> output y."""
    consts = consts or {}
    ins = [{"op": "input", "name": k, "out": k} for k in regs]
    ins += [{"op": "const", "name": k, "out": k} for k in consts]
    ins += [dict(op, out="y"), {"op": "output", "name": "y", "in": ["y"]}]
    return make_program(ins, regs, {"y": [None]}, layers, consts)


def _mvm() -> Program:
    W = RNG.normal(size=(12, 3)).astype(np.float32)
    p = xp(rows=8, cols=8)
    layer = pack_layer(W, None, scale_for_inputs(np.ones(1, np.float32), p.quant.input_bits), p)
    return _program({"op": "mvm", "layer": 0, "in": ["x"]}, {"x": [3, 12]}, layers=(layer,))


def _loop() -> Program:
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "zeros", "in": ["x"], "shape": [3], "out": "s"},
           {"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": ["s"],
            "gather": [{"src": "x", "axis": 1, "dst": "xt", "reverse": True}],
            "body": [{"op": "add", "in": ["s", "xt"], "out": "t"},
                     {"op": "tanh", "in": ["t"], "out": "s"}],
            "scatter": [{"src": "s", "axis": -2, "dst": "ys"}]},
           {"op": "output", "name": "y", "in": ["ys"]},
           {"op": "output", "name": "last", "in": ["s"]}]
    return make_program(ins, {"x": [6, 3]}, {"y": [6, 3], "last": [3]})


def _unary(op: str, **attrs) -> Callable[[], Program]:
    return lambda: _program({"op": op, "in": ["x"], **attrs}, {"x": [3, 5]})


def _binary(op: str, a: list[int], b: list[int], **attrs) -> Callable[[], Program]:
    return lambda: _program({"op": op, "in": ["a", "b"], **attrs}, {"a": a, "b": b})


def _const() -> Program:
    return _program({"op": "const", "name": "c"}, {"x": [2]},
                    {"c": np.ones((3, 2), np.float32)})


def _layernorm() -> Program:
    return _program({"op": "layernorm", "in": ["x", "g", "b"], "eps": 1e-5}, {"x": [3, 6]},
                    {"g": np.ones(6, np.float32), "b": np.zeros(6, np.float32)})


SAMPLES: dict[str, Callable[[], Program]] = {
    "input": _const, "output": _const, "const": _const, "mvm": _mvm, "loop": _loop,
    "add": _binary("add", [3, 4], [1, 4]), "sub": _binary("sub", [3, 4], [3, 1]),
    "mul": _binary("mul", [3, 1], [1, 4]), "matmul": _binary("matmul", [2, 4, 5], [1, 5, 6]),
    "concat": _binary("concat", [2, 3], [4, 3], axis=-2),
    "sigmoid": _unary("sigmoid"), "tanh": _unary("tanh"), "gelu": _unary("gelu"),
    "relu": _unary("relu"),
    "softmax": _unary("softmax", axis=1), "scale": _unary("scale", value=0.5),
    "layernorm": _layernorm, "reshape": _unary("reshape", shape=[-1, 1]),
    "transpose": _unary("transpose", perm=[0, 2, 1]),
    "slice": _unary("slice", axis=-1, start=1, stop=9),
    "zeros": _unary("zeros", shape=[4, 2]),
    "im2col": lambda: _program({"op": "im2col", "in": ["x"], "kernel": [2, 3],
                                "stride": [1, 2], "pads": [1, 0], "dilation": [2, 1]},
                               {"x": [2, 5, 6]}),
    "pool": lambda: _program({"op": "pool", "in": ["x"], "mode": "avg", "kernel": [2, 3],
                              "stride": [1, 2], "pads": [1, 0, 0, 1], "dilation": [1, 1],
                              "count_include_pad": False}, {"x": [3, 4, 7]}),
    "reduce": _unary("reduce", mode="mean", axes=[-1], keepdims=False),
    "log_softmax": _unary("log_softmax", axis=-1),
    "clip": _unary("clip", min=-0.5, max=0.25), "leaky_relu": _unary("leaky_relu", alpha=0.1),
    "pad": _unary("pad", pads=[0, 1, 0, 0, 2, 3], value=0.5),
}


def test_every_opcode_has_a_sample() -> None:
    assert isa.disagreements("SAMPLES", SAMPLES, isa.OPS) == []


@pytest.mark.parametrize("op", SAMPLES)
def test_shape_rule_and_events_match_the_emulator(op: str) -> None:
    """The static walk's shapes and the event rule on them equal what the emulator sees
    and counts at run time (batch 2, lockstep on and off)."""
    prog = SAMPLES[op]()
    assert op in {s.instr["op"] for s in walk(prog)}
    inputs = {s["name"]: RNG.normal(size=(2, *s["shape"][1:])).astype(np.float32)
              for s in prog.inputs}
    static = static_counts(prog, batch=2)
    for lock in (True, False):
        emu = Emulator(prog, lockstep=lock)
        out = emu.run(inputs)
        for s in walk(prog, batch=2):
            if s.instr["op"] == "output":
                assert s.in_shapes[0] == out[s.instr["name"]].shape, s.path
        assert emu.counters.static_part() == static.static_part()
        assert set(emu.counters.digital_ops) <= set(isa.DIGITAL_KINDS)
