"""TileCrossbar: map each quantized weight onto rows x cols crossbars.

Expects: Relax after QuantizeCrossbar (`farc.q`, `farc.w_scale`, `farc.in_scale` on each
crossbar function).

Each layer is packed with its own sections (`farc.xbar`, QuantizeCrossbar's).

Leaves: a new module whose crossbar functions also carry the scalar attributes
`farc.row_tiles`, `farc.col_tiles`, `farc.adc_step` (one step per row tile, or per row tile
one per weight slice; with a calibrated range also `farc.adc_pmax`, the range each saw, and
`farc.adc_calib_clipped`) and the tile-program arrays of docs/tile-program.md as tensor attributes:
`farc.codes` (uint8 conductance levels [row_tiles, col_tiles, rows, cols]), `farc.colsum`
(int64 [N]), `farc.col_out`/`farc.col_slice`/`farc.col_sign` (int32 column map) and
`farc.bias` (float32 [N], biased layers only); `farc.w_scale` is QuantizeCrossbar's. The
input module and the calibration statistics are left unchanged. Packing is dense: expanded
column j = (n*signs + sign)*slices + s sits in column tile j // cols, so a layer needs
ceil(K/rows) * ceil(N*slices*signs/cols) crossbars (`crossbars_needed`).

ADC range: 'full' gives every row tile the step of the physical maximum partial sum;
'calibrated' replays the calibration vectors kept for the layer (quantized with the layer's
s_x, offset by z, split into DAC cycles) against the codes and takes the largest partial
sum of each row tile. The packing itself is farc.runtime.builder's, shared with the emulator's
tests. Run before ScheduleCrossbar."""

from __future__ import annotations

import numpy as np
import tvm
from farc.passes._crossbar_ir import (
    LayerCalib,
    array_attr,
    attr_array,
    const_value,
    crossbar_functions,
    with_functions,
    xbar_of,
)
from farc.passes.partition_crossbar import composite_parts
from farc.runtime.builder import calibrated_ranges, column_map, encode_columns, tile_codes
from farc.runtime.schema import AdcRange
from farc.targets import Target
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="TileCrossbar")
class TileCrossbar:
    """Slice, sign-map and pack every layer onto crossbar tiles.

    Parameters
    ----------
    target : the hardware target
    calib : layer name -> LayerCalib (read only; used for layers whose adc.range is
        'calibrated')"""

    def __init__(self, target: Target, calib: dict[str, LayerCalib]):
        self.target, self.calib = target, calib

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return with_functions(mod, {gv: self._tile(f) for gv, f in crossbar_functions(mod)})

    def _tile(self, func: relax.Function) -> relax.Function:
        p = xbar_of(func)
        q = attr_array(func, "q")
        codes = tile_codes(encode_columns(q, p), p)
        rt, ct = codes.shape[:2]
        arrays = {"codes": codes, "colsum": q.sum(axis=0).astype(np.int64),
                  **column_map(q.shape[1], p)}
        _, bias = composite_parts(func)
        if bias is not None:
            arrays["bias"] = const_value(bias).astype(np.float32).reshape(q.shape[1])
        name, in_scale = str(func.attrs["farc.layer"]), float(func.attrs["farc.in_scale"])
        seen: dict = {}
        pmax = None
        if p.adc.range == AdcRange.CALIBRATED:  # the calibration keeps KEEP_VECTORS
            pmax, clipped = calibrated_ranges(q, self.calib[name].vectors, in_scale, p)
            seen = {"farc.adc_pmax": pmax, "farc.adc_calib_clipped": clipped}
        return func.with_attrs({
            "farc.row_tiles": rt, "farc.col_tiles": ct, "farc.adc_step": p.adc_steps(rt, pmax),
            **seen,
            **{f"farc.{k}": array_attr(v) for k, v in arrays.items()}})


def crossbars_needed(k: int, n: int, target: Target) -> int:
    """The closed form of dense packing: ceil(K/rows) * ceil(N*slices*signs/cols)."""
    return target.xbar.geometry(k, n).crossbars
