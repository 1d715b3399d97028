"""Conductance drift and global drift compensation (runtime/noise.py), in the emulator and in
the torch numerics the fine-tune trains through. Expected values: the ideal emulator's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.schema import DeviceSection
from xbar_flat import xp

from farc.errors import ConfigError
from farc.far.crossbar_torch import LayerNumerics

rng = np.random.default_rng(11)
W = rng.normal(size=(40, 6)).astype(np.float32)
X = rng.normal(size=(32, 40)).astype(np.float32)
DRIFT = {"drift_nu": 0.1, "drift_t": 1e4}


def _program(flip: bool):
    p = xp(rows=16, cols=32, adc_bits=9, adc_flip=flip)  # lossless when ideal
    layer, arrays = pack_layer(W, None, scale_for_inputs(X, 8), p)
    return make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [40]}, {"y": [6]}, [(layer, arrays)])


def _run(prog, noise: DeviceSection | None, seed: int = 0) -> np.ndarray:
    return Emulator(prog, noise=noise, seed=seed).run({"x": X})["y"]


@pytest.mark.parametrize("flip", [False, True])
def test_compensation_undoes_a_uniform_drift(flip: bool) -> None:
    """One exponent for every cell: drift is a gain, and the reference read recovers it."""
    prog = _program(flip)
    ideal = _run(prog, None)
    drifted = _run(prog, DeviceSection(**DRIFT))
    assert np.abs(drifted - ideal).mean() > 0.2 * np.abs(ideal).mean()
    np.testing.assert_array_equal(_run(prog, DeviceSection(**DRIFT, drift_compensation=1.0)),
                                  ideal)


def test_compensation_helps_a_spread_of_exponents() -> None:
    prog = _program(True)
    ideal = _run(prog, None)
    err = {}
    for comp in (0.0, 1.0):
        cfg = DeviceSection(**DRIFT, drift_nu_sigma=0.03, drift_compensation=comp)
        err[comp] = np.mean([np.abs(_run(prog, cfg, s) - ideal).mean() for s in range(3)])
    assert 0 < err[1.0] < 0.5 * err[0.0]


def test_torch_numerics_drift_matches_the_emulator() -> None:
    """Uniform drift, compensated or not: no randomness, so the torch layer gives the
    emulator's integers."""
    prog = _program(True)
    ln = LayerNumerics.from_program_layer(prog.layers[0])
    for comp in (0.0, 1.0):
        cfg = DeviceSection(**DRIFT, drift_compensation=comp)
        want = _run(prog, cfg)
        got = ln.prepare(torch.from_numpy(W), None, cfg).mvm(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    ({"drift_compensation": 0.5}, "drift_compensation = 0.5 must be one of 'off', 'global', "
                                   "'per_column' \\(or 0, 1, 2\\)"),
    ({"drift_compensation": "column"}, "drift_compensation = 'column' must be one of"),
    ({"drift_nu_sigma": -0.1}, "drift_nu_sigma = -0.1 must be finite and >= 0"),
])
def test_bad_drift_settings(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DeviceSection(**kw)
