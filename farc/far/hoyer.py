"""Unit-group norms and the Hoyer-Square regulariser for structured LSTM pruning.

A *group* is every parameter that belongs to one LSTM hidden unit j of one head and one
direction, so that removing the group removes the unit physically:

- its 4 gate rows (i, f, g, o: rows j, n+j, 2n+j, 3n+j) of W_ih and W_hh,
- its 4 gate entries of b_ih and b_hh (biases are included by default: they are the unit's
  own parameters, and a unit whose weights are zero but whose biases are not would still
  emit a constant; see docs/far.md),
- its column j of W_hh (what the unit feeds back into every gate),
- its column of the head's head_proj (what the unit feeds out of the mixer); the forward
  direction owns head_proj columns 0..f-1, the backward one f..f+b-1.

The W_hh entries at (gate row of j, column j) lie in both the rows and the column; the group
is a set, so they count once. The group norm is the L2 norm of that set (a norm, never a
signed sum, so a unit cannot look small because its weights cancel).

Hoyer-Square of a vector v of group norms is (sum_j v_j)^2 / sum_j v_j^2: it is scale
invariant, equals 1 when one unit carries everything and n when all are equal, so minimising
it drives whole groups to zero without shrinking the survivors (Yang et al., ICLR 2020)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from farc.models.far import FAR

DIRECTIONS = ("fwd", "bwd")

_EPS = 1e-12


@dataclass(frozen=True)
class UnitGroup:
    """Where one set of unit groups lives: block, head and direction of a FAR model."""

    block: int
    head: int
    direction: str
    lstm: nn.LSTM
    head_proj: nn.Linear
    col_offset: int


def iter_unit_groups(model: FAR) -> Iterator[UnitGroup]:
    """Every (block, head, direction) of `model` in a fixed order: block, head, fwd then bwd."""
    for b, blk in enumerate(model.blocks):
        m = blk.far
        for h in range(m.num_heads):
            fwd, bwd = m.lstm_fwd[h], m.lstm_bwd[h]
            yield UnitGroup(b, h, "fwd", fwd, m.head_proj[h], 0)
            yield UnitGroup(b, h, "bwd", bwd, m.head_proj[h], fwd.hidden_size)


def group_sq_norms(g: UnitGroup, include_bias: bool = True) -> torch.Tensor:
    """Squared L2 norm of each hidden unit's group, shape [hidden]; differentiable."""
    lstm = g.lstm
    n = lstm.hidden_size
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    rows = w_ih.reshape(4, n, -1).square().sum((0, 2)) + w_hh.reshape(4, n, n).square().sum((0, 2))
    if include_bias:
        rows = rows + lstm.bias_ih_l0.reshape(4, n).square().sum(0)
        rows = rows + lstm.bias_hh_l0.reshape(4, n).square().sum(0)
    cols = w_hh.square().sum(0)
    overlap = torch.diagonal(w_hh.reshape(4, n, n), dim1=1, dim2=2).square().sum(0)
    out = g.head_proj.weight[:, g.col_offset : g.col_offset + n].square().sum(0)
    return rows + cols - overlap + out


def group_norms(g: UnitGroup, include_bias: bool = True) -> torch.Tensor:
    """L2 norm of each hidden unit's group, shape [hidden]."""
    return group_sq_norms(g, include_bias).clamp_min(0).sqrt()


def hoyer_square(norms: torch.Tensor) -> torch.Tensor:
    """(sum v)^2 / sum v^2 of non-negative group norms v; 0 for an all-zero vector."""
    return norms.sum().square() / (norms.square().sum() + _EPS)


def hoyer_regulariser(model: FAR, include_bias: bool = True) -> torch.Tensor:
    """Sum of Hoyer-Square over every (block, head, direction) of `model`.

    The square root gets a tiny epsilon inside so the gradient stays finite at a group that
    is already exactly zero."""
    terms = [hoyer_square((group_sq_norms(g, include_bias) + _EPS).sqrt())
             for g in iter_unit_groups(model)]
    return torch.stack(terms).sum()


def all_group_norms(model: FAR,
                    include_bias: bool = True) -> dict[tuple[int, int, str], torch.Tensor]:
    """Detached group norms keyed by (block, head, direction)."""
    with torch.no_grad():
        return {(g.block, g.head, g.direction): group_norms(g, include_bias).detach().clone()
                for g in iter_unit_groups(model)}
