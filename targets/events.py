"""Event counts of one executed instruction, with the names and counting rules of the
emulator's counters (`farc.runtime.counters.Counters`): the cost model prices exactly what
the emulator counts. `farc.targets` must not import `farc.runtime` (dependency direction),
so the rule is restated here from the manifest alone; tests/targets/test_events.py keeps
the two equal on real programs.

Keys: mvms_per_layer {layer id: vectors}, mvms_per_crossbar {crossbar id: MVMs},
dac_cycles, dac_conversions (row drives: slots, an upper bound of the data-dependent
dac_pulses), adc_conversions, digital_ops {kind: elements; matmul_mac, quantize,
shift_add, rescale included}, bytes_moved (float32 register bytes), instructions.
Cost-model-only extras: interconnect_bytes (MVM inputs/outputs between tiles, float32
bytes) and cell_writes (attention costed as crossbar rewrites)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from farc.targets.mvm import Geometry
from farc.targets.target import Target

from farc.errors import ConfigError

BYTES_PER_ELEMENT = 4  # emulator registers are float32
DIGITAL = ("add", "sub", "mul", "sigmoid", "tanh", "gelu", "scale", "softmax", "layernorm")
SCALARS = ("dac_cycles", "dac_conversions", "adc_conversions", "bytes_moved", "instructions",
           "interconnect_bytes", "cell_writes")


def new_events() -> dict[str, Any]:
    """An empty event record."""
    return {"mvms_per_layer": defaultdict(int), "mvms_per_crossbar": defaultdict(int),
            "digital_ops": defaultdict(int), **dict.fromkeys(SCALARS, 0)}


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


def instruction_events(ins: dict[str, Any], in_shapes: tuple, out_shape: tuple | None,
                       layer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Events of one execution of a non-loop instruction."""
    ev = new_events()
    op = ins["op"]
    ev["instructions"] = 1
    out_n = math.prod(out_shape) if out_shape is not None else 0
    read = 0 if op == "zeros" else sum(math.prod(s) for s in in_shapes)
    ev["bytes_moved"] = BYTES_PER_ELEMENT * (read + out_n)
    if op in DIGITAL:
        ev["digital_ops"][op] += math.prod(in_shapes[0]) if op == "layernorm" else out_n
    elif op == "matmul":
        ev["digital_ops"]["matmul_mac"] += out_n * in_shapes[0][-1]
    elif op == "mvm":
        vectors = math.prod(in_shapes[0][:-1])
        accumulate(ev, mvm_layer_events(Geometry.from_layer(layer), vectors,
                                        int(layer["id"]), layer.get("crossbars")))
        ev["interconnect_bytes"] = BYTES_PER_ELEMENT * (read + out_n)
    return ev


def mvm_layer_events(g: Geometry, vectors: int = 1, layer_id: int = 0,
                     crossbars: list[list[int]] | None = None) -> dict[str, Any]:
    """`vectors` MVMs on a layer: every crossbar of one replica per vector; the replicas
    (physical ids `crossbars`, one list per replica) share the vectors round-robin."""
    ev = new_events()
    ev["mvms_per_layer"][layer_id] = vectors
    reps = crossbars or [[]]
    for r, ids in enumerate(reps):
        share = vectors // len(reps) + (1 if r < vectors % len(reps) else 0)
        for xb in ids:
            ev["mvms_per_crossbar"][xb] += share
    ev["dac_cycles"] = vectors * g.crossbars * g.cycles
    ev["dac_conversions"] = vectors * g.K * g.col_tiles * g.cycles
    ev["adc_conversions"] = vectors * g.row_tiles * g.phys_cols * g.cycles
    ev["digital_ops"].update(quantize=vectors * g.K, shift_add=ev["adc_conversions"],
                             rescale=vectors * g.N)
    return ev


def loop_events(io_elements: int) -> dict[str, Any]:
    """A loop's own events for one step: gathers and scatters (read + write each)."""
    ev = new_events()
    ev["bytes_moved"] = 2 * BYTES_PER_ELEMENT * io_elements
    return ev


def price(ev: dict[str, Any], target: Target) -> dict[str, float]:
    """Energy by component (pJ) of an event record on `target`: each count times its
    per-event energy. Register bytes are float32 in the emulator; the hardware holds
    activations at the DAC precision, so bytes are scaled by ceil(input_bits/8) / 4.

    Also prices the emulator's own counters (`Counters.to_dict()`): their measured
    `dac_pulses` (non-zero digits) replace the slot count `dac_conversions` when present;
    they carry no `interconnect_bytes` or `cell_writes` (those components are then 0)."""
    e, d = target.energy, target.digital
    pulses = ev.get("dac_pulses")
    pulses = ev["dac_conversions"] if pulses is None else pulses
    byte_scale = math.ceil(target.quant.input_bits / 8) / BYTES_PER_ELEMENT
    ops = ev["digital_ops"]
    digital = sum(n * _digital_pj(kind, d) for kind, n in ops.items() if kind != "shift_add")
    return {
        "crossbar": ev["dac_cycles"] * e.crossbar_cycle_pj,
        "dac": pulses * e.dac_pulse_pj,
        "adc": ev["adc_conversions"] * e.adc_conversion_pj,
        "shift_add": ops.get("shift_add", 0) * e.shift_add_pj,
        "digital": digital,
        "buffer": ev["bytes_moved"] * byte_scale * e.buffer_pj_per_byte,
        "interconnect": ev.get("interconnect_bytes", 0) * byte_scale *
        e.interconnect_pj_per_byte,
        "write": ev.get("cell_writes", 0) * target.write.cell_pj,
    }


# digital_ops kind -> [digital] key of its per-element energy
DIGITAL_KEY = {"add": "add", "sub": "add", "scale": "add", "mul": "mul", "sigmoid": "sigmoid",
               "tanh": "tanh", "gelu": "gelu", "layernorm": "layernorm", "softmax": "softmax",
               "quantize": "mul", "rescale": "mul"}


def _digital_pj(kind: str, d: Any) -> float:
    if kind == "matmul_mac":
        return d.matmul_mac_pj
    if kind not in DIGITAL_KEY:
        raise ConfigError(f"no [digital] energy for digital op kind {kind!r}; known: "
                          f"{', '.join(sorted([*DIGITAL_KEY, 'matmul_mac']))}")
    return getattr(d, f"{DIGITAL_KEY[kind]}_pj")
