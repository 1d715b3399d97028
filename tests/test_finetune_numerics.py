"""The torch crossbar numerics (farc/far/crossbar_torch.py) against the emulator.

Noise-free they must give the emulator's integers bit for bit, on every layer of a compiled
digits FAR (pruned: every LSTM its own size), for a lossless program and for lossy ones
(calibrated per-slice uniform steps with sign-magnitude inputs; a coarse full-range ADC with
flip encoding, differential weights, 2-bit DACs and several row tiles; bipolar inputs on a
calibrated signed ADC). With noise, handed the
emulator's own programmed conductances, they must give its integers too (up to float32
summation order). The expected values are the emulator's, never this module's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from farc.runtime.emulator import Emulator
from farc.runtime.numerics import quantize_weights
from farc.runtime.schema import DeviceSection
from farc.targets import load_target

from farc.compiler.driver import CompileOptions, compile_checkpoint
from farc.data import load_split
from farc.errors import ConfigError
from farc.far.crossbar_torch import (
    CrossbarNumerics,
    LayerNumerics,
    layer_weights,
    quantize_input_t,
    swap_crossbars,
)
from farc.models.checkpoint import load_checkpoint

BITS = {"quant.weight_bits": 8, "quant.input_bits": 8, "crossbar.cell_bits": 2}
PROGRAMS = {
    "lossless": {"adc.bits": 9, "adc.range": "full"},
    "calibrated_slice_uniform_sm": {"adc.bits": 5, "adc.range": "calibrated",
                                    "quant.input_encoding": "sign_magnitude",
                                    "adc.granularity": "slice", "adc.step_rule": "uniform",
                                    "adc.statistic": "percentile"},
    "full_flip_differential_tiles": {"adc.bits": 5, "adc.range": "full",
                                     "quant.mapping": "differential", "dac.bits": 2,
                                     "crossbar.rows": 32},
    "calibrated_bipolar_tiles": {"adc.bits": 5, "adc.range": "calibrated",
                                 "quant.input_encoding": "bipolar", "dac.bits": 2,
                                 "crossbar.rows": 32},
}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    x, _ = load_split("digits", "test")
    return x[:6].numpy()


@pytest.fixture(scope="module", params=list(PROGRAMS))
def compiled(request, pruned_far_checkpoint):
    target = load_target("isaac").with_overrides(**BITS, **PROGRAMS[request.param])
    program = compile_checkpoint(str(pruned_far_checkpoint), target,
                                 CompileOptions(calib_samples=32, data="digits"))
    return request.param, program, load_checkpoint(pruned_far_checkpoint).model


def _traced(program, images, noise=None, seed=0):
    emu = Emulator(program, noise=noise, seed=seed, trace=True)
    return emu, emu.run({"image": images})["logits"]


def test_noise_free_numerics_give_the_emulators_integers(compiled, images):
    name, program, model = compiled
    emu, logits = _traced(program, images)
    numerics = CrossbarNumerics.from_program(program)
    weights = layer_weights(model)
    lossy = 0
    for i, layer in enumerate(program.layers):
        W, b = weights[layer["name"]]
        prep = numerics.layers[layer["name"]].prepare(W.detach(), b.detach())
        lossy += not prep.lossless
        for tr in emu.traces[i][:4]:
            x_int = quantize_input_t(torch.from_numpy(tr.x), prep.s_x, prep.p.quant.input_bits)
            np.testing.assert_array_equal(prep.integers(x_int).numpy(), tr.y_int,
                                          err_msg=f"{name}: layer {layer['name']}")
    assert (lossy > 0) == (name != "lossless")  # the lossy programs exercise the ADC path
    with torch.no_grad():
        twin = swap_crossbars(copy.deepcopy(model), numerics.matmul)
        mine = twin(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(mine, logits, rtol=1e-5, atol=1e-5)


def test_noisy_numerics_on_the_emulators_devices(compiled, images):
    """Programming variation and a finite on/off ratio: hand the torch layer the very
    conductances the emulator programmed; the ADC outputs then agree (a partial sum within
    float32 rounding of a rounding boundary may land on the other side: < 0.5 % of outputs)."""
    name, program, model = compiled
    noise = DeviceSection(prog_sigma=0.03, on_off_ratio=50.0)
    emu, _ = _traced(program, images, noise, seed=3)
    numerics = CrossbarNumerics.from_program(program, noise)
    weights = layer_weights(model)
    same = total = 0
    for i, layer in enumerate(program.layers):
        W, b = weights[layer["name"]]
        prep = numerics.layers[layer["name"]].prepare(W.detach(), b.detach())
        g = torch.from_numpy(emu._devices[i][0].g)
        prep.g = g[:, :prep.rows].float()
        for tr in emu.traces[i][:2]:
            x_int = quantize_input_t(torch.from_numpy(tr.x), prep.s_x, prep.p.quant.input_bits)
            got = prep.integers(x_int).numpy()
            same += int((got == tr.y_int).sum())
            total += got.size
            assert np.abs(got - tr.y_int).mean() <= 1e-3 * np.abs(tr.y_int).mean() + 1.0
    assert same / total > 0.995, name


def test_weight_quantization_is_the_runtimes(compiled):
    """The twin's q and s_w are runtime.numerics.quantize_weights', moved to torch."""
    _, program, _ = compiled
    ln = LayerNumerics.from_program_layer(program.layers[1])
    g = torch.Generator().manual_seed(0)
    n = int(program.layers[1]["N"])
    W = torch.randn(int(program.layers[1]["K"]), n, generator=g) * torch.logspace(-3, 1, n)
    W[:, n // 2] = 0.0  # an all-zero column keeps scale 1
    prep = ln.prepare(W, None)
    q_ref, s_ref = quantize_weights(W.numpy(), ln.p.quant.weight_bits)
    np.testing.assert_array_equal(prep.q.numpy(), q_ref)
    np.testing.assert_array_equal(prep.s_w.numpy(), s_ref)


def test_a_step_count_that_is_not_the_row_tiles_is_refused(compiled):
    _, program, model = compiled
    layer = program.layers[1]
    ln = LayerNumerics.from_program_layer(layer)
    ln.adc_step = ln.adc_step * 2
    W, b = layer_weights(model)[layer["name"]]
    with pytest.raises(ConfigError, match=f"{2 * len(layer['adc_step'])} ADC steps for "
                                          f"{len(layer['adc_step'])} row tiles"):
        ln.prepare(W.detach(), b.detach())


def test_gradients_are_straight_through(compiled):
    """d sum(y) / dW = x_q^T 1 (the rounding passes gradients unchanged) and d/dx is
    (q s_w) 1 where the input quantizer does not clip, 0 where it does."""
    _, program, model = compiled
    layer = program.layers[1]
    numerics = CrossbarNumerics.from_program(program, DeviceSection(prog_sigma=0.05))
    W0, b0 = layer_weights(model)[layer["name"]]
    W = W0.detach().clone().requires_grad_(True)
    prep = numerics.layers[layer["name"]].prepare(W, b0.detach())
    s_x = prep.s_x
    x = (torch.linspace(-1.5, 1.5, 5 * W.shape[0]).reshape(5, -1) * prep.qx * s_x)
    x.requires_grad_(True)
    prep.mvm(x).sum().backward()
    x_q = torch.clamp(torch.round(x.detach() / s_x), -prep.qx, prep.qx) * s_x
    np.testing.assert_allclose(W.grad.numpy(), (x_q.T @ torch.ones(5, W.shape[1])).numpy(),
                               rtol=1e-5, atol=1e-5)
    w_q = quantize_weights(W0.detach().numpy(), 8)
    row = (w_q[0] * w_q[1][None, :]).sum(axis=1)
    inside = np.abs(x.detach().numpy()) <= prep.qx * s_x
    np.testing.assert_allclose(x.grad.numpy(), np.where(inside, row[None, :], 0.0),
                               rtol=1e-5, atol=1e-6)


def test_the_twin_swaps_modules_and_keeps_the_state_dict(compiled):
    """HardwareFAR is the FAR with its crossbar modules swapped: the same state dict, every
    Linear / patch conv / LSTM routed through the numerics (none computes in float), and
    modules the compiled program does not run are refused by name."""
    from farc.far.crossbar_torch import CrossbarLinear, CrossbarLSTM, CrossbarPatchConv
    from farc.far.finetune import HardwareFAR

    _, program, model = compiled
    hw = HardwareFAR(model, CrossbarNumerics.from_program(program))
    assert list(hw.state_dict()) == list(model.state_dict())
    kinds = {type(m) for m in hw.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d,
                                                             torch.nn.LSTM))}
    assert kinds == {CrossbarLinear, CrossbarPatchConv, CrossbarLSTM}
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(ConfigError, match="0: only patch convolutions"):
        swap_crossbars(conv, CrossbarNumerics({}).matmul)
