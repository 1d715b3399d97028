"""Conventions the farc passes share (not a pass): extern symbols, how a weight constant
carries its layer name, and the per-layer tables the numeric passes fill.

Bulk arrays (integer weights, conductance codes, calibration vectors) do not live in the
IR: the passes keep them in a `LayerStore` keyed by layer name, and put the scalar facts
(scales, tile counts, replicas) on each crossbar function as `farc.*` attributes, which is
what the `--dump-dir` files show."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax import _ffi_api as _relax_ffi

from farc.errors import ConfigError, PassError

# Errors raised inside a pass cross TVM's FFI; registered, they come back as themselves.
tvm_ffi.register_error(PassError)
tvm_ffi.register_error(ConfigError)

LSTM_EXTERN = "farc.lstm"
"""Recurrence node left by the importer: call_dps_packed(farc.lstm, (x, W_ih, W_hh, b_ih,
b_hh, reverse))."""
SCAN_EXTERN = "farc.lstm_scan"
"""Scan node left by LegalizeLSTM: call_pure_packed(farc.lstm_scan, x, cell, reverse)."""
CODEGEN = "farc"
"""Codegen attribute of crossbar functions."""


def named_const(value: np.ndarray, kind: str, name: str) -> relax.Expr:
    """A float32 constant whose span records `kind:name`; spans survive the Relax passes."""
    span = tvm.ir.Span(tvm.ir.SourceName(f"{kind}:{name}"), 0, 0, 0, 0)
    data = tvm.runtime.tensor(np.ascontiguousarray(value, dtype=np.float32))
    return _relax_ffi.MakeTensorConst(data, None, span)


def const_label(const: relax.Expr) -> tuple[str, str] | None:
    """(kind, layer name) recorded by `named_const`, or None for an anonymous constant."""
    span = getattr(const, "span", None)
    if span is None or span.source_name is None or ":" not in span.source_name.name:
        return None
    kind, _, name = span.source_name.name.partition(":")
    return kind, name


def const_value(const: relax.Expr) -> np.ndarray:
    return const.value.numpy()


def is_extern_call(expr: relax.Expr, op_name: str, symbol: str) -> bool:
    """True when `expr` is `op_name(ExternFunc(symbol), ...)`."""
    return (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == op_name and isinstance(expr.args[0], relax.ExternFunc)
            and expr.args[0].global_symbol == symbol)


def is_scan(expr: relax.Expr) -> bool:
    return is_extern_call(expr, "relax.call_pure_packed", SCAN_EXTERN)


@dataclass
class LayerCalib:
    """What calibration saw at one crossbar layer's input."""

    absmax: float
    """max |x| over all calibration vectors."""
    percentile: float
    """The target's percentile of |x| (equals absmax when the policy is 'max')."""
    vectors: np.ndarray
    """A seeded subsample of input vectors [M, K] (for the calibrated ADC range)."""


@dataclass
class LayerData:
    """Everything the numeric passes compute for one crossbar layer."""

    name: str
    kind: str
    weight: np.ndarray
    """Float W [K, N]."""
    bias: np.ndarray | None
    q: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    in_scale: float = 1.0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """codes, w_scale, colsum, col_out, col_slice, col_sign, bias (tile-program names)."""
    info: dict = field(default_factory=dict)
    """The tile-program layer dict (without id/arrays), filled by tile and schedule."""


LayerStore = dict[str, LayerData]
