"""Chip totals from the component constants: peak power and area of one IMA (core), one tile
and the whole chip, computed from the same per-event energies and areas the cost model
prices programs with, to be set beside the paper's own totals (`[published]`).

Peak power is every component at full activity, as ISAAC Table 6 and PUMA's simulator
(`compute_pow_peak`) state it: each crossbar read once per input cycle (`mvm.cycle_ns` of a
full crossbar: the read, or longer when its shared ADCs convert more slowly), each of its
rows driven by a DAC, each ADC converting at its full rate with a shift-and-add per result,
the buffer at its bandwidth, every router port moving a flit per cycle (a router shared by
`tiles_per_router` tiles), plus the periphery the events do not cover ([power]). Energy per
event / time per event = power: pJ / ns = mW."""

from __future__ import annotations

from dataclasses import dataclass

from farc.targets.derived import (
    adc_area_mm2,
    adc_conversion_pj,
    adc_conversions_per_ns,
    adcs_per_crossbar,
)
from farc.targets.mvm import Geometry, cycle_ns
from farc.targets.target import Target

LEVELS = ("ima", "tile", "chip")


@dataclass(frozen=True)
class ChipTotals:
    """Peak power (mW) and area (mm^2) per level, each with its breakdown."""

    power_mw: dict[str, dict[str, float]]
    """level -> component -> mW (one IMA; one tile incl. its IMAs; the chip)."""
    area_mm2: dict[str, dict[str, float]]
    """level -> component -> mm^2."""

    def total_power_mw(self, level: str) -> float:
        return sum(self.power_mw[level].values())

    def total_area_mm2(self, level: str) -> float:
        return sum(self.area_mm2[level].values())


def ima_power_mw(t: Target) -> dict[str, float]:
    """Peak power of one IMA by component, mW."""
    x, n = t.crossbar, t.chip.crossbars_per_ima
    read = cycle_ns(t, Geometry.for_matrix(t, x.rows, x.cols))  # one input cycle
    adcs = n * adcs_per_crossbar(t)
    rate = adcs * adc_conversions_per_ns(t)  # conversions per ns in the IMA
    return {"crossbar": n * t.energy.crossbar_cycle_pj / read,
            "dac": n * x.rows * t.energy.dac_pulse_pj / read,
            "adc": rate * adc_conversion_pj(t),
            "shift_add": rate * t.energy.shift_add_pj,
            "other": t.power.ima_other_mw}


def ima_area_mm2(t: Target) -> dict[str, float]:
    """Area of one IMA by component, mm^2."""
    a, x, n = t.area, t.crossbar, t.chip.crossbars_per_ima
    return {"crossbar": n * a.crossbar_mm2, "dac": n * x.rows * a.dac_mm2,
            "adc": n * adcs_per_crossbar(t) * adc_area_mm2(t),
            "sample_hold": n * x.cols * a.sample_hold_mm2, "other": a.ima_overhead_mm2}


def chip_totals(t: Target) -> ChipTotals:
    """Peak power and area of one IMA, one tile and the chip, from the component constants."""
    ic = t.interconnect
    ima_p, ima_a = ima_power_mw(t), ima_area_mm2(t)
    k = t.chip.imas_per_tile
    network = t.energy.interconnect_pj_per_byte * ic.link_bytes_per_ns * ic.router_ports
    mesh = ic.topology == "mesh"  # a router per `tiles_per_router` tiles; a bus is one link
    tile_p = {"imas": k * sum(ima_p.values()),
              "buffer": t.energy.buffer_pj_per_byte * t.latency.buffer_bytes_per_ns,
              "router": network / ic.tiles_per_router if mesh else 0.0,
              "other": t.power.tile_other_mw}
    tile_a = {"imas": k * sum(ima_a.values()), "other": t.area.tile_overhead_mm2}
    tiles = t.chip.tiles
    chip_p = {"tiles": tiles * sum(tile_p.values()), "bus": 0.0 if mesh else network,
              "other": t.power.chip_other_mw}
    chip_a = {"tiles": tiles * sum(tile_a.values()), "other": t.area.chip_overhead_mm2}
    return ChipTotals({"ima": ima_p, "tile": tile_p, "chip": chip_p},
                      {"ima": ima_a, "tile": tile_a, "chip": chip_a})


def published(t: Target) -> dict[str, tuple[float, float]]:
    """level -> (published power mW, published area mm^2) from [published]; 0 = none."""
    p = t.published
    return {"ima": (p.ima_power_mw, p.ima_area_mm2), "tile": (p.tile_power_mw, p.tile_area_mm2),
            "chip": (p.chip_power_w * 1000.0, p.chip_area_mm2)}
