"""TileCrossbar: map each quantized weight onto rows x cols crossbars.

Expects: Relax after QuantizeCrossbar, and its LayerStore (q, s_w, in_scale per layer).

Leaves: attributes `farc.row_tiles`, `farc.col_tiles`, `farc.slices`, `farc.signs`,
`farc.adc_step` on each crossbar function, and in the LayerStore the tile-program arrays
(conductance codes [row_tiles, col_tiles, rows, cols], w_scale, colsum, column map, bias)
and the layer dict of docs/tile-program.md. Packing is dense: expanded column
j = (n*signs + sign)*slices + s sits in column tile j // cols, so a layer needs
ceil(K/rows) * ceil(N*slices*signs/cols) crossbars (`crossbars_needed`).

ADC range: 'full' gives every row tile the step of the physical maximum partial sum;
'calibrated' replays the calibration vectors kept for the layer (quantized with the layer's
s_x, offset by z, split into DAC cycles) against the codes and takes the largest partial
sum of each row tile. The packing itself is farc.runtime.builder's, shared with the emulator's
tests. Run before ScheduleCrossbar."""

from __future__ import annotations

import numpy as np
import tvm
from farc.passes._crossbar_ir import LayerCalib, LayerData, LayerStore
from farc.passes.partition_crossbar import crossbar_functions
from farc.runtime.builder import column_map, encode_columns, layer_fields, tile_codes
from farc.runtime.numerics import bit_planes, quantize_input, stored_levels
from farc.targets import Target

PMAX_VECTORS = 256
"""At most this many calibration vectors are replayed per layer for the ADC range."""


@tvm.transform.module_pass(opt_level=0, name="TileCrossbar")
class TileCrossbar:
    """Slice, sign-map and pack every layer onto crossbar tiles.

    Parameters
    ----------
    target : the hardware target (crossbar, dac, adc, quant sections)
    store : the LayerStore QuantizeCrossbar filled; completed here
    calib : layer name -> LayerCalib (used when target.adc.range == 'calibrated')"""

    def __init__(self, target: Target, store: LayerStore, calib: dict[str, LayerCalib]):
        self.target, self.store, self.calib = target, store, calib
        self.params = target.xbar

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in crossbar_functions(mod):
            data = self.store[str(func.attrs["farc.layer"])]
            self._tile(data)
            info = data.info
            mod[gv] = func.with_attrs({
                "farc.row_tiles": info["row_tiles"], "farc.col_tiles": info["col_tiles"],
                "farc.slices": info["slices"], "farc.signs": info["signs"],
                "farc.adc_step": info["adc_step"]})
        return mod

    def _tile(self, data: LayerData) -> None:
        p = self.params
        k, n = data.q.shape
        codes = tile_codes(encode_columns(data.q, p), p)
        rt, ct = codes.shape[:2]
        data.arrays = {"codes": codes, "w_scale": data.w_scale,
                       "colsum": data.q.sum(axis=0).astype(np.int64), **column_map(n, p)}
        if data.bias is not None:
            data.arrays["bias"] = data.bias.astype(np.float32).reshape(n)
        pmax = self._pmax(data, codes) if p.adc_range == "calibrated" else None
        data.info = {"name": data.name, "kind": data.kind, "K": k, "N": n,
                     **layer_fields(p, rt, ct, data.in_scale, p.adc_steps(rt, pmax))}

    def _pmax(self, data: LayerData, codes: np.ndarray) -> list[float]:
        """Largest partial sum of each row tile over the layer's calibration vectors."""
        p = self.params
        vecs = self.calib[data.name].vectors[:PMAX_VECTORS]
        u = quantize_input(vecs, data.in_scale, p.input_bits) + p.in_zero
        rt, ct = codes.shape[:2]
        padded = np.zeros((len(u), rt * p.rows), dtype=np.int64)
        padded[:, : u.shape[1]] = u
        dtype = np.float32 if self.target.max_partial_sum < 2**24 else np.float64
        planes = bit_planes(padded, p.cycles, p.dac_bits).astype(dtype)
        # the ADC sees the levels the crossbars hold (complemented columns under flip)
        flat, _ = stored_levels(codes, data.q.shape[0], ct * p.cols, p.cell_bits, p.adc_flip)
        out = []
        for r in range(rt):
            g = flat[r].astype(dtype)
            part = planes[:, :, r * p.rows : (r + 1) * p.rows] @ g
            out.append(float(part.max()) if part.size else 0.0)
        return out


def crossbars_needed(k: int, n: int, target: Target) -> int:
    """The closed form of dense packing: ceil(K/rows) * ceil(N*slices*signs/cols)."""
    return target.xbar.geometry(k, n).crossbars
