"""Device non-idealities: seeded, opt-in, and limits that have closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from _rt_util import linear_program, ref_mvm_int, ref_quantize_weights
from farc.runtime.builder import XbarParams
from farc.runtime.emulator import Emulator
from farc.runtime.schema import DeviceSection
from xbar_flat import xp, xp_with

from farc.errors import ConfigError

P = xp(rows=16, cols=32, adc_bits=8)  # 16 * 1 * 3 = 48: lossless when ideal
rng = np.random.default_rng(7)
W, B, X = (rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32),
           rng.normal(size=(10, 40)).astype(np.float32))


def run(noise: DeviceSection | None, seed: int = 0, p: XbarParams = P) -> np.ndarray:
    return Emulator(linear_program(W, B, X, p), noise=noise, seed=seed).run({"x": X})["y"]


def test_noise_off_is_bit_exact() -> None:
    np.testing.assert_array_equal(run(DeviceSection()), run(None))
    assert not DeviceSection().enabled


def test_vanishing_noise_equals_ideal() -> None:
    """The noisy (real-conductance) path rounds back to the ideal integers at tiny noise."""
    tiny = DeviceSection(prog_sigma=1e-7, on_off_ratio=1e9)
    assert tiny.enabled
    np.testing.assert_array_equal(run(tiny), run(None))


@pytest.mark.parametrize("cfg", [DeviceSection(prog_sigma=0.05), DeviceSection(read_sigma=0.05),
                                 DeviceSection(sa0_rate=0.05, sa1_rate=0.05),
                                 DeviceSection(drift_nu=0.1, drift_t=100.0)])
def test_same_seed_same_output(cfg: DeviceSection) -> None:
    a, b, c = run(cfg, seed=1), run(cfg, seed=1), run(cfg, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(None))
    if cfg.prog_sigma or cfg.read_sigma or cfg.sa0_rate:
        assert not np.array_equal(a, c)


def test_read_noise_is_fresh_per_read() -> None:
    emu = Emulator(linear_program(W, B, X, P), noise=DeviceSection(read_sigma=0.05), seed=0)
    assert not np.array_equal(emu.run({"x": X})["y"], emu.run({"x": X})["y"])


def test_programming_variation_is_fixed_at_programming() -> None:
    emu = Emulator(linear_program(W, B, X, P), noise=DeviceSection(prog_sigma=0.05), seed=0)
    np.testing.assert_array_equal(emu.run({"x": X})["y"], emu.run({"x": X})["y"])


def test_error_grows_with_sigma() -> None:
    ideal = run(None)
    errs = [np.abs(run(DeviceSection(prog_sigma=s)) - ideal).mean() for s in (0.01, 0.05, 0.2)]
    assert errs[0] < errs[1] < errs[2]


def _stuck_everywhere(p: XbarParams, which: str) -> np.ndarray:
    """Every cell stuck: G+ == G- (differential) so acc = 0; offset: P = 0 or top*sum(u)."""
    emu = Emulator(linear_program(W, B, X, p))
    pl = emu.layers[0]
    x_int = np.clip(np.rint(X / np.float32(pl.in_scale)), -127, 127)
    u_sum = (x_int + 128).sum(axis=1, keepdims=True)
    acc = 0.0
    if p.quant.mapping == "offset" and which == "sa1":
        acc = 3 * u_sum * pl.colw.sum(axis=1)  # every slice at level 3
    y_int = acc - pl.offset_qw * u_sum - 128 * pl.colsum
    return y_int.astype(np.float32) * pl.scale + B


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("which", ["sa0", "sa1"])
def test_all_cells_stuck(mapping: str, which: str) -> None:
    p = xp_with(P, mapping=mapping, adc_bits=12)
    cfg = DeviceSection(sa0_rate=1.0) if which == "sa0" else DeviceSection(sa1_rate=1.0)
    np.testing.assert_array_equal(run(cfg, p=p), _stuck_everywhere(p, which))


def test_drift_scales_conductance_before_the_adc() -> None:
    """Drift to half the conductance (t/t0 = 2, nu = 1): every partial sum halves, then the
    ADC rounds it, exactly as the independent reference does."""
    p = xp_with(P, adc_bits=12)
    cfg = DeviceSection(drift_nu=1.0, drift_t=2.0, drift_t0=1.0)
    emu = Emulator(linear_program(W, None, X, p), noise=cfg)
    pl = emu.layers[0]
    x_int = np.clip(np.rint(X / np.float32(pl.in_scale)), -127, 127).astype(np.int64)
    q, _ = ref_quantize_weights(W, 8)
    y_int = ref_mvm_int(x_int, q, p, pmax=48, gain=0.5)
    np.testing.assert_array_equal(emu.run({"x": X})["y"], y_int.astype(np.float32) * pl.scale)


def test_differential_pair_cancels_off_current() -> None:
    """G+ and G- carry the same off-state current, so with an unclipped ADC the two digits
    shift by the same amount and their difference is exact."""
    np.testing.assert_array_equal(run(DeviceSection(on_off_ratio=10)), run(None))


def test_finite_on_off_ratio_biases_offset_mapping() -> None:
    """An offset column sees the off-state current of every driven row: results shift."""
    p = xp_with(P, mapping="offset", adc_bits=12)
    assert np.abs(run(DeviceSection(on_off_ratio=20), p=p) - run(None, p=p)).mean() > 0.01


@pytest.mark.parametrize("items,match", [
    (["read_sigma"], "expected KEY=VALUE"),
    (["bogus=1"], "KEY one of prog_sigma"),
    (["read_sigma=abc"], "'abc' is not a number"),
    (["sa0_rate=2"], r"sa0_rate = 2.0 must be in \[0, 1\]"),
    (["on_off_ratio=0.5"], "on_off_ratio = 0.5 must be > 1"),
    (["drift_t=0.5"], "drift_t = 0.5 must be >= drift_t0"),
])
def test_parse_errors(items, match) -> None:
    with pytest.raises(ConfigError, match=match):
        DeviceSection.parse(items)


def test_parse() -> None:
    assert DeviceSection.parse(["read_sigma=0.01", "sa1_rate=1e-3"]) == \
        DeviceSection(read_sigma=0.01, sa1_rate=1e-3)
