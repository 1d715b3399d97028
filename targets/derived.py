"""Per-event costs derived from a target's constants: the one place where a cost depends on
more than one key. Everything that prices an ADC (events.price, cost.area_mm2, chip.py)
reads it here.

ADC scaling with resolution. A target file gives the energy and area of the ADC its paper
describes (`[energy] adc_reference_bits`). Another `adc.bits` is priced with the Walden
figure of merit held constant: FoM = P / (2**ENOB * fs), so the energy of one conversion,
P / fs = FoM * 2**ENOB, doubles per bit. This is the regime of SAR ADCs up to ~10 bits
(Murmann's ADC survey: below ~10 bits designs are not thermal-noise limited, where the
Schreier figure would make energy grow 4x per bit). Area is scaled the same way, 2x per bit,
because a SAR's area is dominated by its capacitive DAC of 2**bits unit capacitors; this is
an assumption (area figures in the survey scatter widely), stated in docs/targets.md."""

from __future__ import annotations

import math
from typing import Any


def adc_scale(t: Any) -> float:
    """2**(adc.bits - adc_reference_bits): energy and area of this ADC relative to the
    published one."""
    return 2.0 ** (t.adc.bits - t.energy.adc_reference_bits)


def adc_conversion_pj(t: Any) -> float:
    """Energy of one conversion of this target's ADC, pJ."""
    return t.energy.adc_conversion_pj * adc_scale(t)


def adc_area_mm2(t: Any) -> float:
    """Area of one ADC of this target's resolution, mm^2."""
    return t.area.adc_mm2 * adc_scale(t)


def adcs_per_crossbar(t: Any) -> int:
    """ADCs one crossbar has: its columns over the columns one ADC serves."""
    return math.ceil(t.crossbar.cols / t.adc.columns_per_adc)


def adc_conversions_per_ns(t: Any) -> float:
    """Conversions one ADC completes per ns at full activity: its sample rate, or fewer when
    its columns are all converted before the next crossbar read is ready."""
    return min(t.latency.adc_gsps, t.adc.columns_per_adc / t.latency.crossbar_read_ns)


def step_multiply_pj(t: Any) -> float:
    """Energy of scaling one ADC output by a uniform (non power-of-two) step: a multiply in
    the periphery, priced as one digital `mul` (a pow2 step is a free shift)."""
    return t.digital.mul_pj
