"""Event records of the cost model: the emulator's counters (`farc.runtime.counters`) as
dicts, plus the cost model's own extras, and their pricing on a Target.

The counts come from the one event rule, `farc.runtime.counters.record`, the same function
the emulator applies at run time, so the cost model prices exactly what the emulator counts
(tests/targets/test_events.py checks it on real programs).

Keys: mvms_per_layer {layer id: vectors}, mvms_per_crossbar {crossbar id: MVMs},
dac_cycles, dac_conversions (row drives: slots, an upper bound of the data-dependent
dac_pulses), adc_conversions, digital_ops {kind: elements; matmul_mac, quantize,
shift_add, rescale included}, bytes_moved (float32 register bytes), instructions.
Cost-model-only extras: interconnect_bytes (MVM inputs/outputs between tiles, float32
bytes), interconnect_byte_hops (those bytes times the hops they travel on the target's
topology, set by cost.py from the placement), step_multiplies (ADC outputs scaled by a
uniform, non power-of-two step: one per conversion of a layer with adc_step_rule =
'uniform') and cell_writes (attention costed as crossbar rewrites)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from farc.runtime.counters import BYTES_PER_ELEMENT, Counters, record, record_loop, record_mvm
from farc.runtime.isa import DIGITAL_KINDS, MATMUL_KIND, disagreements
from farc.runtime.numerics import XbarParams
from farc.runtime.schema import StepRule
from farc.runtime.walk import Shape
from farc.targets.derived import adc_conversion_pj, step_multiply_pj
from farc.targets.mvm import Geometry, activation_bytes
from farc.targets.target import Target

from farc.errors import ConfigError

COUNTS = ("dac_cycles", "dac_conversions", "adc_conversions", "bytes_moved", "instructions")
"""Scalar counts shared with the emulator's Counters."""
SCALARS = (*COUNTS, "interconnect_bytes", "interconnect_byte_hops", "step_multiplies",
           "cell_writes")


def new_events() -> dict[str, Any]:
    """An empty event record."""
    return {"mvms_per_layer": defaultdict(int), "mvms_per_crossbar": defaultdict(int),
            "digital_ops": defaultdict(int), **dict.fromkeys(SCALARS, 0)}


def events_of(c: Counters) -> dict[str, Any]:
    """The event record of counts made by the event rule (no extras yet)."""
    ev = new_events()
    for key in ("mvms_per_layer", "mvms_per_crossbar", "digital_ops"):
        ev[key].update(getattr(c, key))
    for key in COUNTS:
        ev[key] = getattr(c, key)
    return ev


def accumulate(total: dict[str, Any], ev: dict[str, Any], times: int = 1) -> None:
    """total += times * ev."""
    for key in ("mvms_per_layer", "mvms_per_crossbar", "digital_ops"):
        for k, v in ev[key].items():
            total[key][k] += v * times
    for key in SCALARS:
        total[key] += ev[key] * times


def finalize(ev: dict[str, Any]) -> dict[str, Any]:
    """Plain dicts, sorted keys, zero digital kinds dropped (the emulator's to_dict shape)."""
    out = dict(ev)
    out["mvms_per_layer"] = {str(k): v for k, v in sorted(ev["mvms_per_layer"].items())}
    out["mvms_per_crossbar"] = {str(k): v for k, v in sorted(ev["mvms_per_crossbar"].items())}
    out["digital_ops"] = {k: v for k, v in sorted(ev["digital_ops"].items()) if v}
    return out


def instruction_events(ins: dict[str, Any], in_shapes: tuple[Shape, ...],
                       out_shape: Shape | None,
                       layer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Events of one execution of a non-loop instruction: the event rule's counts, plus the
    interconnect bytes of an `mvm` (its inputs in and outputs out of the tile). `layer` is
    the mvm's layer dict."""
    c = Counters()
    geom = Geometry.from_layer(layer) if layer is not None else None
    record(c, ins, in_shapes, out_shape, geom, None if layer is None else layer.get("crossbars"))
    ev = events_of(c)
    if ins["op"] == "mvm":
        ev["interconnect_bytes"] = c.bytes_moved
        if layer is not None and XbarParams.from_layer(layer).adc.step_rule == StepRule.UNIFORM:
            ev["step_multiplies"] = c.adc_conversions
    return ev


def mvm_layer_events(g: Geometry, vectors: int = 1, layer_id: int = 0,
                     crossbars: list[list[int]] | None = None) -> dict[str, Any]:
    """`vectors` MVMs on a layer placed as `g` (counters.record_mvm): every crossbar of one
    replica per vector; the replicas (physical ids `crossbars`, one list per replica) share
    the vectors round-robin."""
    c = Counters()
    record_mvm(c, layer_id, vectors, g, crossbars)
    return events_of(c)


def loop_events(io_elements: int, T: int) -> dict[str, Any]:
    """A loop's own events (counters.record_loop): the instruction and T steps of gathers
    and scatters of `io_elements` elements each."""
    c = Counters()
    record_loop(c, io_elements, T)
    return events_of(c)


def price(ev: dict[str, Any], target: Target, adc_bits: int | None = None) -> dict[str, float]:
    """Energy by component (pJ) of an event record on `target`: each count times its
    per-event energy. Register bytes are float32 in the emulator; the hardware holds
    activations at the DAC precision, so bytes are scaled by ceil(input_bits/8) / 4.

    Also prices the emulator's own counters (`Counters.to_dict()`): their measured
    `dac_pulses` (non-zero digits) replace the slot count `dac_conversions` when present;
    they carry no `interconnect_bytes` or `cell_writes` (those components are then 0).

    The ADC's energy per conversion is `derived.adc_conversion_pj` at `adc_bits` (an mvm's
    layer records its own; the target's adc.bits by default);
    a uniform ADC step adds one periphery multiply per conversion (`step_multiplies`, priced
    in the shift_add component). Interconnect energy is per byte per hop: the bytes times
    the hops they travel (`interconnect_byte_hops`; one hop each when absent)."""
    e, d = target.energy, target.digital
    pulses = ev.get("dac_pulses")
    pulses = ev["dac_conversions"] if pulses is None else pulses
    byte_scale = activation_bytes(target) / BYTES_PER_ELEMENT
    ops = ev["digital_ops"]
    digital = sum(n * _digital_pj(kind, d) for kind, n in ops.items() if kind != "shift_add")
    return {
        "crossbar": ev["dac_cycles"] * e.crossbar_cycle_pj,
        "dac": pulses * e.dac_pulse_pj,
        "adc": ev["adc_conversions"] * adc_conversion_pj(target, adc_bits),
        "shift_add": ops.get("shift_add", 0) * e.shift_add_pj +
        ev.get("step_multiplies", 0) * step_multiply_pj(target),
        "digital": digital,
        "buffer": ev["bytes_moved"] * byte_scale * e.buffer_pj_per_byte,
        "interconnect": ev.get("interconnect_byte_hops", ev.get("interconnect_bytes", 0)) *
        byte_scale * e.interconnect_pj_per_byte,
        "write": ev.get("cell_writes", 0) * target.write.cell_pj,
    }


DIGITAL_KEY = {"add": "add", "sub": "add", "scale": "add", "mul": "mul", "sigmoid": "sigmoid",
               "tanh": "tanh", "gelu": "gelu", "relu": "add", "layernorm": "layernorm",
               "softmax": "softmax", "quantize": "mul", "rescale": "mul",
               "pool": "add", "reduce": "add", "log_softmax": "softmax", "clip": "add",
               "leaky_relu": "mul"}
"""Pricing: digital_ops kind -> [digital] key of its per-element energy and cycles (relu, a
compare-and-select per element, is priced as one add: no target key of its own). The
digital ops of users' models reuse the existing units, none has a key of its own: `pool`
(per window element) and `reduce` (per input element) are one add or compare per element
read (the divide of a mean is per output element, a window's share of it is below one
add); `clip` is two compare-and-selects, as cheap as relu's one on an ALU that compares in
one cycle, so one add; `leaky_relu` a multiply and a select, one mul; `log_softmax` is
softmax's passes with a log lookup in place of the divide, so priced as softmax."""
PRICED_APART = (MATMUL_KIND, "shift_add")
"""digital_ops kinds priced by their own constants ([digital] matmul_mac_pj, shift_add_pj)."""


def pricing_disagreements() -> list[str]:
    """How the pricing tables and the opcode table's digital kinds disagree: every kind the
    event rule can count needs exactly one price."""
    return disagreements("targets/events.py DIGITAL_KEY + PRICED_APART",
                         [*DIGITAL_KEY, *PRICED_APART], DIGITAL_KINDS)


def _digital_pj(kind: str, d: Any) -> float:
    if kind == MATMUL_KIND:
        return d.matmul_mac_pj
    if kind not in DIGITAL_KEY:
        raise ConfigError(f"no [digital] energy for digital op kind {kind!r}; known: "
                          f"{', '.join(sorted([*DIGITAL_KEY, MATMUL_KIND]))}")
    return getattr(d, f"{DIGITAL_KEY[kind]}_pj")
