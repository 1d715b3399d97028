"""QuantizeCrossbar: integer weights per output column and a calibrated input scale per layer.

Expects: Relax after PartitionCrossbar (crossbar functions with `farc.layer`), plus the
calibration statistics of every layer (farc.compiler.calibrate), keyed by layer name.

Leaves: a new module whose crossbar functions carry, besides their earlier attributes,
- `farc.xbar` (the schema sections the layer is packed with, `_crossbar_ir.set_xbar`: the
  target's today; every later pass and codegen read them here, never from the target);
- `farc.calib_range` (r, the calibrated input range under the layer's policy: max |x| or
  its percentile) and `farc.in_scale` (s_x = r / Qx);
- `farc.q` (int64 [K, N], the integer weights) and `farc.w_scale` (float32 [N], s_w per
  output column) as tensor attributes.
q and s_w come from farc.runtime.numerics, the one crossbar-numerics module
(docs/numerics.md). The bodies are unchanged (the float weight constant stays; the later
stages read the quantized form from the attributes). The input module and the
calibration statistics are left unchanged. Run before TileCrossbar."""

from __future__ import annotations

import tvm
from farc.passes._crossbar_ir import (
    LayerCalib,
    array_attr,
    const_value,
    crossbar_functions,
    set_xbar,
    with_functions,
)
from farc.passes.partition_crossbar import composite_parts
from farc.runtime.numerics import input_scale, quantize_weights
from farc.runtime.schema import Calibration
from farc.targets import Target
from tvm import relax

from farc.errors import PassError


@tvm.transform.module_pass(opt_level=0, name="QuantizeCrossbar")
class QuantizeCrossbar:
    """Quantize every crossbar layer's weights and set its input scale.

    Parameters
    ----------
    target : the hardware target (quant.weight_bits, input_bits, calibration, percentile)
    calib : layer name -> LayerCalib (read only)"""

    def __init__(self, target: Target, calib: dict[str, LayerCalib]):
        self.target, self.calib = target, calib

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return with_functions(mod, {gv: self._quantize(f) for gv, f in crossbar_functions(mod)})

    def _quantize(self, func: relax.Function) -> relax.Function:
        p = self.target.xbar
        q = p.quant
        weight, _ = composite_parts(func)
        ints, w_scale = quantize_weights(const_value(weight), q.weight_bits)
        r = self._range(str(func.attrs["farc.layer"]), q.calibration)
        return set_xbar(func, p).with_attrs({
            "farc.calib_range": r, "farc.in_scale": input_scale(r, q.input_bits),
            "farc.q": array_attr(ints), "farc.w_scale": array_attr(w_scale)})

    def _range(self, name: str, policy: Calibration) -> float:
        if name not in self.calib:
            raise PassError(f"no calibration statistics for layer {name!r}")
        stats = self.calib[name]
        return stats.percentile if policy == Calibration.PERCENTILE else stats.absmax
