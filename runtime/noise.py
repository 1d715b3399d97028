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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .crossbar import PartialSums, PreparedLayer
from .numerics import max_code
from .schema import DeviceSection, DriftCompensation, DriftModel, ProgModel


def g_off_units(cell_bits: int, cfg: DeviceSection) -> float:
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


def program_layer(levels: np.ndarray, cell_bits: int, cfg: DeviceSection,
                  rng: np.random.Generator) -> ProgrammedLayer:
    """One replica programmed: its conductances, then (only when asked for, so the draws of
    every other model stay where they were) its columns' ADC offsets and gains."""
    g = program_conductances(levels, cell_bits, cfg, rng)
    if not cfg.adc_mismatch:
        return ProgrammedLayer(g)
    shape = (g.shape[0], g.shape[2])
    return ProgrammedLayer(g, 1.0 + rng.normal(0.0, cfg.adc_gain_sigma, size=shape),
                           rng.normal(0.0, cfg.adc_offset_sigma, size=shape))


def program_conductances(levels: np.ndarray, cell_bits: int, cfg: DeviceSection,
                         rng: np.random.Generator) -> np.ndarray:
    """Programmed levels -> the conductances the crossbar actually holds, in level units."""
    span = max_code(cell_bits)
    off = g_off_units(cell_bits, cfg)
    target = levels.astype(np.float64) + off
    g = programmed(target, span, off + span, cfg, rng)
    if cfg.drifts or cfg.drift_model != DriftModel.FIXED:
        g = read_at(g, target, off + span, cfg, rng)
    if cfg.sa0_rate > 0 or cfg.sa1_rate > 0:
        draw = rng.random(size=g.shape)
        g = np.where(draw < cfg.sa0_rate, off, g)
        g = np.where((draw >= cfg.sa0_rate) & (draw < cfg.sa0_rate + cfg.sa1_rate),
                     off + span, g)
    return g.astype(np.float32)


def prog_sigma_units(target: np.ndarray, span: int, g_max: float,
                     cfg: DeviceSection) -> np.ndarray | float:
    """Std of the programming error of each cell, in level units: prog_sigma * span
    (independent), prog_sigma * g (proportional), or the fitted curve at g / g_max."""
    from .devices import pcm_prog_sigma, rram_prog_sigma

    if cfg.prog_model == ProgModel.INDEPENDENT:
        return cfg.prog_sigma * span
    if cfg.prog_model == ProgModel.PROPORTIONAL:
        return cfg.prog_sigma * target
    fit = pcm_prog_sigma(target / g_max) if cfg.prog_model == ProgModel.PCM_JOSHI2020 else \
        rram_prog_sigma(target / g_max, cfg.drift_t)
    return cfg.prog_scale * fit * g_max


def programmed(target: np.ndarray, span: int, g_max: float, cfg: DeviceSection,
               rng: np.random.Generator) -> np.ndarray:
    """Target conductances (level units) plus one programming error per cell, clipped at 0
    (no conductance is negative). No draw when the model is off."""
    if not (cfg.prog_sigma > 0 or cfg.fitted_prog):
        return target
    sigma = prog_sigma_units(target, span, g_max, cfg)
    return np.maximum(target + sigma * rng.normal(0.0, 1.0, size=target.shape), 0.0)


def read_at(g: np.ndarray, target: np.ndarray, g_max: float, cfg: DeviceSection,
            rng: np.random.Generator) -> np.ndarray:
    """Programmed conductances read at drift_t: drifted with each cell's exponent, plus PCM's
    accumulated 1/f noise (pcm_joshi2020), then drift-compensated as the chip would."""
    from .devices import pcm_read_sigma

    out = drift_only(g, cfg, drift_exponents(g.shape, cfg, rng, target / g_max))
    if cfg.drift_model == DriftModel.PCM_JOSHI2020:
        sigma = pcm_read_sigma(g / g_max, cfg.drift_t)
        out = np.maximum(out + np.abs(out) * sigma * rng.normal(0.0, 1.0, size=g.shape), 0.0)
    return compensated(g, out, cfg)


def drift_exponents(shape: tuple[int, ...], cfg: DeviceSection, rng: np.random.Generator,
                    g_rel: np.ndarray | None = None) -> np.ndarray | float:
    """Each cell's drift exponent: drift_nu, or N(drift_nu, drift_nu_sigma) clipped at 0
    (fixed); |N(mu(g), sigma(g))| at the cell's target g_rel (pcm_joshi2020)."""
    if cfg.drift_model == DriftModel.PCM_JOSHI2020:
        from .devices import pcm_drift_moments

        mu, sd = pcm_drift_moments(np.zeros(shape) if g_rel is None else g_rel)
        return np.abs(mu + sd * rng.normal(0.0, 1.0, size=shape))
    if cfg.drift_nu_sigma <= 0:
        return cfg.drift_nu
    return np.maximum(rng.normal(cfg.drift_nu, cfg.drift_nu_sigma, size=shape), 0.0)


def drift_only(g: Any, cfg: DeviceSection, nu: Any) -> Any:
    """g * (t/t0)**-nu per cell, uncompensated."""
    return g * (cfg.drift_t / cfg.drift_t0) ** -nu


def drift(g: Any, cfg: DeviceSection, nu: Any) -> Any:
    """Conductances g (level units, at t0) read at drift_t: g * (t/t0)**-nu per cell (`nu`:
    `drift_exponents`, or the same draw as a tensor), then, with drift_compensation, times
    the gain re-estimated from a reference read (`compensation_gain`). numpy arrays or
    float64 torch tensors (farc/far/crossbar_torch.py) alike."""
    return compensated(g, drift_only(g, cfg, nu), cfg)


def compensated(g_t0: Any, g_t: Any, cfg: DeviceSection) -> Any:
    """g_t times the drift_compensation gain (global or per column), or g_t when off."""
    if cfg.drift_compensation == DriftCompensation.OFF:
        return g_t
    per_column = cfg.drift_compensation == DriftCompensation.PER_COLUMN
    return g_t * compensation_gain(g_t0, g_t, per_column=per_column)


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
                       cfg: DeviceSection, rng: np.random.Generator) -> PartialSums:
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
                  cfg: DeviceSection, rng: np.random.Generator) -> np.ndarray:
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
