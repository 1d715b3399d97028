"""Build crossbar layers and small programs by hand from float weights.

`pack_layer` is the one implementation of docs/numerics.md's weight side: per-column
quantization, signed mapping, bit slicing, dense column packing onto row x column tiles,
and the ADC step. The compiler's emit pass may call it directly; tests use it to build
programs without the compiler. `make_program` wraps layers, constants and instructions
into a validated `Program`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from farc.errors import ProgramError

from .numerics import (
    Geometry,
    XbarParams,
    adc_ranges,
    input_range,
    input_scale,
    max_code,
    quantize_input,
    quantize_weights,
)
from .program import Program
from .schema import Calibration


def encode_columns(q: np.ndarray, p: XbarParams) -> np.ndarray:
    """Signed integers q [K, N] -> conductance levels [K, N * signs * slices] uint8,
    expanded column j = (n * signs + sign) * slices + s, slice s LSB first. One uint8 plane
    per (sign, slice), so no [K, N, signs, slices] int64 temporary (gigabytes for a Base
    model) is ever built."""
    k, n = q.shape
    out = np.empty((k, n, p.signs, p.slices), dtype=np.uint8)
    mags = [np.maximum(q, 0), np.maximum(-q, 0)] if p.signs == 2 else [q + p.qw]
    cell_bits = p.crossbar.cell_bits
    mask = max_code(cell_bits)
    for sign, m in enumerate(mags):
        m32 = m.astype(np.int32)
        for s in range(p.slices):
            out[:, :, sign, s] = (m32 >> (s * cell_bits)) & mask
    return out.reshape(k, -1)


def tile_codes(levels: np.ndarray, p: XbarParams) -> np.ndarray:
    """[K, J] levels -> [row_tiles, col_tiles, rows, cols], unused cells at level 0."""
    K, J = levels.shape
    g = p.geometry(K, J // (p.slices * p.signs))
    rt, ct, rows, cols = g.row_tiles, g.col_tiles, g.rows, g.cols
    padded = np.zeros((rt * rows, ct * cols), dtype=np.uint8)
    padded[:K, :J] = levels
    return np.ascontiguousarray(padded.reshape(rt, rows, ct, cols).transpose(0, 2, 1, 3))


def column_map(N: int, p: XbarParams) -> dict[str, np.ndarray]:
    """col_out, col_slice, col_sign of the dense packing."""
    j = np.arange(N * p.slices * p.signs)
    return {"col_out": (j // (p.slices * p.signs)).astype(np.int32),
            "col_slice": (j % p.slices).astype(np.int32),
            "col_sign": ((j // p.slices) % p.signs).astype(np.int32)}


def layer_fields(p: XbarParams, row_tiles: int, col_tiles: int, in_scale: float,
                 adc_step: list) -> dict[str, Any]:
    """The parameter fields of a program layer (docs/tile-program.md), in manifest order:
    its schema sections, then what the compiler measured and placed. `adc_step`: one per row
    tile, or per row tile one per weight slice."""
    return {**p.sections(), "row_tiles": row_tiles, "col_tiles": col_tiles,
            "in_scale": float(in_scale), "adc_step": adc_step}


def calibrated_ranges(q: np.ndarray, x: np.ndarray, in_scale: float,
                      p: XbarParams) -> tuple[list, float]:
    """The one calibration of ADC ranges: float inputs x [V, K] (already the kept vectors,
    numerics.keep_vectors) quantized with s_x and replayed on the codes of integer weights
    q [K, N] packed with p: per row tile (or per row tile and slice) the range its ADC
    covers, and the fraction of calibration sums those steps clip (numerics.adc_ranges).
    Used by the tile pass, the fine-tune's recalibration and the ADC-error check."""
    codes = tile_codes(encode_columns(q, p), p)
    x_int = quantize_input(x, in_scale, p.quant.input_bits)
    return adc_ranges(codes, column_map(q.shape[1], p)["col_slice"], q.shape[0], x_int, p)


def _steps(p: XbarParams, row_tiles: int, pmax: Any) -> list:
    try:
        return p.adc_steps(row_tiles, pmax)
    except ValueError as exc:
        raise ProgramError(str(exc)) from None


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
    q, s_w = quantize_weights(W, p.quant.weight_bits)
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
        **layer_fields(p, rt, ct, in_scale, _steps(p, rt, adc_pmax)),
        "arrays": {k.split(".", 1)[1]: k for k in arrays},
        "replicas": replicas,
        "crossbars": [list(range(first_crossbar + r * per, first_crossbar + (r + 1) * per))
                      for r in range(replicas)],
    }
    return layer, arrays


def scale_for_inputs(x: np.ndarray, input_bits: int) -> float:
    """The 'max' calibration policy on sample inputs x: numerics.input_scale(max |x|)."""
    return input_scale(input_range(x, Calibration.MAX, 100.0), input_bits)


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
    used = sum(Geometry.from_layer(L).all_crossbars for L, _ in layers)
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
