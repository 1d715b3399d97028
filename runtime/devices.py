"""Device models as real devices and peer tools define them, and the named presets.

Each curve below is the one place farc writes a published fit down; runtime/noise.py applies
them (`program_conductances`) and `DEVICE_PRESETS` names combinations a user picks with
`--device-model NAME` (docs/devices.md). Conductances are relative here: `g_rel = g / g_max`
with g_max the top level's conductance (level units: `off + 2**cell_bits - 1`), so a fit
made in microsiemens at a reference g_max applies to any cell resolution.

Sources (read from IBM/aihwkit at commit 4545f11b, src/aihwkit/inference/noise/):
- PCM, `PCMLikeNoiseModel` (pcm.py), after Joshi et al., Nat. Commun. 11, 2473 (2020) and
  Nandakumar et al., ICECS 2019: programming sigma a quadratic in g/g_max, in uS at a
  reference g_max of 25 uS; drift exponent per device |N(mu(g), sigma(g))| with clamped
  log-linear mu and sigma; accumulated 1/f read noise growing with sqrt(log t).
- ReRAM, `ReRamWan2022NoiseModel` (reram.py), after Wan et al., Nature 608, 504 (2022):
  the spread around the target a 4th-order polynomial in g/g_max, in uS at a reference
  g_max of 40 uS, fitted at 1 s, 1 day and 2 days after programming.
aihwkit quirk, on purpose not reproduced: its ReRAM constructor stores the 40 uS reference
as `prog_coeff_g_max_reference` but scales by `coeff_g_max_reference` (= its own g_max), so
with its default 25 uS converter the sigmas come out 40/25 = 1.6x larger relative to g_max
than the fit. farc uses the fit as published: sigma / g_max = poly(g_rel) / 40.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from farc.errors import ConfigError

from .schema import DeviceSection, check_keys, field_types, parse_value

# ---------------------------------------------------------------- PCM (Joshi et al. 2020)
PCM_PROG_COEFF = (0.26348, 1.9650, -1.1731)
"""Programming sigma in uS = sum_i c_i g_rel**i (aihwkit PCMLikeNoiseModel.prog_coeff)."""
PCM_G_MAX_REF = 25.0
"""uS: the g_max the PCM coefficients were fitted at (aihwkit `prog_coeff_g_max_reference`)."""
PCM_T0 = 20.0
"""s: the drift model's first read after programming (aihwkit `t_0`)."""
PCM_T_READ = 250.0e-9
"""s: the read duration of the 1/f fit (aihwkit `t_read`)."""
PCM_ZERO_CLIP = 1e-7
"""Smallest g_rel the drift fits see (aihwkit `_ZERO_CLIP`): log(0) is not a number."""

# ---------------------------------------------------------------- ReRAM (Wan et al. 2022)
RRAM_WAN_COEFF = {
    1.0: (0.348, 16.030, -43.853, 45.393, -16.815),
    86400.0: (0.701, 22.086, -50.773, 47.095, -16.458),
    172800.0: (0.782, 20.274, -43.507, 37.062, -11.934),
}
"""Seconds after programming -> sigma in uS = sum_i c_i g_rel**i, lowest power first
(aihwkit ReRamWan2022NoiseModel's `coeff_dic`, there written highest power first)."""
RRAM_G_MAX_REF = 40.0
"""uS: the g_max the ReRAM coefficients were fitted at."""


def _poly(coeff: Sequence[float], x: Any) -> Any:
    """sum_i coeff[i] * x**i (Horner)."""
    out = 0.0 * x + coeff[-1]
    for c in reversed(coeff[:-1]):
        out = out * x + c
    return out


def pcm_prog_sigma(g_rel: np.ndarray) -> np.ndarray:
    """PCM programming sigma as a fraction of g_max at target g_rel: 1.05 % at 0, 4.35 % at
    its peak (g_rel 0.84), 4.22 % at 1."""
    return _poly(PCM_PROG_COEFF, g_rel) / PCM_G_MAX_REF


def check_fitted_time(t: float) -> None:
    """The rram_wan2022 model reads its spread at one of its fitted times, or not at all."""
    if t not in RRAM_WAN_COEFF:
        raise ConfigError(f"the rram_wan2022 model is fitted at t = "
                          f"{', '.join(f'{k:g}' for k in RRAM_WAN_COEFF)} s, not drift_t = {t:g}")


def rram_prog_sigma(g_rel: np.ndarray, t: float) -> np.ndarray:
    """ReRAM spread around the target as a fraction of g_max, t seconds after programming
    (one of the fitted times: 1 s 0.87-5.7 %)."""
    check_fitted_time(t)
    return _poly(RRAM_WAN_COEFF[t], g_rel) / RRAM_G_MAX_REF


def pcm_drift_moments(g_rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the PCM drift exponent at target g_rel: mu = -0.0155 ln g + 0.0244
    clamped to [0.049, 0.1], sigma = -0.0125 ln g - 0.0059 clamped to [0.008, 0.045]."""
    lg = np.log(np.maximum(np.abs(g_rel), PCM_ZERO_CLIP))
    return (np.clip(-0.0155 * lg + 0.0244, 0.049, 0.1),
            np.clip(-0.0125 * lg - 0.0059, 0.008, 0.045))


def pcm_read_sigma(g_rel: np.ndarray, t: float) -> np.ndarray:
    """Accumulated 1/f read noise at time t as a fraction of the drifted conductance:
    q_s sqrt(ln((t + t_read) / (2 t_read))), q_s = min(0.0088 / max(g_rel**0.65, 1e-3), 0.2)
    with g_rel the programmed (not target) conductance."""
    q_s = np.minimum(0.0088 / np.maximum(np.abs(g_rel) ** 0.65, 1e-3), 0.2)
    return q_s * math.sqrt(math.log((t + PCM_T_READ) / (2 * PCM_T_READ)))


# ---------------------------------------------------------------- presets
def _pcm(t_inference: float) -> DeviceSection:
    """PCM read t_inference seconds after programming completes (aihwkit's t = t_inference
    + t_0), drift compensated per column."""
    return DeviceSection(prog_model="pcm_joshi2020", drift_model="pcm_joshi2020",
                         drift_t0=PCM_T0, drift_t=PCM_T0 + t_inference,
                         drift_compensation="per_column")


DEVICE_PRESETS: dict[str, DeviceSection] = {
    "ideal": DeviceSection(),
    "rram_wan2022_1s": DeviceSection(prog_model="rram_wan2022", drift_t=1.0),
    "rram_wan2022_1d": DeviceSection(prog_model="rram_wan2022", drift_t=86400.0),
    "rram_wan2022_2d": DeviceSection(prog_model="rram_wan2022", drift_t=172800.0),
    "pcm_joshi2020_1h": _pcm(3600.0),
    "pcm_joshi2020_1d": _pcm(86400.0),
}
"""Named device models. ReRAM: Wan et al. 2022 via aihwkit, the spread at the named time
after programming (no drift exponent: the fit already is the distribution at that time;
aihwkit suggests adding about 1 % short-term read noise, here `--noise read_sigma=0.01`).
PCM: Joshi et al. 2020 via aihwkit, programming noise, per-device drift and 1/f read noise
at the named time, per-column drift compensation. Periphery (ADC noise, offset, gain) is
not a device property: add it with --noise."""


def device_preset(name: str) -> DeviceSection:
    """The DeviceSection of a named preset; a ConfigError with the closest name otherwise."""
    if name not in DEVICE_PRESETS:
        close = difflib.get_close_matches(name, list(DEVICE_PRESETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown device model {name!r}{hint}; known: "
                          f"{', '.join(DEVICE_PRESETS)}")
    return DEVICE_PRESETS[name]


def parse_device(values: Any, source: str) -> DeviceSection:
    """A [device] table (a target file's): `preset = NAME` (optional) and field overrides
    over it, each key and value checked as every schema section is."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: [device] must be a table, got {values!r}")
    fields_given = {k: v for k, v in values.items() if k != "preset"}
    name = values.get("preset")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{source}: [device] preset = {name!r} must be a preset name")
    base = device_preset(name) if name is not None else DeviceSection()
    check_keys(fields_given, [*field_types(DeviceSection), "preset"], "device", source)
    kw = {k: parse_value(DeviceSection, k, v, "device", source) for k, v in fields_given.items()}
    try:
        return replace(base, **kw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: [device] {exc}") from None


def noise_from_options(device_model: str | None, items: Sequence[str],
                       recorded: DeviceSection | None = None) -> DeviceSection | None:
    """The device model a run uses: the `--device-model` preset, else the one the program's
    target records (`recorded`), else the ideal chip; then each `--noise KEY=VALUE` over
    it. None when none of them is given (the ideal chip)."""
    if device_model is None and not items and (recorded is None or not recorded.enabled):
        return None
    base = (device_preset(device_model) if device_model is not None
            else recorded if recorded is not None else DeviceSection())
    return DeviceSection.parse(list(items), base=base)


def describe(cfg: DeviceSection) -> str:
    """'prog_model=rram_wan2022, drift_t=86400': the fields a device model sets."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in cfg.changed().items()) or "ideal"


def sigma_table() -> str:
    """The fitted programming sigmas, % of g_max, at the levels of a 2-bit cell and at their
    peak, and PCM's 1/f term: the derived figures of docs/devices.md
    (`python -m farc.runtime.devices`)."""
    grid = np.linspace(0.0, 1.0, 10001)
    curves = {"pcm_joshi2020": pcm_prog_sigma}
    curves.update({f"rram_wan2022, {t:g} s": (lambda g, t=t: rram_prog_sigma(g, t))
                   for t in RRAM_WAN_COEFF})
    lines = ["| model | 0 | 1/3 | 2/3 | 1 | max (at g_rel) |", "|---|---|---|---|---|---|"]
    for name, f in curves.items():
        at = 100 * f(np.array([0.0, 1 / 3, 2 / 3, 1.0]))
        peak = f(grid)
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in at)
                     + f" | {100 * peak.max():.2f} ({grid[peak.argmax()]:.2f}) |")
    lines += ["", "PCM 1/f read noise, % of the drifted G, at g_rel 1/3, 2/3, 1:"]
    for t in (0.0, 3600.0, 86400.0):
        at = 100 * pcm_read_sigma(np.array([1 / 3, 2 / 3, 1.0]), PCM_T0 + t)
        lines.append(f"- {t:g} s after programming: " + " / ".join(f"{v:.2f}" for v in at))
    return "\n".join(lines)


if __name__ == "__main__":
    print(sigma_table())
