"""Device non-idealities (opt-in, seeded); the model and its units are in docs/emulator.md,
the device models and presets in docs/devices.md.

Conductances are kept in *level units*: one unit is the conductance step between adjacent
levels, Δ = (g_on - g_off) / (2**cell_bits - 1), so an ideal cell at level l conducts l and an
ideal partial sum is exactly the integer of docs/numerics.md. Non-idealities turn the
programmed levels into real conductances once, when the emulator "programs" the crossbars
(finite on/off ratio, programming variation, drift, stuck-at faults) and draws each column's
ADC offset and gain once per chip; they add read noise and ADC noise on every analog partial
sum. The fitted device curves (PCM, ReRAM) live in runtime/devices.py with their sources."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from farc.errors import ConfigError

from .crossbar import PartialSums, PreparedLayer
from .numerics import max_code

PROG_MODELS = ("independent", "proportional", "pcm_joshi2020", "rram_wan2022")
"""Programming-noise models: `independent` G + N(0, σ) (CrossSim NormalIndependentDevice),
`proportional` G (1 + N(0, σ)) (CrossSim NormalProportionalDevice), and the per-level fits
of runtime/devices.py."""
DRIFT_MODELS = ("fixed", "pcm_joshi2020")
"""Drift exponents: `fixed` N(drift_nu, drift_nu_sigma) for every cell; `pcm_joshi2020`
per device from the cell's level (runtime/devices.py), plus PCM's accumulated 1/f noise."""
DRIFT_COMPENSATION = {0.0: "off", 1.0: "global", 2.0: "per column"}


@dataclass(frozen=True)
class NoiseConfig:
    """Which non-idealities to apply, and how strongly. All zero / infinite = ideal."""

    prog_sigma: float = 0.0
    """Programming variation of the `independent` and `proportional` models: the std of a
    Gaussian drawn once per cell, as a fraction of g_on - g_off (0.02 = 2 %; independent) or
    of the cell's own conductance (proportional)."""
    read_sigma: float = 0.0
    """Read noise: std of an independent Gaussian per cell and per read (per DAC cycle), as
    a fraction of g_on - g_off."""
    sa0_rate: float = 0.0
    """Fraction of cells stuck at g_off (level 0), independent of the programmed level."""
    sa1_rate: float = 0.0
    """Fraction of cells stuck at g_on (the top level)."""
    on_off_ratio: float = math.inf
    """g_on / g_off; finite values make level 0 conduct g_off = g_on / ratio (not 0)."""
    drift_nu: float = 0.0
    """Drift exponent: G(t) = G(t0) * (t / t0) ** -nu."""
    drift_t: float = 1.0
    """Seconds since programming at which the crossbars are read. The rram_wan2022 model
    reads its spread at this time (one of its fitted times)."""
    drift_t0: float = 1.0
    """Reference time of the programmed conductances, seconds."""
    drift_nu_sigma: float = 0.0
    """Device-to-device spread of the drift exponent: each cell drifts with its own
    nu ~ N(drift_nu, drift_nu_sigma), clipped at 0 (as in PCM/ReRAM drift models, e.g.
    aihwkit's). With one nu for every cell, drift is a pure gain that compensation undoes."""
    drift_compensation: float = 0.0
    """0: off. 1: global: right after programming (t0) the chip reads a reference input
    (every used row driven) and stores the summed column currents per layer; at drift_t it
    reads it again and applies the gain sum(t0) / sum(t) to that layer's reads (in the analog
    domain, like a read-voltage or integration-time trim, so read noise is not amplified).
    2: per column (aihwkit PerColumnDriftCompensation): the same ratio per crossbar column,
    each reference read taken less a zero-input read of the same column, so the column's ADC
    offset does not enter the estimate and its ADC gain cancels in the ratio."""
    prog_model: str = "independent"
    """Programming-noise model, one of PROG_MODELS. The fitted ones (pcm_joshi2020,
    rram_wan2022) take their sigma per level from runtime/devices.py, times prog_scale."""
    prog_scale: float = 1.0
    """Multiplies the fitted models' sigma (aihwkit's prog_noise_scale)."""
    drift_model: str = "fixed"
    """Drift-exponent model, one of DRIFT_MODELS."""
    adc_sigma: float = 0.0
    """ADC noise: std of a Gaussian, in LSB (ADC steps), added to every analog partial sum
    before the ADC rounds; fresh per conversion."""
    adc_offset_sigma: float = 0.0
    """Per-column ADC offset: drawn once per chip, N(0, adc_offset_sigma) LSB per column."""
    adc_gain_sigma: float = 0.0
    """Per-column ADC gain mismatch: drawn once per chip, gain 1 + N(0, adc_gain_sigma)."""

    @property
    def enabled(self) -> bool:
        return (self.prog_sigma > 0 or self.read_sigma > 0 or self.sa0_rate > 0
                or self.sa1_rate > 0 or math.isfinite(self.on_off_ratio)
                or self.drifts or self.fitted_prog or self.drift_model != "fixed"
                or self.adc_sigma > 0 or self.adc_mismatch)

    @property
    def drifts(self) -> bool:
        """True when the conductances drift between programming and the read."""
        return ((self.drift_nu > 0 or self.drift_model != "fixed")
                and self.drift_t != self.drift_t0)

    @property
    def fitted_prog(self) -> bool:
        """True for a per-level fitted programming model (runtime/devices.py)."""
        return self.prog_model in ("pcm_joshi2020", "rram_wan2022")

    @property
    def adc_mismatch(self) -> bool:
        """True when each chip draws per-column ADC offsets or gains."""
        return self.adc_offset_sigma > 0 or self.adc_gain_sigma > 0

    @property
    def beyond_twin(self) -> list[str]:
        """The enabled models farc/far/crossbar_torch.py (the fine-tuning twin) does not
        draw yet: it takes prog_sigma as `independent`, `fixed` drift, read noise, stuck-at
        cells, on/off ratio and both compensations, nothing else."""
        out = [f"prog_model={self.prog_model}"] if self.prog_model != "independent" else []
        out += [f"drift_model={self.drift_model}"] if self.drift_model != "fixed" else []
        return out + [k for k in ("adc_sigma", "adc_offset_sigma", "adc_gain_sigma")
                      if getattr(self, k) > 0]

    def __post_init__(self) -> None:
        for name in ("prog_sigma", "read_sigma", "drift_nu", "drift_nu_sigma", "prog_scale",
                     "adc_sigma", "adc_offset_sigma", "adc_gain_sigma"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be finite "
                                  "and >= 0")
        for name in ("sa0_rate", "sa1_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be in [0, 1]")
        if self.sa0_rate + self.sa1_rate > 1:
            raise ConfigError(f"noise sa0_rate + sa1_rate = {self.sa0_rate + self.sa1_rate} "
                              "exceeds 1")
        if self.drift_compensation not in DRIFT_COMPENSATION:
            raise ConfigError(f"noise drift_compensation = {self.drift_compensation!r} must be "
                              "0 (off), 1 (global) or 2 (per column)")
        if not self.on_off_ratio > 1:
            raise ConfigError(f"noise on_off_ratio = {self.on_off_ratio!r} must be > 1")
        if not (0 < self.drift_t0 <= self.drift_t < math.inf):
            raise ConfigError(f"noise drift_t = {self.drift_t!r} must be >= drift_t0 = "
                              f"{self.drift_t0!r} > 0")
        self._check_models()

    def _check_models(self) -> None:
        """Model names known; each model's own parameters only where it reads them."""
        for name, known in (("prog_model", PROG_MODELS), ("drift_model", DRIFT_MODELS)):
            if getattr(self, name) not in known:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be one of "
                                  f"{', '.join(known)}")
        if self.fitted_prog and self.prog_sigma > 0:
            raise ConfigError(f"noise prog_sigma applies to the independent and proportional "
                              f"models; {self.prog_model} takes its sigma per level (scale it "
                              "with prog_scale)")
        if self.drift_model != "fixed" and (self.drift_nu > 0 or self.drift_nu_sigma > 0):
            raise ConfigError(f"noise drift_nu and drift_nu_sigma apply to the fixed drift "
                              f"model; {self.drift_model} draws each cell's exponent itself")
        if self.prog_model == "rram_wan2022":
            from .devices import rram_prog_sigma

            rram_prog_sigma(np.zeros(1), self.drift_t)  # refuses an unfitted time

    @classmethod
    def parse(cls, items: Sequence[str], base: NoiseConfig | None = None) -> NoiseConfig:
        """From KEY=VALUE strings (the CLI's --noise), e.g. ["read_sigma=0.01"], each over
        `base` (a device preset; ideal when None)."""
        types = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise ConfigError(f"bad --noise {item!r}: expected KEY=VALUE with KEY one of "
                                  f"{', '.join(types)}")
            if types[key] == "str":
                kw[key] = value.strip()
                continue
            try:
                kw[key] = float(value)
            except ValueError:
                raise ConfigError(f"bad --noise {item!r}: {value!r} is not a number") from None
        return replace(base if base is not None else cls(), **kw)


def g_off_units(cell_bits: int, cfg: NoiseConfig) -> float:
    """Conductance of level 0 in level units: (L-1) / (ratio - 1)."""
    return 0.0 if math.isinf(cfg.on_off_ratio) else max_code(cell_bits) / (cfg.on_off_ratio - 1)


@dataclass
class ProgrammedLayer:
    """One programmed replica of a layer: what a chip holds and what its periphery adds
    on every read."""

    g: np.ndarray
    """Conductances in level units, [row_tiles, rows, J] float32."""
    adc_gain: np.ndarray | None = None
    """Per (row tile, column) ADC gain, [row_tiles, J]; None: ideal."""
    adc_offset: np.ndarray | None = None
    """Per (row tile, column) ADC offset in LSB, [row_tiles, J]; None: ideal."""


def program_layer(levels: np.ndarray, cell_bits: int, cfg: NoiseConfig,
                  rng: np.random.Generator) -> ProgrammedLayer:
    """One replica programmed: its conductances, then (only when asked for, so the draws of
    every other model stay where they were) its columns' ADC offsets and gains."""
    g = program_conductances(levels, cell_bits, cfg, rng)
    if not cfg.adc_mismatch:
        return ProgrammedLayer(g)
    shape = (g.shape[0], g.shape[2])
    return ProgrammedLayer(g, 1.0 + rng.normal(0.0, cfg.adc_gain_sigma, size=shape),
                           rng.normal(0.0, cfg.adc_offset_sigma, size=shape))


def program_conductances(levels: np.ndarray, cell_bits: int, cfg: NoiseConfig,
                         rng: np.random.Generator) -> np.ndarray:
    """Programmed levels -> the conductances the crossbar actually holds, in level units."""
    span = max_code(cell_bits)
    off = g_off_units(cell_bits, cfg)
    target = levels.astype(np.float64) + off
    g = programmed(target, span, off + span, cfg, rng)
    if cfg.drifts or cfg.drift_model != "fixed":
        g = read_at(g, target, off + span, cfg, rng)
    if cfg.sa0_rate > 0 or cfg.sa1_rate > 0:
        draw = rng.random(size=g.shape)
        g = np.where(draw < cfg.sa0_rate, off, g)
        g = np.where((draw >= cfg.sa0_rate) & (draw < cfg.sa0_rate + cfg.sa1_rate),
                     off + span, g)
    return g.astype(np.float32)


def prog_sigma_units(target: np.ndarray, span: int, g_max: float,
                     cfg: NoiseConfig) -> np.ndarray | float:
    """Std of the programming error of each cell, in level units: prog_sigma * span
    (independent), prog_sigma * g (proportional), or the fitted curve at g / g_max."""
    from .devices import pcm_prog_sigma, rram_prog_sigma

    if cfg.prog_model == "independent":
        return cfg.prog_sigma * span
    if cfg.prog_model == "proportional":
        return cfg.prog_sigma * target
    fit = pcm_prog_sigma(target / g_max) if cfg.prog_model == "pcm_joshi2020" else \
        rram_prog_sigma(target / g_max, cfg.drift_t)
    return cfg.prog_scale * fit * g_max


def programmed(target: np.ndarray, span: int, g_max: float, cfg: NoiseConfig,
               rng: np.random.Generator) -> np.ndarray:
    """Target conductances (level units) plus one programming error per cell, clipped at 0
    (no conductance is negative). No draw when the model is off."""
    if not (cfg.prog_sigma > 0 or cfg.fitted_prog):
        return target
    sigma = prog_sigma_units(target, span, g_max, cfg)
    return np.maximum(target + sigma * rng.normal(0.0, 1.0, size=target.shape), 0.0)


def read_at(g: np.ndarray, target: np.ndarray, g_max: float, cfg: NoiseConfig,
            rng: np.random.Generator) -> np.ndarray:
    """Programmed conductances read at drift_t: drifted with each cell's exponent, plus PCM's
    accumulated 1/f noise (pcm_joshi2020), then drift-compensated as the chip would."""
    from .devices import pcm_read_sigma

    out = drift_only(g, cfg, drift_exponents(g.shape, cfg, rng, target / g_max))
    if cfg.drift_model == "pcm_joshi2020":
        sigma = pcm_read_sigma(g / g_max, cfg.drift_t)
        out = np.maximum(out + np.abs(out) * sigma * rng.normal(0.0, 1.0, size=g.shape), 0.0)
    return compensated(g, out, cfg)


def drift_exponents(shape: tuple[int, ...], cfg: NoiseConfig, rng: np.random.Generator,
                    g_rel: np.ndarray | None = None) -> np.ndarray | float:
    """Each cell's drift exponent: drift_nu, or N(drift_nu, drift_nu_sigma) clipped at 0
    (fixed); |N(mu(g), sigma(g))| at the cell's target g_rel (pcm_joshi2020)."""
    if cfg.drift_model == "pcm_joshi2020":
        from .devices import pcm_drift_moments

        mu, sd = pcm_drift_moments(np.zeros(shape) if g_rel is None else g_rel)
        return np.abs(mu + sd * rng.normal(0.0, 1.0, size=shape))
    if cfg.drift_nu_sigma <= 0:
        return cfg.drift_nu
    return np.maximum(rng.normal(cfg.drift_nu, cfg.drift_nu_sigma, size=shape), 0.0)


def drift_only(g: Any, cfg: NoiseConfig, nu: Any) -> Any:
    """g * (t/t0)**-nu per cell, uncompensated."""
    return g * (cfg.drift_t / cfg.drift_t0) ** -nu


def drift(g: Any, cfg: NoiseConfig, nu: Any) -> Any:
    """Conductances g (level units, at t0) read at drift_t: g * (t/t0)**-nu per cell (`nu`:
    `drift_exponents`, or the same draw as a tensor), then, with drift_compensation, times
    the gain re-estimated from a reference read (`compensation_gain`). numpy arrays or
    float64 torch tensors (farc/far/crossbar_torch.py) alike."""
    return compensated(g, drift_only(g, cfg, nu), cfg)


def compensated(g_t0: Any, g_t: Any, cfg: NoiseConfig) -> Any:
    """g_t times the drift_compensation gain (global or per column), or g_t when off."""
    if not cfg.drift_compensation:
        return g_t
    return g_t * compensation_gain(g_t0, g_t, per_column=cfg.drift_compensation == 2)


def compensation_gain(g_t0: Any, g_t: Any, per_column: bool = False) -> Any:
    """Drift compensation from a reference read (every row driven with the top DAC digit,
    less a zero-input read): the ratio of the summed column currents at t0 (stored at
    programming time) and now. Global: one number per layer and replica. Per column: one
    per crossbar column, shape [..., 1, J] for g [..., rows, J] (the zero-input read
    removes the ADC offset, the ADC gain cancels in the ratio, so only conductances
    remain). float64 arrays or tensors."""
    if not per_column:
        now = float(g_t.sum())
        return float(g_t0.sum()) / now if now > 0 else 1.0
    now = g_t.sum(-2, keepdims=True)
    ref = g_t0.sum(-2, keepdims=True)
    return ref / now.clip(min=1e-30) + (now <= 0) * 1.0


def noisy_partial_sums(pl: PreparedLayer, chip: ProgrammedLayer | np.ndarray, cell_bits: int,
                       cfg: NoiseConfig, rng: np.random.Generator) -> PartialSums:
    """Partial sums on the real conductances [row_tiles, rows, J] of one programmed replica,
    plus read noise, then the column's ADC front end: gain * P + (offset + noise) * step,
    what the ADC then rounds.

    Independent per-cell read noise of std σ on a read with digits u_c sums to a Gaussian of
    std σ * sqrt(sum_k u_c[k]**2) per column, which is what is drawn (same distribution,
    one draw per partial sum instead of one per cell). Without ADC noise or mismatch the
    ADC stage draws nothing and changes nothing."""
    if isinstance(chip, np.ndarray):
        chip = ProgrammedLayer(chip)
    g = chip.g
    sigma = cfg.read_sigma * max_code(cell_bits)
    front = cfg.adc_sigma > 0 or chip.adc_gain is not None

    def run(r: int, lhs: np.ndarray) -> np.ndarray:
        p = lhs @ g[r, : lhs.shape[1]]
        if sigma > 0:
            sumsq = np.einsum("ij,ij->i", lhs, lhs)
            p += (sigma * np.sqrt(sumsq))[:, None] * \
                rng.standard_normal(size=p.shape, dtype=np.float32)
        return adc_front_end(p, pl, chip, r, cfg, rng) if front else p

    return run


def adc_front_end(p: np.ndarray, pl: PreparedLayer, chip: ProgrammedLayer, r: int,
                  cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """Analog partial sums [vectors, J] of row tile r as the ADC's comparator sees them:
    gain * P + (offset + N(0, adc_sigma)) * step, offset and noise in LSB of that column's
    step. float64, since P / step is divided in float64 by the ADC rule."""
    step = (pl.col_steps[r] if pl.col_steps is not None else float(pl.steps[r]))
    p = p.astype(np.float64)
    if chip.adc_gain is not None:
        p = p * chip.adc_gain[r] + chip.adc_offset[r] * step
    if cfg.adc_sigma > 0:
        p += cfg.adc_sigma * step * rng.standard_normal(size=p.shape)
    return p
