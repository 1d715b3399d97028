"""Crossbar MVMs: geometry of a layer on crossbars and the latency of applying it to a
number of input vectors (events: events.py; energy: events.price). With those, these
small functions are what the literature anchors test (docs/cost-model.md): ISAAC's
1.6 us / 27.4 nJ-of-ADC 16-bit MVM, PUMA's 1.8 us MVM."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from farc.targets.target import Target


@dataclass(frozen=True)
class Geometry:
    """How one weight matrix W [K, N] sits on crossbars (docs/tile-program.md)."""

    K: int
    """Weight rows (inputs)."""
    N: int
    """Weight columns (outputs)."""
    rows: int
    """Crossbar rows."""
    cols: int
    """Crossbar columns."""
    slices: int
    """Cells per weight magnitude."""
    signs: int
    """Physical columns per slice (2 differential, 1 offset)."""
    cycles: int
    """DAC input cycles per MVM: ceil(input_bits / dac_bits)."""
    replicas: int = 1
    """Copies of the layer; input vectors are split over them."""

    @property
    def phys_cols(self) -> int:
        """Expanded columns N * slices * signs."""
        return self.N * self.slices * self.signs

    @property
    def row_tiles(self) -> int:
        return math.ceil(self.K / self.rows)

    @property
    def col_tiles(self) -> int:
        return math.ceil(self.phys_cols / self.cols)

    @property
    def crossbars(self) -> int:
        """Crossbars of one replica."""
        return self.row_tiles * self.col_tiles

    @property
    def used_cols(self) -> int:
        """Columns in use in the fullest crossbar (dense packing)."""
        return min(self.cols, self.phys_cols)

    @property
    def utilization(self) -> float:
        """Fraction of the replica's cells that hold a weight slice."""
        return self.K * self.phys_cols / (self.crossbars * self.rows * self.cols)

    @staticmethod
    def for_matrix(target: Target, K: int, N: int, replicas: int = 1) -> Geometry:
        """Geometry of W [K, N] on `target` with its default quantization."""
        return Geometry(K, N, target.crossbar.rows, target.crossbar.cols, target.weight_slices,
                        target.signs, target.input_cycles, replicas)

    @staticmethod
    def from_layer(layer: dict[str, Any]) -> Geometry:
        """Geometry of a crossbar layer of a tile program (its own recorded fields)."""
        cycles = math.ceil(int(layer["input_bits"]) / int(layer["dac_bits"]))
        return Geometry(int(layer["K"]), int(layer["N"]), int(layer["rows"]), int(layer["cols"]),
                        int(layer["slices"]), int(layer["signs"]), cycles,
                        int(layer.get("replicas", 1)))


def cycle_ns(target: Target, g: Geometry) -> float:
    """One input cycle: the crossbar read, or longer when the ADC shared by
    `columns_per_adc` columns needs more time to convert the used ones (read and conversion
    of consecutive cycles are pipelined, so the slower of the two sets the pace)."""
    per_adc = min(target.adc.columns_per_adc, g.used_cols)
    return max(target.latency.crossbar_read_ns, per_adc / target.latency.adc_gsps)


def mvm_latency_ns(target: Target, g: Geometry, vectors: int = 1) -> float:
    """`vectors` input vectors through the layer: the vectors are split over the replicas,
    stream through the pipeline one cycle per input bit-slice, plus the pipeline fill."""
    per_replica = math.ceil(vectors / g.replicas)
    return (per_replica * g.cycles + target.latency.mvm_pipeline_cycles) * cycle_ns(target, g)


def activation_bytes(target: Target) -> int:
    """Bytes per activation element in buffers and on the network: the DAC precision."""
    return math.ceil(target.quant.input_bits / 8)


def write_latency_ns(target: Target, g: Geometry) -> float:
    """Programming a matrix: its crossbars in parallel, each row after row."""
    return min(g.K, g.rows) * target.write.row_ns


def write_cells(g: Geometry) -> int:
    """Cells programmed to store W [K, N]: K rows x the expanded columns."""
    return g.K * g.phys_cols
