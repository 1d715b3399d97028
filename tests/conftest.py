"""Shared, cheap session fixtures: random-weight digits-shaped DeiT, FAR and pruned FAR, and
their checkpoints in a session temp dir. Random weights are enough for every format and
numerics check; tests that need a trained model train their own tiny one on purpose."""

from __future__ import annotations

import pytest
import torch

from farc.models.deit import DEIT_PRESETS, DeiT
from farc.models.far import FAR, FARConfig

DIGITS = DEIT_PRESETS["deit_digits"]
# A "pruned" FAR for deit_digits (4 blocks x 4 heads, head dim 16): every head and direction
# has its own hidden size, including 1 and the full 16.
UNEQUAL_HIDDEN = (
    ((5, 9), (16, 3), (1, 2), (7, 7)),
    ((2, 11), (3, 4), (16, 16), (9, 1)),
    ((4, 4), (8, 2), (1, 1), (12, 6)),
    ((16, 1), (2, 15), (6, 10), (3, 3)),
)


@pytest.fixture(scope="session")
def deit_digits() -> DeiT:
    torch.manual_seed(0)
    return DeiT(DIGITS).eval()


@pytest.fixture(scope="session")
def far_digits(deit_digits) -> FAR:
    torch.manual_seed(1)
    return FAR.from_teacher(deit_digits).eval()


@pytest.fixture(scope="session")
def pruned_far_digits() -> FAR:
    torch.manual_seed(2)
    return FAR(FARConfig(DIGITS, UNEQUAL_HIDDEN)).eval()


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def deit_checkpoint(ckpt_dir, deit_digits):
    from farc.checkpoint import save_checkpoint

    path = ckpt_dir / "deit.pt"
    save_checkpoint(path, deit_digits, {"note": "random deit_digits", "seed": 0})
    return path


@pytest.fixture(scope="session")
def far_checkpoint(ckpt_dir, far_digits):
    from farc.checkpoint import save_checkpoint

    path = ckpt_dir / "far.pt"
    save_checkpoint(path, far_digits, {"note": "random FAR from deit_digits", "seed": 1})
    return path


@pytest.fixture(scope="session")
def pruned_far_checkpoint(ckpt_dir, pruned_far_digits):
    from farc.checkpoint import save_checkpoint

    path = ckpt_dir / "far_pruned.pt"
    save_checkpoint(path, pruned_far_digits, {"note": "random FAR, unequal hidden sizes"})
    return path
