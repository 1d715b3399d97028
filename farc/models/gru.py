"""`GRU`: one direction of one GRU layer, batch-first, as farc compiles it.

Why a module of farc's own rather than nn.GRU: nn.GRU computes only one of the two GRUs
ONNX defines (linear_before_reset = 1, the reset gate applied after the hidden matmul);
ONNX's default (linear_before_reset = 0) multiplies h by the reset gate before the matmul.
One module holds both, so calibration, the importer and verify's reference find every GRU
as one module by path, like an nn.LSTM.

Weights in PyTorch's layout and gate order r, z, n: weight_ih [3H, I], weight_hh [3H, H],
bias_ih, bias_hh [3H]. Per step (ONNX GRU, torch.nn.GRU):
  r = sig(W_ir x + b_ir + W_hr h + b_hr), z = sig(W_iz x + b_iz + W_hz h + b_hz)
  linear_before_reset: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  otherwise:           n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
  h' = (1 - z) * n + z * h"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GRU", "gru_sequence"]


class GRU(nn.Module):
    """forward(x [B, T, I], h0 [H] or None) -> h for every step [B, T, H] (h0: a constant
    initial state shared by every batch row; None: zero)."""

    def __init__(self, input_size: int, hidden_size: int, linear_before_reset: bool) -> None:
        super().__init__()
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.linear_before_reset = bool(linear_before_reset)
        h3 = 3 * self.hidden_size
        self.weight_ih = nn.Parameter(torch.zeros(h3, self.input_size))
        self.weight_hh = nn.Parameter(torch.zeros(h3, self.hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(h3))
        self.bias_hh = nn.Parameter(torch.zeros(h3))

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, "
                f"linear_before_reset={self.linear_before_reset}")

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        return gru_sequence(x, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                            self.linear_before_reset, h0)


def gru_sequence(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                 b_ih: torch.Tensor, b_hh: torch.Tensor, linear_before_reset: bool,
                 h0: torch.Tensor | None = None) -> torch.Tensor:
    """The GRU recurrence of the module docstring over x [B, T, I] from h0 [H] (or 0)."""
    hidden = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], hidden)
    if h0 is not None:
        h = h + h0.reshape(1, hidden).to(x.dtype)
    gx = x @ w_ih.T + b_ih                                     # [B, T, 3H]
    w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden :]
    b_rz, b_n = b_hh[: 2 * hidden], b_hh[2 * hidden :]
    outs = []
    for t in range(x.shape[1]):
        xr, xz, xn = gx[:, t].chunk(3, dim=1)
        hr, hz = (h @ w_rz.T + b_rz).chunk(2, dim=1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        if linear_before_reset:
            n = torch.tanh(xn + r * (h @ w_n.T + b_n))
        else:
            n = torch.tanh(xn + (r * h) @ w_n.T + b_n)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, dim=1)
