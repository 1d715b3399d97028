"""How much error an ADC policy leaves on one crossbar MVM, against the exact quantized
matmul x_int @ q: the figure architects compare ADC conventions by (docs/numerics.md).

`single_mvm_rms(params, kind)` packs a seeded 128 x 64 weight onto crossbars with `params`
(calibrating a 'calibrated' range on KEEP_VECTORS seeded vectors, as the compiler does), runs 256
other vectors through the emulator's bit-level path, and returns the relative RMS error of
the integer accumulators. The exact integers come from the independent reference's
quantized weights, so the figure measures the ADC alone."""

from __future__ import annotations

import numpy as np

from farc.runtime.builder import calibrated_ranges, make_program, pack_layer
from farc.runtime.numerics import (
    KEEP_VECTORS,
    XbarParams,
    input_range,
    input_scale,
    quantize_input,
    quantize_weights,
)
from farc.runtime.schema import AdcRange, Calibration


def one_layer_program(W: np.ndarray, p: XbarParams, calib: np.ndarray, s_x: float) -> object:
    """x -> mvm(W) -> y, with a calibrated ADC range set from `calib` when p asks for one."""
    pmax = None
    if p.adc.range == AdcRange.CALIBRATED:
        q, _ = quantize_weights(W, p.quant.weight_bits)
        pmax, _ = calibrated_ranges(q, calib, s_x, p)
    layer = pack_layer(W, None, s_x, p, adc_pmax=pmax, name="fc")
    ins = [dict(op="input", name="x", out="x"),
           dict(op="mvm", layer=0, **{"in": ["x"]}, out="y"),
           dict(op="output", name="y", **{"in": ["y"]})]
    return make_program(ins, {"x": [W.shape[0]]}, {"y": [W.shape[1]]}, [layer])


def single_mvm_rms(p: XbarParams, kind: str = "gauss", seed: int = 0, K: int = 128,
                   N: int = 64) -> float:
    """Relative RMS error of one K x N crossbar MVM under `p` (inputs 'gauss' or 'relu')."""
    import torch

    from farc.check.reference import CrossbarMatmul, LayerChoice
    from farc.runtime.emulator import Emulator

    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(K, N)) / np.sqrt(K)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        x = rng.normal(size=(n, K)).astype(np.float32)
        return np.maximum(x, 0) if kind == "relu" else x

    calib, x = draw(KEEP_VECTORS), draw(256)
    s_x = input_scale(input_range(calib, Calibration.MAX, 100.0), p.quant.input_bits)
    prog = one_layer_program(W, p, calib, s_x)
    emu = Emulator(prog, mvm_path="bitlevel", trace=True)
    emu.run({"x": x})
    got = emu.traces[0][0].y_int
    ref = CrossbarMatmul(W, None, LayerChoice.of(prog.layers[0], prog.arrays))
    with torch.no_grad():
        exact = quantize_input(x, s_x, p.quant.input_bits).astype(np.float64) @ ref.q.numpy()
    return float(np.sqrt(((got - exact) ** 2).mean() / (exact**2).mean()))
