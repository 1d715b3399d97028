"""Calibration: run the float model in torch on sample inputs and record, for every crossbar
layer, what reaches its input.

Layer names are module names, which are also the names the importer gives the weight
constants: `blocks.0.mlp.fc1`, `patch_embed.proj` (its input: the image cut into the same
patches the importer's matmul sees), `head`, and `blocks.0.far.lstm_fwd.1` for an LSTM,
whose crossbar input is the stacked `[x_t ; h_{t-1}]` over every step (h_{-1} = 0).

Policy (docs/numerics.md): `max` uses max |x|; `percentile` the target's percentile of |x|
over every input element of every calibration sample. A seeded subsample of input vectors
is kept per layer for the calibrated ADC range (TileCrossbar)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from farc.passes._crossbar_ir import LayerCalib

KEEP_VECTORS = 256
"""Input vectors kept per layer for the calibrated ADC range."""


def calibrate(model: nn.Module, images: torch.Tensor, percentile: float = 100.0,
              batch: int = 64, keep: int = KEEP_VECTORS, seed: int = 0) -> dict[str, LayerCalib]:
    """Per-layer input statistics of `model` (float, eval mode) on `images` [S, C, H, W].

    Parameters
    ----------
    percentile : the percentile of |x| reported as `LayerCalib.percentile` (100 = max).
    keep : input vectors kept per layer (a seeded random subsample)."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [_hook(mod, name, seen) for name, mod in model.named_modules()]
    hooks = [h for h in hooks if h is not None]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(images[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
    rng = np.random.default_rng(seed)
    return {name: _summarise(np.concatenate(v), percentile, keep, rng)
            for name, v in seen.items()}


def _summarise(x: np.ndarray, percentile: float, keep: int, rng) -> LayerCalib:
    mag = np.abs(x)
    absmax = float(mag.max()) if mag.size else 0.0
    pct = absmax if percentile >= 100.0 else float(np.percentile(mag, percentile))
    pick = rng.choice(len(x), size=min(keep, len(x)), replace=False)
    return LayerCalib(absmax, pct, np.ascontiguousarray(x[np.sort(pick)], dtype=np.float32))


def _hook(mod: nn.Module, name: str, seen: dict) -> torch.utils.hooks.RemovableHandle | None:
    record = _recorder(name, seen)
    if isinstance(mod, nn.Linear):
        return mod.register_forward_pre_hook(lambda m, args: record(args[0]))
    if isinstance(mod, nn.Conv2d):
        return mod.register_forward_pre_hook(lambda m, args: record(_patches(m, args[0])))
    if isinstance(mod, nn.LSTM):
        return mod.register_forward_hook(lambda m, args, out: record(_stacked(args[0], out[0])))
    return None


def _recorder(name: str, seen: dict) -> Callable[[torch.Tensor], None]:
    def record(x: torch.Tensor) -> None:
        seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).float().numpy().copy())
    return record


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Images -> [B, P, C*kh*kw] in the importer's patch layout."""
    b, c, h, w = x.shape
    kh, kw = conv.kernel_size
    p = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b, (h // kh) * (w // kw), c * kh * kw)


def _stacked(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[x_t ; h_{t-1}] for every step of a batch_first LSTM run, h_{-1} = 0."""
    prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
    return torch.cat([x, prev], dim=-1)
