"""Tiny DeiT/FAR models and their IR after each stage, shared by the pass tests (cached:
the tests read the modules; no pass mutates its input, tests/passes/test_no_mutation.py)."""

from __future__ import annotations

import functools

import torch

from farc.models.deit import DeiT, DeiTConfig
from farc.models.far import FAR, FARConfig

TINY = DeiTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=2,
                  num_heads=2, mlp_ratio=2.0)
"""4x4 images, 2x2 patches -> 5 tokens, D = 8, 2 heads of d = 4, 2 blocks."""
PRUNED_HIDDEN = (((3, 2), (1, 4)), ((4, 4), (2, 1)))


def tiny(kind: str, seed: int = 0, cfg: DeiTConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "deit":
        return DeiT(cfg).eval()
    if kind == "far":
        return FAR(FARConfig.dense(cfg)).eval()
    if kind == "pruned":
        return FAR(FARConfig(cfg, PRUNED_HIDDEN)).eval()
    raise ValueError(kind)


def images(n: int = 8, cfg: DeiTConfig = TINY, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g) * 2 - 1


@functools.cache
def imported(kind: str):
    from farc.compiler.importer import import_model

    return import_model(tiny(kind)).mod


@functools.cache
def partitioned(kind: str):
    from farc.passes.legalize_lstm import LegalizeLSTM
    from farc.passes.partition_crossbar import PartitionCrossbar

    return PartitionCrossbar()(LegalizeLSTM()(imported(kind)))


@functools.cache
def calibrated(kind: str):
    from farc.compiler.calibrate import calibrate

    return calibrate(tiny(kind), images())


def expected_crossbar_layers(kind: str) -> int:
    """patch embedding + classifier + per block: DeiT qkv, proj, fc1, fc2; FAR pre_proj,
    post_proj, fc1, fc2, one head_proj per head and one LSTM cell per head and direction."""
    per_block = 4 if kind == "deit" else 4 + 3 * TINY.num_heads
    return 2 + TINY.depth * per_block
