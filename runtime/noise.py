"""Device non-idealities (opt-in, seeded); the model and its units are in docs/emulator.md.

Conductances are kept in *level units*: one unit is the conductance step between adjacent
levels, Δ = (g_on - g_off) / (2**cell_bits - 1), so an ideal cell at level l conducts l and an
ideal partial sum is exactly the integer of docs/numerics.md. Non-idealities turn the
programmed levels into real conductances once, when the emulator "programs" the crossbars
(finite on/off ratio, programming variation, drift, stuck-at faults), and add read noise on
every analog partial sum."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from farc.errors import ConfigError

from .crossbar import PartialSums, PreparedLayer
from .numerics import max_code


@dataclass(frozen=True)
class NoiseConfig:
    """Which non-idealities to apply, and how strongly. All zero / infinite = ideal."""

    prog_sigma: float = 0.0
    """Programming variation: std of a Gaussian added to every cell once, as a fraction of
    the conductance range g_on - g_off (0.02 = 2 %)."""
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
    """Seconds since programming at which the crossbars are read."""
    drift_t0: float = 1.0
    """Reference time of the programmed conductances, seconds."""
    drift_nu_sigma: float = 0.0
    """Device-to-device spread of the drift exponent: each cell drifts with its own
    nu ~ N(drift_nu, drift_nu_sigma), clipped at 0 (as in PCM/ReRAM drift models, e.g.
    aihwkit's). With one nu for every cell, drift is a pure gain that compensation undoes."""
    drift_compensation: float = 0.0
    """1: global drift compensation. Right after programming (t0) the chip reads a reference
    input (every used row driven) and stores the summed column currents per layer; at
    drift_t it reads it again and applies the gain sum(t0) / sum(t) to that layer's reads
    (in the analog domain, like a read-voltage or integration-time trim, so read noise is
    not amplified). 0: off."""

    @property
    def enabled(self) -> bool:
        return (self.prog_sigma > 0 or self.read_sigma > 0 or self.sa0_rate > 0
                or self.sa1_rate > 0 or math.isfinite(self.on_off_ratio)
                or self.drifts)

    @property
    def drifts(self) -> bool:
        """True when the conductances drift between programming and the read."""
        return self.drift_nu > 0 and self.drift_t != self.drift_t0

    def __post_init__(self) -> None:
        for name in ("prog_sigma", "read_sigma", "drift_nu", "drift_nu_sigma"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be finite "
                                  "and >= 0")
        for name in ("sa0_rate", "sa1_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"noise {name} = {getattr(self, name)!r} must be in [0, 1]")
        if self.sa0_rate + self.sa1_rate > 1:
            raise ConfigError(f"noise sa0_rate + sa1_rate = {self.sa0_rate + self.sa1_rate} "
                              "exceeds 1")
        if self.drift_compensation not in (0.0, 1.0):
            raise ConfigError(f"noise drift_compensation = {self.drift_compensation!r} must be "
                              "0 (off) or 1 (on)")
        if not self.on_off_ratio > 1:
            raise ConfigError(f"noise on_off_ratio = {self.on_off_ratio!r} must be > 1")
        if not (0 < self.drift_t0 <= self.drift_t < math.inf):
            raise ConfigError(f"noise drift_t = {self.drift_t!r} must be >= drift_t0 = "
                              f"{self.drift_t0!r} > 0")

    @classmethod
    def parse(cls, items: Sequence[str]) -> NoiseConfig:
        """From KEY=VALUE strings (the CLI's --noise), e.g. ["read_sigma=0.01"]."""
        known = [f.name for f in fields(cls)]
        kw = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ConfigError(f"bad --noise {item!r}: expected KEY=VALUE with KEY one of "
                                  f"{', '.join(known)}")
            try:
                kw[key] = float(value)
            except ValueError:
                raise ConfigError(f"bad --noise {item!r}: {value!r} is not a number") from None
        return cls(**kw)


def g_off_units(cell_bits: int, cfg: NoiseConfig) -> float:
    """Conductance of level 0 in level units: (L-1) / (ratio - 1)."""
    return 0.0 if math.isinf(cfg.on_off_ratio) else max_code(cell_bits) / (cfg.on_off_ratio - 1)


def program_conductances(levels: np.ndarray, cell_bits: int, cfg: NoiseConfig,
                         rng: np.random.Generator) -> np.ndarray:
    """Programmed levels -> the conductances the crossbar actually holds, in level units."""
    span = max_code(cell_bits)
    off = g_off_units(cell_bits, cfg)
    g = levels.astype(np.float64) + off
    if cfg.prog_sigma > 0:
        g = np.maximum(g + rng.normal(0.0, cfg.prog_sigma * span, size=g.shape), 0.0)
    if cfg.drifts:
        g = drift(g, cfg, drift_exponents(g.shape, cfg, rng))
    if cfg.sa0_rate > 0 or cfg.sa1_rate > 0:
        draw = rng.random(size=g.shape)
        g = np.where(draw < cfg.sa0_rate, off, g)
        g = np.where((draw >= cfg.sa0_rate) & (draw < cfg.sa0_rate + cfg.sa1_rate),
                     off + span, g)
    return g.astype(np.float32)


def drift_exponents(shape: tuple[int, ...], cfg: NoiseConfig,
                    rng: np.random.Generator) -> np.ndarray | float:
    """Each cell's drift exponent: drift_nu, or N(drift_nu, drift_nu_sigma) clipped at 0."""
    if cfg.drift_nu_sigma <= 0:
        return cfg.drift_nu
    return np.maximum(rng.normal(cfg.drift_nu, cfg.drift_nu_sigma, size=shape), 0.0)


def drift(g: Any, cfg: NoiseConfig, nu: Any) -> Any:
    """Conductances g (level units, at t0) read at drift_t: g * (t/t0)**-nu per cell (`nu`:
    `drift_exponents`, or the same draw as a tensor), then, with drift_compensation, times
    the layer's gain re-estimated from a reference read (`compensation_gain`). numpy arrays
    or float64 torch tensors (farc/far/crossbar_torch.py) alike."""
    out = g * (cfg.drift_t / cfg.drift_t0) ** -nu
    if cfg.drift_compensation:
        out = out * compensation_gain(g, out)
    return out


def compensation_gain(g_t0: Any, g_t: Any) -> float:
    """Global drift compensation: the reference read (every row driven with the top DAC
    digit) sums each column's conductances; the gain is the ratio of the summed reads at t0
    (stored at programming time) and now. One number per layer and replica. float64 arrays
    or tensors."""
    now = float(g_t.sum())
    return float(g_t0.sum()) / now if now > 0 else 1.0


def noisy_partial_sums(pl: PreparedLayer, g: np.ndarray, cell_bits: int, cfg: NoiseConfig,
                       rng: np.random.Generator) -> PartialSums:
    """Partial sums on the real conductances g [row_tiles, rows, J], plus read noise.

    Independent per-cell read noise of std σ on a read with digits u_c sums to a Gaussian of
    std σ * sqrt(sum_k u_c[k]**2) per column, which is what is drawn (same distribution,
    one draw per partial sum instead of one per cell)."""
    sigma = cfg.read_sigma * max_code(cell_bits)

    def run(r: int, lhs: np.ndarray) -> np.ndarray:
        p = lhs @ g[r, : lhs.shape[1]]
        if sigma > 0:
            sumsq = np.einsum("ij,ij->i", lhs, lhs)
            p += (sigma * np.sqrt(sumsq))[:, None] * \
                rng.standard_normal(size=p.shape, dtype=np.float32)
        return p

    return run
