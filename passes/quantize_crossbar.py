"""QuantizeCrossbar: integer weights per output column and a calibrated input scale per layer.

Expects: Relax after PartitionCrossbar (crossbar functions with `farc.layer`), plus the
calibration statistics of every layer (farc.compiler.calibrate), keyed by layer name.

Leaves: the IR unchanged except for attributes on each crossbar function: `farc.in_scale`
(s_x = r / Qx, r the calibrated range under the target's policy: max |x| or its
percentile), `farc.in_zero` (z = 2**(input_bits-1)), `farc.weight_bits`,
`farc.input_bits`. The integer weights q and scales s_w (docs/numerics.md, computed by
farc.runtime.numerics, the one crossbar-numerics module) go to
the LayerStore. Run before TileCrossbar."""

from __future__ import annotations

import tvm
from farc.passes._crossbar_ir import LayerCalib, LayerData, LayerStore, const_value
from farc.passes.partition_crossbar import composite_parts, crossbar_functions
from farc.runtime.numerics import input_scale, quantize_weights
from farc.targets import Target
from tvm import relax

from farc.errors import PassError


@tvm.transform.module_pass(opt_level=0, name="QuantizeCrossbar")
class QuantizeCrossbar:
    """Quantize every crossbar layer's weights and set its input scale.

    Parameters
    ----------
    target : the hardware target (quant.weight_bits, input_bits, calibration, percentile)
    calib : layer name -> LayerCalib
    store : filled with one LayerData per layer"""

    def __init__(self, target: Target, calib: dict[str, LayerCalib], store: LayerStore):
        self.target, self.calib, self.store = target, calib, store

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in crossbar_functions(mod):
            mod[gv] = self._quantize(func)
        return mod

    def _quantize(self, func: relax.Function) -> relax.Function:
        q = self.target.quant
        name, kind = str(func.attrs["farc.layer"]), str(func.attrs["farc.kind"])
        weight, bias = composite_parts(func)
        data = LayerData(name, kind, const_value(weight),
                         None if bias is None else const_value(bias))
        data.q, data.w_scale = quantize_weights(data.weight, q.weight_bits)
        data.in_scale = input_scale(self._range(name), q.input_bits)
        self.store[name] = data
        return func.with_attrs({"farc.in_scale": data.in_scale,
                                "farc.in_zero": self.target.xbar.in_zero,
                                "farc.weight_bits": q.weight_bits,
                                "farc.input_bits": q.input_bits})

    def _range(self, name: str) -> float:
        if name not in self.calib:
            raise PassError(f"no calibration statistics for layer {name!r}")
        stats = self.calib[name]
        return stats.percentile if self.target.quant.calibration == "percentile" \
            else stats.absmax

