"""Crossbar MVMs: geometry of a layer on crossbars and the latency of applying it to a
number of input vectors (events: events.py; energy: events.price). With those, these
small functions are what the literature anchors test (docs/cost-model.md): ISAAC's
1.6 us / 27.4 nJ-of-ADC 16-bit MVM, PUMA's 1.8 us MVM."""

from __future__ import annotations

import math

from farc.runtime.numerics import Geometry
from farc.runtime.schema import AdcSection
from farc.targets.derived import adc_gsps
from farc.targets.target import Target

__all__ = ["Geometry", "activation_bytes", "cycle_ns", "mvm_latency_ns", "write_latency_ns"]


def cycle_ns(target: Target, g: Geometry, adc: AdcSection | None = None) -> float:
    """One input cycle: the crossbar read, or longer when the ADC shared by
    `columns_per_adc` columns needs more time to convert the used ones (read and conversion
    of consecutive cycles are pipelined, so the slower of the two sets the pace). `adc`: the
    layer's own ADC section (a program layer may convert at fewer bits than the chip's
    ADC); the target's by default."""
    adc = target.adc if adc is None else adc
    per_adc = min(adc.columns_per_adc, g.used_cols)
    return max(target.latency.crossbar_read_ns, per_adc / adc_gsps(target, adc.bits))


def mvm_latency_ns(target: Target, g: Geometry, vectors: int = 1,
                   adc: AdcSection | None = None) -> float:
    """`vectors` input vectors through the layer: the vectors are split over the replicas,
    stream through the pipeline one cycle per input bit-slice, plus the pipeline fill."""
    per_replica = math.ceil(vectors / g.replicas)
    return (per_replica * g.cycles + target.latency.mvm_pipeline_cycles) * \
        cycle_ns(target, g, adc)


def activation_bytes(target: Target) -> int:
    """Bytes per activation element in buffers and on the network: the DAC precision."""
    return math.ceil(target.quant.input_bits / 8)


def write_latency_ns(target: Target, g: Geometry) -> float:
    """Programming a matrix: its crossbars in parallel, each row after row."""
    return min(g.K, g.rows) * target.write.row_ns
