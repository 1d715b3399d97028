"""Build crossbar layers and small programs by hand from float weights.

`pack_layer` is the one implementation of docs/numerics.md's weight side: per-column
quantization, signed mapping, bit slicing, dense column packing onto row x column tiles,
and the ADC step. The compiler's emit pass may call it directly; tests use it to build
programs without the compiler. `make_program` wraps layers, constants and instructions
into a validated `Program`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from farc.errors import ProgramError

from .crossbar import adc_step_for, full_scale_pmax, input_cycles, mapping_signs, weight_slices
from .program import Program


@dataclass(frozen=True)
class XbarParams:
    """The hardware and quantization facts one layer is packed with (a numpy-only mirror of
    the Target fields the packing reads; build it with `from_target`)."""

    rows: int = 128
    cols: int = 128
    cell_bits: int = 2
    dac_bits: int = 1
    adc_bits: int = 8
    adc_range: str = "full"
    weight_bits: int = 8
    input_bits: int = 8
    mapping: str = "differential"
    adc_flip: bool = False

    @property
    def slices(self) -> int:
        return weight_slices(self.weight_bits, self.cell_bits, self.mapping)

    @property
    def signs(self) -> int:
        return mapping_signs(self.mapping)

    @property
    def cycles(self) -> int:
        return input_cycles(self.input_bits, self.dac_bits)

    @property
    def qw(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def qx(self) -> int:
        return 2 ** (self.input_bits - 1) - 1

    @classmethod
    def from_target(cls, target: Any) -> XbarParams:
        """From a `farc.targets.Target` (read by attribute, so runtime never imports it)."""
        return cls(rows=target.crossbar.rows, cols=target.crossbar.cols,
                   cell_bits=target.crossbar.cell_bits, dac_bits=target.dac.bits,
                   adc_bits=target.adc.bits, adc_range=target.adc.range,
                   weight_bits=target.quant.weight_bits, input_bits=target.quant.input_bits,
                   mapping=target.quant.mapping, adc_flip=bool(target.adc.flip))

    @classmethod
    def from_target_dict(cls, d: dict[str, Any]) -> XbarParams:
        """From the TOML-shaped target dict stored in a program manifest."""
        return cls(rows=d["crossbar"]["rows"], cols=d["crossbar"]["cols"],
                   cell_bits=d["crossbar"]["cell_bits"], dac_bits=d["dac"]["bits"],
                   adc_bits=d["adc"]["bits"], adc_range=d["adc"]["range"],
                   weight_bits=d["quant"]["weight_bits"], input_bits=d["quant"]["input_bits"],
                   mapping=d["quant"]["mapping"], adc_flip=bool(d["adc"].get("flip", False)))

    def replace(self, **kw: Any) -> XbarParams:
        return replace(self, **kw)


def quantize_weights(W: np.ndarray, weight_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-column symmetric quantization: (q int64 [K, N], s_w float32 [N]).
    The rounding divides by the stored float32 scale so q and s_w agree exactly."""
    qw = 2 ** (weight_bits - 1) - 1
    W = np.asarray(W, dtype=np.float64)
    peak = np.abs(W).max(axis=0)
    s_w = np.where(peak > 0, peak / qw, 1.0).astype(np.float32)
    q = np.clip(np.rint(W / s_w.astype(np.float64)), -qw, qw).astype(np.int64)
    return q, s_w


def encode_columns(q: np.ndarray, p: XbarParams) -> np.ndarray:
    """Signed integers q [K, N] -> conductance levels [K, N * signs * slices], expanded
    column j = (n * signs + sign) * slices + s, slice s LSB first."""
    if p.mapping == "differential":
        mags = np.stack([np.maximum(q, 0), np.maximum(-q, 0)], axis=2)
    else:
        mags = (q + p.qw)[:, :, None]
    shifts = np.arange(p.slices, dtype=np.int64) * p.cell_bits
    levels = (mags[..., None] >> shifts) & (2**p.cell_bits - 1)
    return levels.reshape(q.shape[0], -1).astype(np.uint8)


def tile_codes(levels: np.ndarray, p: XbarParams) -> np.ndarray:
    """[K, J] levels -> [row_tiles, col_tiles, rows, cols], unused cells at level 0."""
    K, J = levels.shape
    rt, ct = math.ceil(K / p.rows), math.ceil(J / p.cols)
    padded = np.zeros((rt * p.rows, ct * p.cols), dtype=np.uint8)
    padded[:K, :J] = levels
    return np.ascontiguousarray(padded.reshape(rt, p.rows, ct, p.cols).transpose(0, 2, 1, 3))


def column_map(N: int, p: XbarParams) -> dict[str, np.ndarray]:
    """col_out, col_slice, col_sign of the dense packing."""
    j = np.arange(N * p.slices * p.signs)
    return {"col_out": (j // (p.slices * p.signs)).astype(np.int32),
            "col_slice": (j % p.slices).astype(np.int32),
            "col_sign": ((j // p.slices) % p.signs).astype(np.int32)}


def adc_steps(p: XbarParams, row_tiles: int, pmax: float | Sequence[float] | None) -> list[int]:
    """One ADC step per row tile: from the physical maximum ('full') or the calibrated
    largest partial sum ('calibrated', `pmax` per layer or per row tile)."""
    if p.adc_range == "full":
        return [adc_step_for(full_scale_pmax(p.rows, p.dac_bits, p.cell_bits, p.adc_flip),
                             p.adc_bits)] * row_tiles
    if pmax is None:
        raise ProgramError("a calibrated ADC range needs the calibrated partial-sum maximum")
    per = list(pmax) if isinstance(pmax, Sequence) else [pmax] * row_tiles
    cap = full_scale_pmax(p.rows, p.dac_bits, p.cell_bits, p.adc_flip)
    return [adc_step_for(min(float(v), cap), p.adc_bits) for v in per]


def pack_layer(W: np.ndarray, bias: np.ndarray | None, in_scale: float, p: XbarParams, *,
               layer_id: int = 0, name: str = "", kind: str = "linear",
               adc_pmax: float | Sequence[float] | None = None, replicas: int = 1,
               first_crossbar: int = 0, prefix: str | None = None,
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Quantize, slice and pack W [K, N] (+ bias [N]) for inputs of scale `in_scale`.

    Returns the layer dict of docs/tile-program.md and its arrays (named `<prefix>.codes`
    etc., prefix defaulting to `layer<id>`). Crossbar ids are allocated consecutively from
    `first_crossbar`, replica-major then row tile then column tile."""
    W = np.asarray(W)
    if W.ndim != 2:
        raise ProgramError(f"pack_layer: W must be 2-D [K, N], got shape {W.shape}")
    K, N = W.shape
    q, s_w = quantize_weights(W, p.weight_bits)
    codes = tile_codes(encode_columns(q, p), p)
    rt, ct = codes.shape[:2]
    prefix = prefix or f"layer{layer_id}"
    arrays = {f"{prefix}.codes": codes, f"{prefix}.w_scale": s_w,
              f"{prefix}.colsum": q.sum(axis=0).astype(np.int64)}
    arrays.update({f"{prefix}.{k}": v for k, v in column_map(N, p).items()})
    if bias is not None:
        arrays[f"{prefix}.bias"] = np.asarray(bias, dtype=np.float32).reshape(N)
    per = rt * ct
    layer = {
        "id": layer_id, "name": name or prefix, "kind": kind, "K": K, "N": N,
        "weight_bits": p.weight_bits, "input_bits": p.input_bits, "cell_bits": p.cell_bits,
        "dac_bits": p.dac_bits, "adc_bits": p.adc_bits, "mapping": p.mapping,
        "slices": p.slices, "signs": p.signs, "rows": p.rows, "cols": p.cols,
        "row_tiles": rt, "col_tiles": ct, "in_scale": float(in_scale),
        "in_zero": 2 ** (p.input_bits - 1), "adc_range": p.adc_range,
        "adc_step": adc_steps(p, rt, adc_pmax), "adc_flip": p.adc_flip,
        "arrays": {k.split(".", 1)[1]: k for k in arrays},
        "replicas": replicas,
        "crossbars": [list(range(first_crossbar + r * per, first_crossbar + (r + 1) * per))
                      for r in range(replicas)],
    }
    return layer, arrays


def input_scale(x: np.ndarray, input_bits: int) -> float:
    """The 'max' calibration policy: s_x = max|x| / Qx (1.0 for all-zero x)."""
    peak = float(np.abs(x).max()) if np.size(x) else 0.0
    return peak / (2 ** (input_bits - 1) - 1) if peak > 0 else 1.0


def make_program(instructions: list[dict[str, Any]], inputs: dict[str, Sequence[int | None]],
                 outputs: dict[str, Sequence[int | None]],
                 layers: Sequence[tuple[dict[str, Any], dict[str, np.ndarray]]] = (),
                 constants: dict[str, np.ndarray] | None = None,
                 target: dict[str, Any] | None = None,
                 model: dict[str, Any] | None = None) -> Program:
    """Assemble and validate a program; shapes exclude the batch axis."""
    arrays: dict[str, np.ndarray] = {}
    for _, arrs in layers:
        arrays.update(arrs)
    const_names = {}
    for cname, arr in (constants or {}).items():
        arrays[f"const.{cname}"] = np.asarray(arr, dtype=np.float32)
        const_names[cname] = f"const.{cname}"
    used = sum(len(L["crossbars"]) * L["row_tiles"] * L["col_tiles"] for L, _ in layers)
    manifest = {
        "model": model or {"kind": "handmade", "name": "handmade", "config": {},
                           "provenance": {}},
        "target": target or {},
        "inputs": [{"name": k, "shape": [None, *v], "dtype": "float32"}
                   for k, v in inputs.items()],
        "outputs": [{"name": k, "shape": [None, *v], "dtype": "float32"}
                    for k, v in outputs.items()],
        "constants": const_names,
        "layers": [L for L, _ in layers],
        "instructions": instructions,
        "schedule": {"crossbars_used": used},
    }
    program = Program(manifest, arrays)
    program.validate()
    return program
