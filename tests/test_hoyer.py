"""Hoyer-Square and unit-group norms against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from farc.far.hoyer import (
    UnitGroup,
    group_norms,
    hoyer_regulariser,
    hoyer_square,
    iter_unit_groups,
)
from farc.models.deit import DeiTConfig
from farc.models.far import FAR, FARConfig

TINY = DeiTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                  num_heads=2, mlp_ratio=1.0)


def test_hoyer_square_hand_computed():
    # (3 + 4 + 0)^2 / (9 + 16 + 0) = 49 / 25
    assert hoyer_square(torch.tensor([3.0, 4.0, 0.0])).item() == pytest.approx(1.96)


def test_hoyer_square_extremes_one_and_n():
    assert hoyer_square(torch.tensor([0.0, 5.0, 0.0])).item() == pytest.approx(1.0)
    assert hoyer_square(torch.full((4,), 2.0)).item() == pytest.approx(4.0)


def _ones_group(direction: str) -> UnitGroup:
    lstm = nn.LSTM(1, 2, batch_first=True)  # input 1, hidden 2
    proj = nn.Linear(4, 1)  # [fwd 2 ; bwd 2] -> 1
    for p in [*lstm.parameters(), *proj.parameters()]:
        nn.init.ones_(p)
    return UnitGroup(0, 0, direction, lstm, proj, 0 if direction == "fwd" else 2)


def test_group_norm_all_ones_hand_computed():
    # Per unit: 4 W_ih entries + 8 W_hh row entries + 4 + 4 biases + 8 W_hh column entries of
    # which 4 are already in the rows + 1 head_proj entry = 25 ones -> norm 5.
    g = _ones_group("fwd")
    assert group_norms(g).tolist() == pytest.approx([5.0, 5.0])
    # Without biases: 25 - 8 = 17.
    assert group_norms(g, include_bias=False).tolist() == pytest.approx([math.sqrt(17)] * 2)


def test_group_norm_reads_its_own_head_proj_columns():
    g = _ones_group("bwd")
    with torch.no_grad():
        g.head_proj.weight.zero_()
        g.head_proj.weight[0, 3] = 2.0  # bwd unit 1 is head_proj column 2 + 1
    # unit 0: 24 ones; unit 1: 24 ones + 2^2
    assert group_norms(g).tolist() == pytest.approx([math.sqrt(24), math.sqrt(28)])


def test_group_norm_is_a_norm_not_a_signed_sum():
    g = _ones_group("fwd")
    with torch.no_grad():
        g.lstm.weight_ih_l0[0::2] = -1.0  # unit 0's gate rows flip sign
    assert group_norms(g).tolist() == pytest.approx([5.0, 5.0])


def test_regulariser_sums_every_block_head_direction():
    torch.manual_seed(0)
    model = FAR(FARConfig.dense(TINY))
    groups = list(iter_unit_groups(model))
    assert len(groups) == TINY.depth * TINY.num_heads * 2
    expected = sum(hoyer_square(group_norms(g)).item() for g in groups)
    assert hoyer_regulariser(model).item() == pytest.approx(expected, rel=1e-5)


def test_regulariser_gradient_is_finite_at_zero_groups():
    torch.manual_seed(0)
    model = FAR(FARConfig.dense(TINY))
    g = next(iter_unit_groups(model))
    with torch.no_grad():
        for p in g.lstm.parameters():
            p.zero_()
    hoyer_regulariser(model).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
