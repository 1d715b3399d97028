"""ONNX LSTMs with a constant, non-zero initial state (issue 14, Deliver 3: "initial_h /
initial_c ... constant"): one-node models (forward, reverse, bidirectional; layout 0)
rebuilt, checked against onnxruntime on the file itself, compiled and verified exact on a
lossless target; a batch-dependent initial state refused in one line.

Expected values never come from farc: the float check is onnxruntime on the user's file,
and verify compares the emulator with the independent reference, which takes h0 / c0 from
the model file (the GraphModel), not from the program."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farc.models.from_onnx import load_onnx
from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from test_byom import _ort, _t, _verify_passes, _write, lstm_model  # noqa: E402

HIDDEN, BATCH = 3, 6
"""lstm_model's hidden size; the batch of the initial state (= of the inputs ORT takes)."""


def with_state(proto: bytes, h0: np.ndarray, c0: np.ndarray) -> bytes:
    """lstm_model's "zero" model with its initial_h / initial_c initializers replaced."""
    m = onnx.load_from_string(proto)
    for init in m.graph.initializer:
        if init.name in ("h0", "c0"):
            init.CopyFrom(_t(init.name, h0 if init.name == "h0" else c0))
    return m.SerializeToString()


def shared_state(d: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A constant initial h and c [d, BATCH, HIDDEN], the same row for every batch item."""
    return tuple(np.broadcast_to(rng.uniform(-0.9, 0.9, (d, 1, HIDDEN)),
                                 (d, BATCH, HIDDEN)).astype(np.float32) for _ in range(2))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_constant_initial_state_compiles_and_verifies(direction: str, tmp_path) -> None:
    """Rebuilt model == onnxruntime on the file; compiled on isaac (lossless) -> the program
    starts each recurrence from the constant state and verify passes exactly."""
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    d = 2 if direction == "bidirectional" else 1
    seed = ["forward", "reverse", "bidirectional"].index(direction)
    zero = lstm_model(direction, 0, True, "zero", np.random.default_rng(seed))
    h0, c0 = shared_state(d, np.random.default_rng(10 + seed))
    proto = with_state(zero, h0.copy(), c0.copy())
    x = np.random.default_rng(99).normal(size=(BATCH, 5, 4)).astype(np.float32)
    want = _ort(proto, x)[0]
    zeros = np.zeros_like(h0)
    assert np.abs(want - _ort(with_state(zero, zeros, zeros), x)[0]).max() > 1e-2  # matters
    path = _write(tmp_path, proto, "init.onnx")
    graph = load_onnx(path)
    lstms = [n for n in graph.nodes if n.op == "lstm"]
    assert len(lstms) == d and all(len(n.ins) == 3 for n in lstms)
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), want, atol=1e-5)

    calib = torch.from_numpy(np.random.default_rng(1).normal(size=(32, 5, 4))).float()
    program = compile_checkpoint(path, load_target("isaac"),
                                 CompileOptions(calib_images=calib, calib_samples=32))
    assert program_is_lossless(program)
    (loop,) = [i for i in program.instructions if i["op"] == "loop"]
    writers = {i["out"]: i for i in program.instructions if "out" in i}
    consts = []
    for reg in loop["carry"]:  # h, c per direction: zeros + const broadcast over the batch
        init = writers[reg]
        assert init["op"] == "add", init
        consts.append(next(program.arrays[f"const.{writers[r]['name']}"]
                           for r in init["in"] if writers[r]["op"] == "const"))
    # carries are h, c of each direction in order; the reverse direction is d - 1
    expect = [s[k, 0] for k in range(d) for s in (h0, c0)]
    for got, ref in zip(consts, expect, strict=True):
        np.testing.assert_array_equal(got, ref)
    _verify_passes(program, torch.from_numpy(x), path)


def test_initial_state_zero_in_one_direction_and_absent_c(tmp_path) -> None:
    """initial_h non-zero in the forward direction only and no initial_c: the forward
    LSTM starts from (h0, 0), the backward one keeps the plain zero state."""
    zero = lstm_model("bidirectional", 0, True, "zero", np.random.default_rng(5))
    m = onnx.load_from_string(zero)
    node = next(n for n in m.graph.node if n.op_type == "LSTM")
    node.input[6] = ""  # no initial_c
    h0 = np.zeros((2, BATCH, HIDDEN), np.float32)
    h0[0] = np.random.default_rng(6).uniform(-0.9, 0.9, HIDDEN)
    for init in m.graph.initializer:
        if init.name == "h0":
            init.CopyFrom(_t("h0", h0))
    proto = m.SerializeToString()
    x = np.random.default_rng(98).normal(size=(BATCH, 5, 4)).astype(np.float32)
    graph = load_onnx(_write(tmp_path, proto, "h0only.onnx"))
    assert [len(n.ins) for n in graph.nodes if n.op == "lstm"] == [3, 1]
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), _ort(proto, x)[0],
                                   atol=1e-5)


def test_batch_dependent_initial_state_refused(tmp_path) -> None:
    """Rows that differ across the batch cannot be one constant broadcast: one line,
    naming the node and the input."""
    zero = lstm_model("forward", 0, True, "zero", np.random.default_rng(0))
    h0 = np.random.default_rng(3).uniform(-0.9, 0.9, (1, 3, HIDDEN)).astype(np.float32)
    path = _write(tmp_path, with_state(zero, h0, np.zeros_like(h0)), "bad.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "node /rnn/LSTM: LSTM with a batch-dependent initial_h" in msg


def test_calibration_sees_the_initial_state(tmp_path) -> None:
    """The first step's crossbar input is [x_0 ; h0]: with h0 larger than anything else
    the cell sees (|h| < 1 after a step, |x| ~ 3), the calibrated range must cover it, and
    the compiled program stays within 8-bit error of onnxruntime."""
    from farc.runtime.emulator import Emulator
    from farc.targets import load_target

    from farc.compiler.calibrate import calibrate
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    zero = lstm_model("reverse", 0, True, "zero", np.random.default_rng(4))
    h0 = np.full((1, BATCH, HIDDEN), [6.0, -5.0, 5.5], np.float32)
    proto = with_state(zero, h0, np.full_like(h0, 0.5))
    path = _write(tmp_path, proto, "big.onnx")
    graph = load_onnx(path)
    calib = torch.from_numpy(np.random.default_rng(1).normal(size=(32, 5, 4))).float()
    (stats,) = calibrate(graph, calib).values()
    assert stats.absmax >= 6.0
    program = compile_checkpoint(path, load_target("isaac"),
                                 CompileOptions(calib_images=calib, calib_samples=32))
    x = np.random.default_rng(97).normal(size=(BATCH, 5, 4)).astype(np.float32)
    want = _ort(proto, x)[0]
    got = Emulator(program).run({"x": x})["y"]
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05
