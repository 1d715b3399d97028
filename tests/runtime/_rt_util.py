"""Shared helpers of the runtime tests: tiny hand-built programs (no compiler needed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from farc.runtime.builder import XbarParams, make_program, pack_layer, scale_for_inputs
from farc.runtime.emulator import Emulator
from farc.runtime.program import Program


def one_op_program(op: dict[str, Any], in_shapes: dict[str, list[int]],
                   constants: dict[str, np.ndarray] | None = None,
                   layers: list | None = None) -> Program:
    """input regs named after the inputs -> `op` (out 'y') -> output 'y'."""
    ins = [{"op": "input", "name": k, "out": k} for k in in_shapes]
    ins += [dict(op, out="y"), {"op": "output", "name": "y", "in": ["y"]}]
    return make_program(ins, in_shapes, {"y": [None]}, layers or [], constants)


def run1(program: Program, **inputs: np.ndarray) -> np.ndarray:
    return Emulator(program).run(inputs)["y"]


def linear_program(W: np.ndarray, b: np.ndarray | None, x: np.ndarray, p: XbarParams,
                   adc_pmax: float | None = None) -> Program:
    """x [batch, K] -> mvm(W, b) -> y, with the input scale calibrated on x (policy max)."""
    layer, arrays = pack_layer(W, b, scale_for_inputs(x, p.quant.input_bits), p, adc_pmax=adc_pmax)
    return one_op_program({"op": "mvm", "layer": 0, "in": ["x"]}, {"x": [W.shape[0]]},
                          layers=[(layer, arrays)])


# ---------------------------------------------------------------- independent reference
def ref_quantize_weights(W: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    qw = 2 ** (bits - 1) - 1
    s_w = np.array([max(float(np.abs(W[:, n]).max()) / qw, 0.0) or 1.0
                    for n in range(W.shape[1])], dtype=np.float32)
    return np.clip(np.rint(W.astype(np.float64) / s_w), -qw, qw).astype(np.int64), s_w


def ref_step(pmax: float, adc_bits: int) -> int:
    e = 0
    while (2**adc_bits - 1) * 2**e < pmax:
        e += 1
    return 2**e


def ref_column_levels(q: np.ndarray, p: XbarParams) -> list[tuple[int, int, np.ndarray]]:
    """[(sign, slice, levels [K, N])] of every physical column group."""
    qw = 2 ** (p.quant.weight_bits - 1) - 1
    if p.quant.mapping == "differential":
        mags = [(+1, np.maximum(q, 0)), (-1, np.maximum(-q, 0))]
        nslices = math.ceil((p.quant.weight_bits - 1) / p.crossbar.cell_bits)
    else:
        mags = [(+1, q + qw)]
        nslices = math.ceil(p.quant.weight_bits / p.crossbar.cell_bits)
    return [(sign, s, (m >> (s * p.crossbar.cell_bits)) & (2**p.crossbar.cell_bits - 1))
            for sign, m in mags for s in range(nslices)]


def ref_partial_sums(x_int: np.ndarray, q: np.ndarray, p: XbarParams):
    """Yield (row tile, cycle, sign, slice, P [vectors, N], flipped [N], digit sum
    [vectors]) straight from the definition. With the flip encoding a column of a row tile
    whose levels sum above half of used_rows * (2**cell_bits - 1) is stored complemented,
    and P is the sum on the stored levels."""
    u = x_int + 2 ** (p.quant.input_bits - 1)
    cycles = math.ceil(p.quant.input_bits / p.dac.bits)
    top = 2**p.crossbar.cell_bits - 1
    for r0 in range(0, q.shape[0], p.crossbar.rows):
        for c in range(cycles):
            uc = (u[:, r0:r0 + p.crossbar.rows] >> (c * p.dac.bits)) & (2**p.dac.bits - 1)
            for sign, s, levels in ref_column_levels(q, p):
                g = levels[r0:r0 + p.crossbar.rows]
                flipped = np.zeros(g.shape[1], dtype=bool)
                if p.adc.flip:
                    flipped = g.sum(axis=0) > g.shape[0] * top // 2
                stored = np.where(flipped[None, :], top - g, g)
                yield r0 // p.crossbar.rows, c, sign, s, uc @ stored, flipped, uc.sum(axis=1)


def ref_mvm_int(x_int: np.ndarray, q: np.ndarray, p: XbarParams, pmax: float | list,
                gain: float = 1.0) -> np.ndarray:
    """The integer MVM; `pmax` per layer or per row tile; `gain` scales every conductance
    (drift) before the ADC."""
    acc = np.zeros((x_int.shape[0], q.shape[1]), dtype=np.int64)
    for r, c, sign, s, P, flipped, usum in ref_partial_sums(x_int, q, p):
        step = ref_step(pmax[r] if isinstance(pmax, list) else pmax, p.adc.bits)
        if gain == 1.0:
            digit = np.clip((2 * P + step) // (2 * step), 0, 2**p.adc.bits - 1) * step
        else:
            digit = np.clip(np.floor(gain * P / step + 0.5), 0, 2**p.adc.bits - 1) * step
        top = 2**p.crossbar.cell_bits - 1
        digit = np.where(flipped[None, :], top * usum[:, None] - digit, digit)
        acc += (sign * digit * 2 ** (c * p.dac.bits + s * p.crossbar.cell_bits)).astype(np.int64)
    u = x_int + 2 ** (p.quant.input_bits - 1)
    if p.quant.mapping == "offset":
        acc -= (2 ** (p.quant.weight_bits - 1) - 1) * u.sum(axis=1, keepdims=True)
    return acc - 2 ** (p.quant.input_bits - 1) * q.sum(axis=0)


def ref_linear(W, b, x, p: XbarParams, calibrated: bool) -> tuple[np.ndarray, float | None]:
    """(y, calibrated pmax or None) per the numerics, with the input scale of policy max."""
    qx = 2 ** (p.quant.input_bits - 1) - 1
    s_x = float(np.abs(x).max()) / qx
    x_int = np.clip(np.rint(x / np.float32(s_x)), -qx, qx).astype(np.int64)
    q, s_w = ref_quantize_weights(W, p.quant.weight_bits)
    levels = p.crossbar.rows * (2**p.crossbar.cell_bits - 1)
    pmax = max(int(P.max()) for _, _, _, _, P, _, _ in ref_partial_sums(x_int, q, p)) \
        if calibrated else (2**p.dac.bits - 1) * (levels // 2 if p.adc.flip else levels)
    y_int = ref_mvm_int(x_int, q, p, pmax)
    y = y_int.astype(np.float32) * (np.float32(s_x) * s_w).astype(np.float32) + b
    return y, (pmax if calibrated else None)
