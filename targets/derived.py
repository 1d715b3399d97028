"""Per-event costs derived from a target's constants: the one place where a cost depends on
more than one key. Everything that prices an ADC (events.price, cost.area_mm2, chip.py,
mvm.cycle_ns) reads it here.

ADC cost law: how conversion energy, area and rate change with the resolution. A target
file gives the energy, area and rate of the ADC its paper describes (`[energy]
adc_conversion_pj`, `[area] adc_mm2`, `[latency] adc_gsps`, all at `[energy]
adc_reference_bits`) and picks the law that carries them to other widths (`[energy]
adc_law`). Both laws equal the published ADC at the reference width, so chip totals at the
published resolution do not depend on the choice.

- "walden": the Walden figure of merit held constant, FoM = P / (2**ENOB * fs), so one
  conversion, P / fs = FoM * 2**ENOB, costs 2x per bit at a fixed rate. Murmann's ADC
  survey (ISSCC/VLSI 1997-2024) shows that frontier for designs up to ~10 bits that are not
  thermal-noise limited (the Schreier figure, 4x per bit, takes over above). Area is scaled
  the same way, 2x per bit (a capacitive DAC of 2**bits unit capacitors); survey areas
  scatter widely, so this half is an assumption.
- "sar": NeuroSim's SAR ADC model (DNN+NeuroSim V1.4, Inference_pytorch/NeuroSIM/
  SarADC.cpp). A conversion takes (bits + 1) cycles of a 1 ns clock (`CalculateLatency`)
  at a power linear in bits (`GetColumnPower`, 22 nm LP: (0.538 * bits + 4.3753) uW plus a
  column-current term that is the array's, not the ADC's), so
  E(bits) ∝ (bits + SAR_ENERGY_OFFSET_BITS) * (bits + 1) and rate ∝ 1 / (bits + 1). Its
  area (`CalculateUnitArea`) is linear in bits: n-gates (269 + 109 (bits - 1)) plus p-gates
  (209 + 73 (bits - 1)); at 22 nm that is about 105 / 124 / 143 / 162 / 180 um^2 at 4-8
  bits (shared/references/published-figures.md), so A(bits) ∝ bits + SAR_AREA_OFFSET_BITS.
  A fixed part dominates at low resolution: +30 % energy and +18 % area from 4 to 5 bits,
  +20 % and +12 % from 7 to 8, where the Walden law says +100 %.
docs/targets.md ("ADC cost law") plots both and says which target uses which, and why."""

from __future__ import annotations

import math
from typing import Any

from farc.targets.cost_specs import ADC_LAWS

__all__ = ["ADC_LAWS", "adc_area_mm2", "adc_conversion_pj", "adc_conversions_per_ns", "adc_gsps",
           "adcs_per_crossbar", "step_multiply_pj"]

SAR_ENERGY_OFFSET_BITS = 4.3753 / 0.538
"""NeuroSim SarADC.cpp, 22 nm LP: fixed over per-bit power, 4.3753 uW / 0.538 uW = 8.13
bits (the power is 0.538 * (bits + 8.13) uW)."""
SAR_AREA_OFFSET_BITS = 30.0 / 18.75
"""NeuroSim SarADC.cpp areas at 22 nm: 105 um^2 at 4 bits, 180 um^2 at 8 bits -> 18.75 um^2
per bit and 30 um^2 at 0 bits; the area is 18.75 * (bits + 1.6) um^2 (within 1 um^2 of the
model at 5-7 bits)."""


def _law_factor(t: Any, bits: int, kind: str) -> float:
    """Cost of a `bits`-bit ADC relative to the reference one under the target's law."""
    law, ref = t.energy.adc_law, t.energy.adc_reference_bits
    if law == "walden":
        return 1.0 if kind == "rate" else 2.0 ** (bits - ref)
    if kind == "energy":
        def e(b: int) -> float:
            return (b + SAR_ENERGY_OFFSET_BITS) * (b + 1)
        return e(bits) / e(ref)
    if kind == "area":
        return (bits + SAR_AREA_OFFSET_BITS) / (ref + SAR_AREA_OFFSET_BITS)
    return (ref + 1) / (bits + 1)  # rate: (bits + 1) clock cycles per conversion


def adc_conversion_pj(t: Any, bits: int | None = None) -> float:
    """Energy of one conversion of a `bits`-bit ADC on this target (default: `adc.bits`), pJ."""
    return t.energy.adc_conversion_pj * _law_factor(t, _bits(t, bits), "energy")


def adc_area_mm2(t: Any, bits: int | None = None) -> float:
    """Area of one `bits`-bit ADC on this target (default: `adc.bits`), mm^2."""
    return t.area.adc_mm2 * _law_factor(t, _bits(t, bits), "area")


def adc_gsps(t: Any, bits: int | None = None) -> float:
    """Sample rate of one `bits`-bit ADC (default: `adc.bits`), GS/s: the published rate under
    "walden"; (ref + 1) / (bits + 1) of it under "sar" (one clock per bit plus one)."""
    return t.latency.adc_gsps * _law_factor(t, _bits(t, bits), "rate")


def _bits(t: Any, bits: int | None) -> int:
    return t.adc.bits if bits is None else int(bits)


def adcs_per_crossbar(t: Any) -> int:
    """ADCs one crossbar has: its columns over the columns one ADC serves."""
    return math.ceil(t.crossbar.cols / t.adc.columns_per_adc)


def adc_conversions_per_ns(t: Any, bits: int | None = None) -> float:
    """Conversions one ADC completes per ns at full activity: its sample rate, or fewer when
    its columns are all converted before the next crossbar read is ready."""
    return min(adc_gsps(t, bits), t.adc.columns_per_adc / t.latency.crossbar_read_ns)


def step_multiply_pj(t: Any) -> float:
    """Energy of scaling one ADC output by a uniform (non power-of-two) step: a multiply in
    the periphery, priced as one digital `mul` (a pow2 step is a free shift)."""
    return t.digital.mul_pj
