"""Typed cost sections of a target file: [latency], [energy], [area], [write], [digital],
[interconnect], [power] and [published] (the paper's totals, for comparison only).

Defaults are ISAAC's (Shafiee et al., ISCA 2016, Table 6), like the defaults of the
architecture sections in `target.py`; every shipped TOML sets every key with its source.
All values must be >= 0 (checked on load). Units are in the field names' docstrings:
ns, GS/s, pJ, mm^2."""

from __future__ import annotations

from dataclasses import dataclass

ADC_LAWS = ("walden", "sar")
"""`[energy] adc_law` values (the laws themselves: targets/derived.py)."""


@dataclass(frozen=True)
class LatencySpec:
    crossbar_read_ns: float = 100.0
    """Time of one crossbar read (one DAC input cycle: drive rows, settle, sample-and-hold),
    ns. ISAAC: 100 ns. > 0."""
    adc_gsps: float = 1.28
    """Sample rate of the reference ADC (`energy.adc_reference_bits`), giga-samples/s; another
    `adc.bits` is scaled by `energy.adc_law` (`targets/derived.py`). One ADC digitises its
    `adc.columns_per_adc` columns one after another, so a cycle lasts at least columns /
    rate ns. > 0."""
    mvm_pipeline_cycles: int = 0
    """Extra cycles to fill/drain the MVM pipeline once per MVM instruction (PUMA: 2, for the
    DAC input and the ADC/shift-add stages; ISAAC's 16-cycle MVM counts none). >= 0."""
    buffer_bytes_per_ns: float = 38.4
    """Buffer (eDRAM/SRAM) bandwidth for data-movement ops (concat, slice, transpose,
    gather/scatter of loops), bytes/ns. > 0."""


@dataclass(frozen=True)
class EnergySpec:
    crossbar_cycle_pj: float = 30.0
    """Energy of one crossbar for one input cycle (array read incl. sample-and-hold), pJ."""
    dac_pulse_pj: float = 0.39
    """Energy of one DAC pulse (one row, one input cycle), pJ."""
    adc_conversion_pj: float = 1.5625
    """Energy of one conversion of the reference ADC (`adc_reference_bits`), pJ. Another
    `adc.bits` is priced by `adc_law` (`targets/derived.py`)."""
    adc_law: str = "walden"
    """How ADC energy, area and rate scale from `adc_reference_bits` to another width:
    'walden' (Walden figure of merit: 2x energy and area per bit, same rate) or 'sar'
    (NeuroSim's SarADC.cpp: energy ∝ (bits + 8.13)(bits + 1), area ∝ bits + 1.6, rate ∝
    1/(bits + 1)). Both equal the published ADC at the reference width."""
    adc_reference_bits: int = 8
    """Resolution of the ADC whose energy (`adc_conversion_pj`) and area (`area.adc_mm2`) the
    file gives: the published ADC. 1..16."""
    shift_add_pj: float = 0.02
    """Energy of one shift-and-add of an ADC output, pJ."""
    buffer_pj_per_byte: float = 0.54
    """Buffer (eDRAM/SRAM) access energy per byte read or written, pJ/B."""
    interconnect_pj_per_byte: float = 1.09
    """On-chip network energy per byte per hop (one router traversal and its link), pJ/B."""


@dataclass(frozen=True)
class AreaSpec:
    crossbar_mm2: float = 0.000025
    """Area of one crossbar array, mm^2."""
    dac_mm2: float = 0.00000017
    """Area of one DAC (one per crossbar row), mm^2."""
    adc_mm2: float = 0.0012
    """Area of one reference ADC (`energy.adc_reference_bits`), mm^2; another `adc.bits` is
    scaled by `energy.adc_law` (`targets/derived.py`)."""
    sample_hold_mm2: float = 0.00000004
    """Area of one sample-and-hold (one per crossbar column), mm^2."""
    ima_overhead_mm2: float = 0.00311
    """Per-IMA (core) periphery besides DAC/ADC/S+H: shift-and-add units, input and output
    registers, mm^2."""
    tile_overhead_mm2: float = 0.2155
    """Per-tile periphery: buffer, bus, router share, digital units, mm^2."""
    chip_overhead_mm2: float = 0.0
    """Per-chip periphery (off-chip links), mm^2."""


@dataclass(frozen=True)
class WriteSpec:
    row_ns: float = 85.7
    """Time to program one crossbar row (all its columns in parallel, incl. verify), ns.
    Crossbars are programmed in parallel, each row after row."""
    cell_pj: float = 1.29
    """Energy to program one cell, pJ."""
    endurance: float = 1.0e6
    """Write cycles a cell survives. > 0."""


@dataclass(frozen=True)
class DigitalSpec:
    clock_ghz: float = 1.2
    """Clock of the digital units, GHz. > 0."""
    vector_lanes: int = 32
    """Elements the digital vector units process per cycle (per op kind, units assumed on
    every tile, so independent ops overlap). >= 1."""
    add_pj: float = 0.2
    """Energy per element of add/sub/scale/zeros, pJ."""
    mul_pj: float = 0.5
    """Energy per element of mul, pJ."""
    sigmoid_pj: float = 0.2
    """Energy per element of sigmoid (lookup-table unit), pJ."""
    tanh_pj: float = 0.2
    """Energy per element of tanh (lookup-table unit), pJ."""
    gelu_pj: float = 1.0
    """Energy per element of GELU, pJ."""
    layernorm_pj: float = 2.0
    """Energy per element of layernorm (mean, variance, normalise, affine), pJ."""
    softmax_pj: float = 1.5
    """Energy per element of softmax (max, exp, sum, divide), pJ."""
    add_cycles: float = 1.0
    """Lane cycles per element of add/sub/scale/zeros."""
    mul_cycles: float = 1.0
    """Lane cycles per element of mul."""
    sigmoid_cycles: float = 1.0
    """Lane cycles per element of sigmoid."""
    tanh_cycles: float = 1.0
    """Lane cycles per element of tanh."""
    gelu_cycles: float = 4.0
    """Lane cycles per element of GELU."""
    layernorm_cycles: float = 4.0
    """Lane cycles per element of layernorm."""
    softmax_cycles: float = 4.0
    """Lane cycles per element of softmax."""
    matmul_mac_pj: float = 1.0
    """Energy per multiply-accumulate of the digital matmul unit (activation x activation
    matmuls of attention when costed digitally), pJ."""
    matmul_macs_per_cycle: int = 256
    """MACs the digital matmul unit completes per cycle. >= 1."""


@dataclass(frozen=True)
class InterconnectSpec:
    topology: str = "mesh"
    """'mesh': routers on a 2-D grid, a transfer crosses the Manhattan distance between the
    producer's and the consumer's router (+1 for the router it enters); 'bus': one shared
    bus, every transfer one hop."""
    tiles_per_router: int = 4
    """Tiles sharing one router (concentration; ISAAC and PUMA: 4). >= 1."""
    link_bytes_per_ns: float = 4.8
    """Bytes one link (or the bus) carries per ns: flit width x clock. > 0."""
    hop_ns: float = 0.833
    """Router + link latency of one hop, ns (one cycle of the router clock). >= 0."""
    router_ports: int = 8
    """Ports of a router; at peak every port moves a flit per cycle (chip power). >= 1."""


@dataclass(frozen=True)
class PowerSpec:
    ima_other_mw: float = 1.48
    """Peak power of the per-IMA (core) parts the event costs do not cover (registers,
    instruction memory, sample-and-holds, ALUs), mW: what chip totals add per IMA."""
    tile_other_mw: float = 9.65
    """Peak power of the per-tile parts the event costs do not cover (bus, output register,
    pooling, digital units), mW."""
    chip_other_mw: float = 10400.0
    """Peak power of the chip-level parts (off-chip links), mW."""


@dataclass(frozen=True)
class PublishedSpec:
    ima_power_mw: float = 0.0
    """Published peak power of one IMA (core), mW; 0 = not published. For comparison only:
    `farc targets` and tests set the model's totals beside it."""
    ima_area_mm2: float = 0.0
    """Published area of one IMA (core), mm^2; 0 = not published."""
    tile_power_mw: float = 0.0
    """Published peak power of one tile, mW; 0 = not published."""
    tile_area_mm2: float = 0.0
    """Published area of one tile, mm^2; 0 = not published."""
    chip_power_w: float = 0.0
    """Published peak power of the chip (node), W; 0 = not published."""
    chip_area_mm2: float = 0.0
    """Published area of the chip (node), mm^2; 0 = not published."""


COST_SPECS: dict[str, type] = {
    "latency": LatencySpec,
    "energy": EnergySpec,
    "area": AreaSpec,
    "write": WriteSpec,
    "digital": DigitalSpec,
    "interconnect": InterconnectSpec,
    "power": PowerSpec,
    "published": PublishedSpec,
}
TOPOLOGIES = ("mesh", "bus")
# Keys that must be strictly positive (everything else only >= 0).
POSITIVE = {
    ("latency", "crossbar_read_ns"), ("latency", "adc_gsps"), ("latency", "buffer_bytes_per_ns"),
    ("write", "endurance"), ("digital", "clock_ghz"), ("digital", "vector_lanes"),
    ("digital", "matmul_macs_per_cycle"), ("interconnect", "tiles_per_router"),
    ("interconnect", "router_ports"),
    ("interconnect", "link_bytes_per_ns"), ("energy", "adc_reference_bits"),
}
