"""Shared helpers of the runtime tests: tiny hand-built programs (no compiler needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
from farc.runtime.builder import XbarParams, input_scale, make_program, pack_layer
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
    layer, arrays = pack_layer(W, b, input_scale(x, p.input_bits), p, adc_pmax=adc_pmax)
    return one_op_program({"op": "mvm", "layer": 0, "in": ["x"]}, {"x": [W.shape[0]]},
                          layers=[(layer, arrays)])
