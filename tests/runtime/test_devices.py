"""Device models of runtime/noise.py and runtime/devices.py, checked against the published
fits restated here (coefficients copied from aihwkit's source, not imported from farc)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from _rt_util import linear_program
from farc.runtime.devices import DEVICE_PRESETS, device_preset, noise_from_options
from farc.runtime.emulator import Emulator
from farc.runtime.noise import (
    DeviceSection,
    ProgrammedLayer,
    adc_front_end,
    compensation_gain,
    drift_exponents,
    program_conductances,
    program_layer,
)
from xbar_flat import xp

from farc.errors import ConfigError

CELL_BITS = 2
TOP = 3  # 2**CELL_BITS - 1 = g_max in level units when on/off is infinite
N_CELLS = 200_000
# aihwkit src/aihwkit/inference/noise/pcm.py, PCMLikeNoiseModel: uS at g_max = 25 uS
PCM = [0.26348, 1.9650, -1.1731]
# aihwkit src/aihwkit/inference/noise/reram.py, ReRamWan2022NoiseModel, highest power first
# as written there, uS at g_max = 40 uS
WAN = {1.0: [-16.815, 45.393, -43.853, 16.030, 0.348],
       86400.0: [-16.458, 47.095, -50.773, 22.086, 0.701]}


def _cells(level: int, cfg: DeviceSection, seed: int = 0) -> np.ndarray:
    levels = np.full((4, 500, N_CELLS // 2000), level, dtype=np.float32)
    return program_conductances(levels, CELL_BITS, cfg, np.random.default_rng(seed)).ravel()


def _close(measured: float, expected: float, rel: float = 0.02) -> None:
    """200k draws: the sample std is within about 0.3 % (1 sigma) of the true one."""
    assert measured == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_pcm_programming_sigma_per_level(level: int) -> None:
    x = level / TOP
    sigma_us = PCM[0] + PCM[1] * x + PCM[2] * x * x
    g = _cells(level, DeviceSection(prog_model="pcm_joshi2020"))
    _close(float(g.std()), sigma_us / 25.0 * TOP)
    _close(float(g.mean()), level, rel=1e-3)


@pytest.mark.parametrize("t", [1.0, 86400.0])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_rram_wan2022_sigma_per_level(level: int, t: float) -> None:
    x = level / TOP
    sigma_us = sum(c * x ** p for p, c in enumerate(reversed(WAN[t])))
    g = _cells(level, DeviceSection(prog_model="rram_wan2022", drift_t=t))
    _close(float(g.std()), sigma_us / 40.0 * TOP)


def test_fitted_sigma_at_level_zero_is_a_clipped_gaussian() -> None:
    """Level 0 targets g = 0: half the draws clip to 0, the mean is sigma / sqrt(2 pi)."""
    g = _cells(0, DeviceSection(prog_model="pcm_joshi2020"))
    _close(float(g.mean()), PCM[0] / 25.0 * TOP / math.sqrt(2 * math.pi))
    assert (g == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_prog_scale_scales_the_fit() -> None:
    one = _cells(2, DeviceSection(prog_model="pcm_joshi2020")).std()
    _close(float(_cells(2, DeviceSection(prog_model="pcm_joshi2020", prog_scale=2.0)).std()),
           2 * float(one))


@pytest.mark.parametrize("level", [1, 3])
def test_independent_and_proportional(level: int) -> None:
    """CrossSim NormalIndependentDevice: sigma * range at every level; NormalProportional-
    Device: sigma * G."""
    _close(float(_cells(level, DeviceSection(prog_sigma=0.05)).std()), 0.05 * TOP)
    _close(float(_cells(level, DeviceSection(prog_sigma=0.05, prog_model="proportional")).std()),
           0.05 * level)


def test_proportional_leaves_level_zero_exact() -> None:
    g = _cells(0, DeviceSection(prog_sigma=0.05, prog_model="proportional"))
    assert not g.any()


def _folded_mean(mu: float, s: float) -> float:
    phi = 0.5 * (1 + math.erf(-mu / s / math.sqrt(2)))
    return s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * phi)


@pytest.mark.parametrize("g_rel", [1.0, 0.3, 0.01, 0.0])
def test_pcm_drift_exponent_moments(g_rel: float) -> None:
    """nu = |N(mu, sigma)|, mu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1),
    sigma = clip(-0.0125 ln g - 0.0059, 0.008, 0.045), g clipped at 1e-7 (aihwkit pcm.py)."""
    lg = math.log(max(g_rel, 1e-7))
    mu = min(max(-0.0155 * lg + 0.0244, 0.049), 0.1)
    s = min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
    cfg = DeviceSection(drift_model="pcm_joshi2020", drift_t0=20.0, drift_t=3620.0)
    nu = drift_exponents((N_CELLS,), cfg, np.random.default_rng(1), np.full(N_CELLS, g_rel))
    assert (nu >= 0).all()
    _close(float(nu.mean()), _folded_mean(mu, s), rel=0.01)


@pytest.mark.parametrize("level", [1, 3])
def test_pcm_read_noise_at_t0(level: int) -> None:
    """At t = t0 nothing drifts; what remains is the 1/f term |g| q_s sqrt(ln((t + t_r) /
    (2 t_r))), q_s = min(0.0088 / max(g_rel**0.65, 1e-3), 0.2), t_r = 250 ns."""
    q_s = min(0.0088 / max((level / TOP) ** 0.65, 1e-3), 0.2)
    sig = q_s * math.sqrt(math.log((20.0 + 250e-9) / (2 * 250e-9)))
    g = _cells(level, DeviceSection(drift_model="pcm_joshi2020", drift_t0=20.0, drift_t=20.0))
    _close(float(g.std()), level * sig)


def test_per_column_compensation_restores_every_column_sum() -> None:
    """Per column: each column's reference read (its conductance sum) back at its t0 value;
    global: only the total."""
    rng = np.random.default_rng(3)
    g0 = rng.uniform(0, 3, size=(2, 64, 10))
    gt = g0 * rng.uniform(0.5, 1.0, size=(1, 1, 10))  # every column its own drift
    col = gt * compensation_gain(g0, gt, per_column=True)
    np.testing.assert_allclose(col.sum(axis=1), g0.sum(axis=1), rtol=1e-12)
    glob = gt * compensation_gain(g0, gt)
    assert glob.sum() == pytest.approx(g0.sum())
    assert not np.allclose(glob.sum(axis=1), g0.sum(axis=1), rtol=1e-3)


# ---------------------------------------------------------------- ADC front end
def test_adc_noise_in_lsb_and_mismatch_per_chip() -> None:
    p = xp(rows=16, cols=32, adc_bits=8)
    rng = np.random.default_rng(0)
    W, X = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(8, 16))
    pl = Emulator(linear_program(W, None, X.astype(np.float32), p)).layers[0]
    step = float(pl.steps[0])
    zero = np.zeros((20_000, pl.J), dtype=np.float32)
    noisy = adc_front_end(zero, pl, ProgrammedLayer(pl.levels), 0, DeviceSection(adc_sigma=0.5),
                          np.random.default_rng(1))
    _close(float(noisy.std()), 0.5 * step)
    cfg = DeviceSection(adc_offset_sigma=0.3, adc_gain_sigma=0.02)
    a = program_layer(pl.levels, CELL_BITS, cfg, np.random.default_rng(5))
    b = program_layer(pl.levels, CELL_BITS, cfg, np.random.default_rng(6))
    ones = np.ones((3, pl.J), dtype=np.float32) * 100
    out = adc_front_end(ones, pl, a, 0, cfg, rng)
    np.testing.assert_array_equal(out[0], out[1])  # fixed per chip: no fresh draw per read
    np.testing.assert_allclose(out[0], 100 * a.adc_gain[0] + a.adc_offset[0] * step)
    assert not np.array_equal(a.adc_gain, b.adc_gain)


# ---------------------------------------------------------------- whole emulator
P = xp(rows=16, cols=32, adc_bits=8)
_rng = np.random.default_rng(7)
W, B, X = (_rng.normal(size=(40, 6)).astype(np.float32), _rng.normal(size=6).astype(np.float32),
           _rng.normal(size=(10, 40)).astype(np.float32))


def _run(cfg: DeviceSection | None, seed: int = 0) -> np.ndarray:
    return Emulator(linear_program(W, B, X, P), noise=cfg, seed=seed).run({"x": X})["y"]


@pytest.mark.parametrize("name", [n for n in DEVICE_PRESETS if n != "ideal"])
def test_presets_same_seed_same_result(name: str) -> None:
    cfg = device_preset(name)
    a = _run(cfg, seed=1)
    np.testing.assert_array_equal(a, _run(cfg, seed=1))
    assert not np.array_equal(a, _run(cfg, seed=2))
    assert not np.array_equal(a, _run(None))


def test_ideal_preset_is_the_ideal_emulator() -> None:
    assert not device_preset("ideal").enabled
    np.testing.assert_array_equal(_run(device_preset("ideal")), _run(None))


def test_zero_adc_noise_draws_nothing() -> None:
    """ADC noise, offset and gain at 0 consume no random numbers: the other models' draws,
    and so the outputs, are today's (tests/test_golden.py pins a noisy case to outputs
    recorded before these models existed)."""
    base = DeviceSection(prog_sigma=0.02, read_sigma=0.01)
    np.testing.assert_array_equal(_run(base), _run(DeviceSection(
        prog_sigma=0.02, read_sigma=0.01, adc_sigma=0.0, adc_offset_sigma=0.0)))
    assert not np.array_equal(_run(base), _run(DeviceSection(prog_sigma=0.02, read_sigma=0.01,
                                                           adc_sigma=0.5)))


def test_adc_noise_error_grows() -> None:
    ideal = _run(None)
    errs = [np.abs(_run(DeviceSection(adc_sigma=s)) - ideal).mean() for s in (0.2, 1.0, 3.0)]
    assert errs[0] < errs[1] < errs[2]


@pytest.mark.parametrize("drift", [
    {"drift_nu": 0.05, "drift_nu_sigma": 0.03, "drift_t": 86400.0},
    {"drift_model": "pcm_joshi2020", "drift_t0": 20.0, "drift_t": 86420.0}])
def test_per_column_compensation_beats_global(drift: dict) -> None:
    """With an exponent per cell each column drifts by its own factor: one gain per layer
    leaves the columns' differences, one per column removes them (mean over 4 chips)."""
    ideal = _run(None)

    def err(comp: float) -> float:
        return float(np.mean([np.abs(_run(DeviceSection(**drift, drift_compensation=comp),
                                          seed=s) - ideal).mean() for s in range(4)]))

    none, glob, col = err(0.0), err(1.0), err(2.0)
    assert col < glob / 2 and glob < none / 2


# ---------------------------------------------------------------- configuration errors
def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="unknown device model 'pcm_joshi2020' \\(did you "
                                          "mean 'pcm_joshi2020_1h'\\?\\)"):
        device_preset("pcm_joshi2020")


def test_noise_overrides_preset() -> None:
    cfg = noise_from_options("pcm_joshi2020_1h", ["drift_compensation=1", "adc_sigma=0.5"])
    assert cfg.prog_model == "pcm_joshi2020" and cfg.drift_compensation == "global"
    assert cfg.adc_sigma == 0.5 and cfg.drift_t == 3620.0
    assert noise_from_options(None, []) is None
    assert noise_from_options(None, ["prog_model=proportional", "prog_sigma=0.02"]) == \
        DeviceSection(prog_model="proportional", prog_sigma=0.02)


@pytest.mark.parametrize("kw,match", [
    ({"prog_model": "pcm"}, "prog_model = 'pcm' must be one of 'independent', 'proportional'"),
    ({"drift_model": "x"}, "drift_model = 'x' must be one of 'fixed', 'pcm_joshi2020'"),
    ({"prog_model": "pcm_joshi2020", "prog_sigma": 0.02}, "prog_sigma applies to the "
                                                          "independent and proportional"),
    ({"drift_model": "pcm_joshi2020", "drift_nu": 0.05}, "drift_nu and drift_nu_sigma apply"),
    ({"prog_model": "rram_wan2022", "drift_t": 60.0}, "fitted at t = 1, 86400, 172800 s"),
    ({"adc_sigma": -1.0}, "adc_sigma = -1.0 must be finite and >= 0"),
    ({"drift_compensation": 3.0}, "must be one of 'off', 'global', 'per_column'"),
])
def test_bad_device_settings(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DeviceSection(**kw)


def test_cli_unknown_device_model_is_one_line(tmp_path) -> None:
    """Refused before the program is even read, as one line, exit 1."""
    res = subprocess.run([sys.executable, "-c", "from farc.cli import main; main()", "run",
                          str(tmp_path / "m.farc"), "--data", "digits", "-o",
                          str(tmp_path / "o.npy"), "--device-model", "rram"],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0
    assert "unknown device model 'rram'" in res.stderr


def test_finetune_refuses_models_its_twin_lacks(tmp_path) -> None:
    """The torch twin would silently draw `independent` noise instead: refused, one line."""
    res = subprocess.run([sys.executable, "-c", "from farc.cli import main; main()", "finetune",
                          str(tmp_path / "c.pt"), "-o", str(tmp_path / "o.pt"), "--noise",
                          "prog_model=proportional", "--noise", "prog_sigma=0.02"],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 1
    assert "prog_model=proportional: fine-tuning's torch numerics do not model it" in res.stderr
    assert DeviceSection(prog_sigma=0.02, read_sigma=0.01,
                         drift_compensation="per_column").beyond_twin == []
