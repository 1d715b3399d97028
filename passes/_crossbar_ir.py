"""Conventions the farc passes share (not a pass): extern symbols, how a weight constant
carries its layer name, how a crossbar function carries its numbers, and module copies.

The compiler's state lives in the IR: every crossbar function (`Codegen = "farc"`) carries
its scalar facts (scales, tile counts, ADC steps, placement) as `farc.*` attributes and its
bulk arrays (integer weights, conductance codes, column map) as `farc.*` attributes holding
tensors (`array_attr`, `arrays_of`). Passes are pure: each returns a new module
(`with_functions`) and never edits the one it was given. The `--dump-dir` files print the
tensors as metadata references; `crossbar_state` summarises them (shape, dtype, sha256) for
the `NN-<stage>.state.json` file written beside each dump."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from farc.runtime.numerics import XbarParams
from tvm import relax
from tvm.relax import _ffi_api as _relax_ffi

from farc.errors import ConfigError, PassError

# Errors raised inside a pass cross TVM's FFI; registered, they come back as themselves.
tvm_ffi.register_error(PassError)
tvm_ffi.register_error(ConfigError)

LSTM_EXTERN = "farc.lstm"
"""Recurrence node left by the importer: call_dps_packed(farc.lstm, (x, W_ih, W_hh, b_ih,
b_hh, reverse))."""
GRU_EXTERN = "farc.gru"
"""GRU recurrence node left by the importer: call_dps_packed(farc.gru, (x, W_ih, W_hh, b_ih,
b_hh, reverse, linear_before_reset[, h0]))."""
SCAN_EXTERN = "farc.lstm_scan"
"""Scan node left by LegalizeLSTM and LegalizeGRU: call_pure_packed(farc.lstm_scan, x,
cell, reverse, *initial states). The cell maps (x_t, *states) -> (*states'), h first
(LSTM: h, c; GRU: h); the scan returns h of every step in original time order. Initial
states: constants [H] in the cell's order, only when the model has them (docs/byom.md),
else zero."""
GRU_HIDDEN = ".hidden"
"""Name suffix of a GRU's second crossbar layer (W_hn, read by the reset-gated hidden state;
docs/compiler.md): `<gru>` is [x_t ; h] -> r, z, n_x and `<gru>.hidden` is h -> n_h."""
IM2COL_EXTERN = "farc.im2col"
"""A convolution's patch gather left by the importer: call_dps_packed(farc.im2col, (x
[B, C, *S], spatial, *kernel, *stride, *pads, *dilation)) -> [B, P, C * prod(kernel)] (prim
values; pads one per spatial axis, both sides); the emitter turns it into `im2col`."""
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


def rewrite_functions(mod: tvm.IRModule, rewriter: relax.PyExprMutator,
                      new: dict[tvm.ir.GlobalVar, relax.Function]) -> tvm.IRModule:
    """`mod` with every plain Relax function (not a crossbar function) rewritten by
    `rewriter`, plus the functions in `new` it made on the way (the legalize passes' cells).
    One new module, not add_func per function: that dedups against every function, O(n^2)."""
    funcs = {}
    for gv, func in mod.functions.items():
        legal = isinstance(func, relax.Function) and "Codegen" not in (func.attrs or {})
        funcs[gv] = rewriter.visit_expr(func) if legal else func
    funcs.update(new)
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


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


PROGRAM_ARRAYS = ("codes", "w_scale", "colsum", "col_out", "col_slice", "col_sign", "bias")
"""The arrays of one program layer (docs/tile-program.md), in manifest order. After
TileCrossbar each is the crossbar function's attribute `farc.<name>` (bias only when the
layer has one); QuantizeCrossbar adds `farc.q` and `farc.w_scale`."""


def array_attr(value: np.ndarray) -> tvm.runtime.Tensor:
    """A numpy array as a tensor-valued function attribute (copied, dtype kept)."""
    return tvm.runtime.tensor(np.ascontiguousarray(value))


def attr_array(func: relax.Function, name: str) -> np.ndarray:
    """A read-only numpy view of the crossbar function's tensor attribute `farc.<name>`
    (no copy: a Base model's codes are hundreds of MB; read-only: the IR is immutable)."""
    return _view(func.attrs[f"farc.{name}"])


XBAR_ATTR = "farc.xbar"
"""The crossbar function attribute holding the schema sections (crossbar, dac, adc, quant)
its layer is packed with, as JSON text: QuantizeCrossbar sets it from the target, and every
later pass and codegen read it (one holder per layer; per-layer precision changes it)."""


def set_xbar(func: relax.Function, p: XbarParams) -> relax.Function:
    """`func` with its layer's sections recorded."""
    return func.with_attr(XBAR_ATTR, json.dumps(p.sections(), sort_keys=True))


def xbar_of(func: relax.Function) -> XbarParams:
    """The sections a crossbar function's layer is packed with (`set_xbar`)."""
    if XBAR_ATTR not in func.attrs:
        raise PassError(f"crossbar layer {func.attrs['farc.layer']} has no {XBAR_ATTR}: run "
                        "QuantizeCrossbar first")
    return XbarParams.from_sections(json.loads(str(func.attrs[XBAR_ATTR])),
                                    str(func.attrs["farc.layer"]), PassError)


def program_arrays(func: relax.Function) -> dict[str, np.ndarray]:
    """Copies of the program-layer arrays a crossbar function carries, in manifest order
    (a program never aliases the module it came from)."""
    attrs = func.attrs or {}
    return {k: attr_array(func, k).copy() for k in PROGRAM_ARRAYS if f"farc.{k}" in attrs}


def _view(t: tvm.runtime.Tensor) -> np.ndarray:
    view = np.from_dlpack(t)
    view.flags.writeable = False
    return view


def crossbar_functions(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, relax.Function]]:
    """The (GlobalVar, function) pairs of every crossbar layer, sorted by layer name."""
    out = [(gv, f) for gv, f in mod.functions.items()
           if isinstance(f, relax.Function) and (f.attrs or {}).get("Codegen") == CODEGEN]
    return sorted(out, key=lambda p: str(p[1].attrs.get("farc.layer", p[0].name_hint)))


def with_functions(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """A new module: `mod`'s functions with `updates` applied. (`mod[gv] = f` would edit
    `mod` in place, and passes must leave their input unchanged.)"""
    funcs = dict(mod.functions.items())
    funcs.update(updates)
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def crossbar_state(mod: tvm.IRModule) -> dict[str, dict]:
    """Every crossbar layer's `farc.*` attributes as JSON values; a tensor becomes its shape,
    dtype and sha256 (what the `--dump-dir` state files show beside the TVMScript)."""
    out = {}
    for gv, func in crossbar_functions(mod):
        name = str(func.attrs.get("farc.layer", gv.name_hint))
        out[name] = {str(k): _jsonable(v) for k, v in sorted(func.attrs.items())
                     if str(k).startswith("farc.")}
    return out


def _jsonable(v):
    if isinstance(v, tvm.runtime.Tensor):
        a = np.ascontiguousarray(_view(v))
        return {"shape": list(a.shape), "dtype": str(a.dtype),
                "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    if isinstance(v, tvm_ffi.Map):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, tvm_ffi.Array | list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool | int | float):
        return v
    return str(v)
