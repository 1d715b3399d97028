"""Hardware-aware fine-tuning: train a FAR through the numerics of the program it becomes.

`farc finetune` (farc/commands/finetune.py) runs the FAR end to end through
`farc.far.crossbar_torch`: every crossbar matmul quantizes its weights per column and its
inputs with the layer's input scale, goes through the DAC cycles, weight slices and ADC of
the target (flip encoding, per-slice or uniform steps, calibrated ranges), and, with
`noise`, through a freshly programmed chip on every step (programming variation, read noise,
stuck-at cells, on/off ratio, drift: the emulator's models). Gradients are straight-through.
Loss: CE (label smoothing) plus logit distillation from a teacher.

Input scales (and calibrated ADC ranges) are recalibrated as training proceeds with the same
rule the compiler applies (`calibrate_layers`: max |x| or a percentile over the first
`calib_samples` training images, on the float model), so the network always trains against
the scales `farc compile` will give its current weights. The weights move, so the ranges
move; a fixed scale from the start would train against a program that will not exist.

The training loop is farc.far.distill's `Run` (resume, seed, torchrun, warmup-cosine AdamW,
gradient clipping): a `HardwareFAR` is a FAR whose forward goes through the crossbars, with
the same parameter names, so its resume state and the written checkpoint are a plain FAR's.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from farc import distributed as D
from farc.errors import ConfigError
from farc.far.crossbar_torch import (
    CrossbarNumerics,
    LayerNumerics,
    layer_weights,
    swap_crossbars,
)
from farc.far.distill import Run, Split, Stage, TrainOptions, accuracy, check_rates, kd_loss
from farc.models.far import FAR
from farc.runtime.builder import calibrated_ranges
from farc.runtime.numerics import (
    XbarParams,
    input_range,
    input_scale,
    keep_vectors,
    quantize_weights,
)
from farc.runtime.schema import AdcRange, DeviceSection


@dataclass(frozen=True)
class FinetuneOptions:
    """Settings of `farc finetune`; the defaults meet docs/finetune.md's digits figures."""

    epochs: int = 2
    lr: float = 1e-3
    kd: bool = True
    kd_temperature: float = 2.0
    label_smoothing: float = 0.1
    recalibrate_every: int = 0
    """Steps between recalibrations of the input scales (0: at the start of every epoch)."""
    calib_samples: int = 64
    """Calibration images (the first N of the training split), as `farc compile`'s default."""
    eval_seeds: int = 1
    """Device instances the before/after noisy torch-numerics accuracy averages over (0: no
    noisy figure; `farc run --seeds` on the compiled program is the real evaluation)."""
    train: TrainOptions = field(default_factory=lambda: TrainOptions(batch_size=32))

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {self.epochs}")
        if self.recalibrate_every < 0:
            raise ConfigError(f"--recalibrate-every must be >= 0, got {self.recalibrate_every}")
        if self.eval_seeds < 0:
            raise ConfigError(f"--eval-seeds must be >= 0, got {self.eval_seeds}")
        if self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise ConfigError(f"--kd-temperature must be finite and > 0, got "
                              f"{self.kd_temperature}")
        check_rates(lr=self.lr)
        self.train.validate()


class HardwareFAR(FAR):
    """A FAR whose crossbar modules compute through `numerics` (one chip instance per
    forward; crossbar_torch.swap_crossbars), its own forward otherwise. Same parameters and
    names as FAR: its state dict is a FAR's."""

    def __init__(self, model: FAR, numerics: CrossbarNumerics) -> None:
        super().__init__(model.cfg)
        self.load_state_dict(model.state_dict())
        self.to(next(model.parameters()).device)
        self.numerics = numerics
        swap_crossbars(self, numerics.matmul)

    def forward(self, x: torch.Tensor, collect: list | None = None,
                block_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        if block_inputs is not None:
            raise ConfigError("a HardwareFAR runs end to end only (no teacher forcing)")
        return super().forward(x, collect)

    def plain(self) -> FAR:
        """The same weights as a plain FAR (what the checkpoint stores)."""
        model = FAR(self.cfg)
        model.load_state_dict(self.state_dict())
        return model


# ---------------------------------------------------------------- calibration
def record_inputs(model: FAR, images: torch.Tensor, batch: int = 64) -> dict[str, np.ndarray]:
    """Every crossbar layer's float inputs on `images` (float matmuls): [vectors, K] each,
    LSTM inputs `[x_t ; h_{t-1}]` in (image, step) order as farc.compiler.calibrate has them."""
    seen: dict[str, list[np.ndarray]] = {}
    now: dict[str, list[torch.Tensor]] = {}

    def matmul(name, W, b):
        def run(inp):
            now.setdefault(name, []).append(inp.reshape(-1, inp.shape[-1]))
            y = inp @ W
            return y if b is None else y + b
        return run

    twin = FAR(model.cfg)  # the current weights, float matmuls that record their inputs
    twin.load_state_dict(model.state_dict())
    swap_crossbars(twin.to(next(model.parameters()).device), matmul)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            now.clear()
            twin(images[i:i + batch])
            for name, xs in now.items():
                v = xs[0] if len(xs) == 1 else torch.stack(xs, dim=1).reshape(-1, xs[0].shape[-1])
                seen.setdefault(name, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in seen.items()}


def calibrate_layers(model: FAR, images: torch.Tensor, p: XbarParams,
                     seed: int = 0) -> dict[str, LayerNumerics]:
    """The numerics `farc compile` gives `model`'s current weights: input scale from max |x|
    (or its percentile: p.quant.calibration and percentile) per layer, and ADC steps (a
    calibrated range replays a seeded subsample of numerics.KEEP_VECTORS inputs on the
    layer's codes: builder.calibrated_ranges)."""
    seen = record_inputs(model, images)
    weights = layer_weights(model)
    rng = np.random.default_rng(seed)
    out = {}
    for name, x in seen.items():
        q = p.quant
        s_x = input_scale(input_range(x, q.calibration, q.percentile), q.input_bits)
        W = weights[name][0].detach().float().cpu().numpy()
        rt = p.geometry(*W.shape).row_tiles
        pmax = None
        keep = x[keep_vectors(len(x), rng)]  # drawn for every layer, as compile draws
        if p.adc.range == AdcRange.CALIBRATED:
            q, _ = quantize_weights(W, p.quant.weight_bits)
            pmax, _ = calibrated_ranges(q, keep, s_x, p)
        out[name] = LayerNumerics(name, p, s_x, p.adc_steps(rt, pmax))
    return out


class Recalibrator:
    """Re-derives the input scales (and ADC ranges) from the current weights every `every`
    steps (the first call included). Every rank computes the same from the same images."""

    def __init__(self, numerics: CrossbarNumerics, images: torch.Tensor, p: XbarParams,
                 opts: FinetuneOptions, steps_per_epoch: int) -> None:
        self.numerics, self.images, self.p, self.opts = numerics, images, p, opts
        self.every = opts.recalibrate_every or steps_per_epoch
        self.step = 0
        self.count = 0

    def __call__(self, model: torch.nn.Module) -> None:
        if self.step % self.every == 0:
            self.now(D.unwrap(model))
        self.step += 1

    def now(self, model: FAR) -> None:
        was = model.training
        model.eval()
        self.numerics.layers = calibrate_layers(
            model, self.images.to(next(model.parameters()).device), self.p)
        model.train(was)
        self.count += 1


def hardware_loss(teacher: torch.nn.Module | None, opts: FinetuneOptions,
                  recal: Recalibrator):
    """CE + (with a teacher and `kd`) KL(teacher || student) at kd_temperature, the student
    run through the crossbars; recalibrates first when due."""

    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        recal(model)
        logits = model(x)
        total = F.cross_entropy(logits, y, label_smoothing=opts.label_smoothing)
        if teacher is not None and opts.kd:
            with torch.no_grad():
                t_logits = teacher(x)
            total = total + kd_loss(logits, t_logits, opts.kd_temperature)
        return total, logits

    return loss


@torch.no_grad()
def hardware_accuracy(model: HardwareFAR, split: Split, world: D.World, noise: DeviceSection | None,
                      seeds: int, batch: int = 256) -> list[float]:
    """Test accuracy through the torch numerics, one value per device seed (one chip
    instance per seed, programmed once for the whole split; noise-free: one value)."""
    saved_noise, saved_gen = model.numerics.noise, model.numerics.gen
    accs = []
    try:
        for s in range(seeds if noise is not None and noise.enabled else 1):
            gen = torch.Generator(device=world.device).manual_seed(1000 + s)
            model.numerics.noise, model.numerics.gen = noise, gen
            accs.append(_one_chip_accuracy(model, split, world, batch))
    finally:
        model.numerics.noise, model.numerics.gen = saved_noise, saved_gen
    return accs


def _one_chip_accuracy(model: HardwareFAR, split: Split, world: D.World, batch: int) -> float:
    """Accuracy with the chip programmed once (the first batch's draw kept for the rest)."""
    num = model.numerics
    num.prepared.clear()
    num.fixed = True
    try:
        return accuracy(model, *split, world, batch)
    finally:
        num.fixed = False


def run_finetune(student: FAR, teacher: torch.nn.Module | None, p: XbarParams,
                 noise: DeviceSection | None, run: Run, opts: FinetuneOptions, test: Split,
                 calib_images: torch.Tensor) -> tuple[FAR, dict]:
    """Fine-tune `student` through the crossbar numerics of `p` (and `noise`); returns the
    plain FAR and its report (accuracies before and after: float, noise-free numerics,
    noisy numerics over `opts.eval_seeds` chips; history; seconds; recalibrations)."""
    opts.validate()
    student = run.model_from_state(student)
    numerics = CrossbarNumerics({}, noise)
    hw = HardwareFAR(student, numerics)
    steps = run._steps_per_epoch()
    recal = Recalibrator(numerics, calib_images, p, opts, steps)
    w, b = run.world, run.opts.eval_batch
    before = _measure(hw, recal, noise, test, w, opts, b)
    stage = Stage("hw-finetune", opts.epochs, opts.lr, hardware_loss(teacher, opts, recal),
                  lambda m: list(m.parameters()))
    t0 = time.perf_counter()
    recal.step = 0
    run.fit(hw, stage, 0)
    seconds = run.extra.get("seconds", 0.0) + time.perf_counter() - t0
    run.extra["seconds"] = seconds
    after = _measure(hw, recal, noise, test, w, opts, b)
    report = {
        "metrics": {"before": before, "after": after},
        "history": run.history, "seconds": seconds, "recalibrations": recal.count,
        "load_average": list(os.getloadavg()),
        "options": {k: v for k, v in asdict(opts).items() if k != "train"},
        "train_options": asdict(opts.train), "world_size": w.size,
        "xbar": asdict(p), "noise": None if noise is None else noise.changed(),
    }
    return hw.plain(), report


def _measure(hw: HardwareFAR, recal: Recalibrator, noise: DeviceSection | None, test: Split,
             world: D.World, opts: FinetuneOptions, batch: int) -> dict:
    """Float, noise-free-numerics and noisy-numerics test accuracy of the current weights."""
    recal.now(hw)
    plain = hw.plain().to(world.device)
    out = {"float_test_acc": accuracy(plain, *test, world, batch),
           "numerics_test_acc": hardware_accuracy(hw, test, world, None, 1, batch)[0]}
    if noise is not None and noise.enabled and opts.eval_seeds:
        accs = hardware_accuracy(hw, test, world, noise, opts.eval_seeds, batch)
        out.update(noisy_test_acc=sum(accs) / len(accs), noisy_test_runs=accs)
    return out
