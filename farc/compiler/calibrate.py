"""Calibration: run the float model in torch on sample inputs and record, for every crossbar
layer, what reaches its input.

Layer names are module names, which are also the names the importer gives the weight
constants: `blocks.0.mlp.fc1`, `patch_embed.proj` (a convolution's input: the image cut into the
same patches the importer's matmul sees), `head`, and `blocks.0.far.lstm_fwd.1` for an LSTM,
whose crossbar input is the stacked `[x_t ; h_{t-1}]` over every step (h_{-1} = 0, or
the constant initial state a GraphModel's LSTM is called with). A GraphModel's GRU
(farc.models.gru) has two crossbar layers: `<path>`, whose input is [x_t ; h_{t-1}] as
for an LSTM, and `<path>.hidden`, whose input is what W_hn reads, r_t * h_{t-1} (or
h_{t-1} with linear_before_reset), recomputed here from the layer's weights.

Policy (docs/numerics.md): `max` uses max |x|; `percentile` the target's percentile of |x|
over every input element of every calibration sample. A seeded subsample of input vectors
is kept per layer for the calibrated ADC range (TileCrossbar).

Torch runs single-threaded here: the recurrence is thousands of tiny ops, and on a busy
2-core machine the intra-op thread pool made calibration 10x slower (measured)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from farc.models.gru import GRU
from farc.passes._crossbar_ir import GRU_HIDDEN, LayerCalib
from farc.runtime.numerics import KEEP_VECTORS, keep_vectors


def calibrate(model: nn.Module, images: torch.Tensor, percentile: float = 100.0,
              batch: int = 64, keep: int = KEEP_VECTORS, seed: int = 0,
              draws: list | None = None) -> dict[str, LayerCalib]:
    """Per-layer input statistics of `model` (float, eval mode) on `images` [S, C, H, W].

    Parameters
    ----------
    percentile : the percentile of |x| reported as `LayerCalib.percentile` (100 = max).
    keep : input vectors kept per layer (a seeded random subsample).
    draws : filled with [layer, vectors seen] in the order the layers drew their subsamples
        from the one `default_rng(seed)` stream (the program's provenance records it, so
        that `farc verify` can draw the same vectors)."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [_hook(mod, name, seen) for name, mod in model.named_modules()]
    hooks = [h for h in hooks if h is not None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-step ops: a thread pool costs more than it gives
    try:
        with torch.no_grad(), _batched_lstms(model, seen):
            for i in range(0, len(images), batch):
                model(images[i : i + batch])
    finally:
        torch.set_num_threads(threads)
        for h in hooks:
            h.remove()
    rng = np.random.default_rng(seed)
    if draws is not None:
        draws.extend([name, int(sum(len(a) for a in v))] for name, v in seen.items())
    return {name: _summarise(np.concatenate(v), percentile, keep, rng)
            for name, v in seen.items()}


def _summarise(x: np.ndarray, percentile: float, keep: int, rng) -> LayerCalib:
    mag = np.abs(x)
    absmax = float(mag.max()) if mag.size else 0.0
    pct = absmax if percentile >= 100.0 else float(np.percentile(mag, percentile))
    pick = keep_vectors(len(x), rng, keep)
    return LayerCalib(absmax, pct, np.ascontiguousarray(x[pick], dtype=np.float32))


def _hook(mod: nn.Module, name: str, seen: dict) -> torch.utils.hooks.RemovableHandle | None:
    record = _recorder(name, seen)
    if isinstance(mod, nn.Linear):
        return mod.register_forward_pre_hook(lambda m, args: record(args[0]))
    if isinstance(mod, nn.Conv1d | nn.Conv2d):
        return mod.register_forward_pre_hook(lambda m, args: record(_patches(m, args[0])))
    if isinstance(mod, nn.LSTM):
        return mod.register_forward_hook(
            lambda m, args, out: record(_stacked(args[0], out[0], *args[1:2])))
    if isinstance(mod, GRU):
        hidden = _recorder(name + GRU_HIDDEN, seen)
        return mod.register_forward_hook(
            lambda m, args, out: _record_gru(m, args, out, record, hidden))
    return None


def _record_gru(m: GRU, args: tuple, out: torch.Tensor, record: Callable,
                hidden: Callable) -> None:
    """A GRU run's two crossbar inputs: [x_t ; h_{t-1}] and W_hn's input (r_t * h_{t-1},
    or h_{t-1} with linear_before_reset); h_{-1} is the h0 it was called with, else 0."""
    x = args[0]
    h0 = args[1] if len(args) > 1 and args[1] is not None else torch.zeros(m.hidden_size)
    first = h0.reshape(1, 1, -1).to(out.dtype).expand(out.shape[0], 1, -1)
    prev = torch.cat([first, out[:, :-1]], dim=1)
    record(torch.cat([x, prev], dim=-1))
    if m.linear_before_reset:
        hidden(prev)
        return
    k = m.hidden_size
    r = torch.sigmoid(x @ m.weight_ih[:k].T + m.bias_ih[:k] + prev @ m.weight_hh[:k].T
                      + m.bias_hh[:k])
    hidden(r * prev)


def _recorder(name: str, seen: dict) -> Callable[[torch.Tensor], None]:
    def record(x: torch.Tensor) -> None:
        seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).float().numpy().copy())
    return record


def _patches(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Inputs -> [B, P, C * prod(kernel)], each output position's receptive field in the
    importer's row order (channel, kernel offsets), as the crossbar sees it."""
    k, d, p, s = conv.kernel_size, conv.dilation, conv.padding, conv.stride
    if isinstance(conv, nn.Conv1d):  # a 1-d convolution is a 2-d one over [B, C, 1, L]
        k, d, p, s, x = (1, *k), (1, *d), (0, *p), (1, *s), x.unsqueeze(2)
    return torch.nn.functional.unfold(x, k, d, p, s).transpose(1, 2)


def _stacked(x: torch.Tensor, h: torch.Tensor,
             hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """[x_t ; h_{t-1}] for every step of a batch_first LSTM run; h_{-1} is the initial
    state the LSTM was called with (`hx`, [1, B, H] each: a GraphModel's constant
    initial state), else 0. The first step's crossbar input holds h_{-1}, so its range
    must be seen here."""
    first = torch.zeros_like(h[:, :1]) if hx is None else hx[0][0][:, None].to(h.dtype)
    prev = torch.cat([first, h[:, :-1]], dim=1)
    return torch.cat([x, prev], dim=-1)


# ---- FAR mixers: every head and direction of a block stepped together ----
# nn.LSTM runs one (head, direction) at a time: 2H * T small steps per block, which made a
# FAR-Base calibration take most of the compile. Stepping all of a block's LSTMs as one
# batched matmul per step is the same maths (hidden sizes are padded with zero weights:
# a padded unit stays exactly 0 and feeds nothing).

@contextlib.contextmanager
def _batched_lstms(model: nn.Module, seen: dict) -> Iterator[None]:
    from farc.models.far import FARMixer

    names = {id(m): n for n, m in model.named_modules()}
    mixers = [m for m in model.modules() if isinstance(m, FARMixer)]
    for m in mixers:
        m.heads_out = types.MethodType(_heads_out_recording(names, seen), m)
    try:
        yield
    finally:
        for m in mixers:
            del m.heads_out


def _heads_out_recording(names: dict, seen: dict):
    def heads_out(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_proj(x)
        d, heads = self.head_dim, self.num_heads
        lstms = [*self.lstm_fwd, *self.lstm_bwd]
        xs = [x[:, :, h * d : (h + 1) * d] for h in range(heads)]
        inputs = xs + [xh.flip(1) for xh in xs]
        outs = _run_lstms(lstms, inputs)
        for lstm, xi, hi in zip(lstms, inputs, outs):
            _recorder(names[id(lstm)], seen)(_stacked(xi, hi))
        res = []
        for h in range(heads):
            cat = torch.cat([outs[h], outs[heads + h].flip(1)], dim=-1)
            res.append(self.head_proj[h](cat))
        return torch.stack(res, dim=2)
    return heads_out


def _run_lstms(lstms: list[nn.LSTM], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run L single-layer LSTMs (zero state) on their inputs [B, T, I] in lockstep."""
    hmax = max(m.hidden_size for m in lstms)
    w_ih = torch.stack([_pad_gates(m.weight_ih_l0, hmax) for m in lstms])     # [L, 4Hm, I]
    w_hh = torch.stack([_pad_gates(torch.nn.functional.pad(
        m.weight_hh_l0, (0, hmax - m.hidden_size)), hmax) for m in lstms])    # [L, 4Hm, Hm]
    bias = torch.stack([_pad_gates((m.bias_ih_l0 + m.bias_hh_l0)[:, None], hmax)[:, 0]
                        for m in lstms])                                      # [L, 4Hm]
    x = torch.stack(inputs)                                                   # [L, B, T, I]
    xp = torch.einsum("lbti,lgi->tlbg", x, w_ih) + bias[None, :, None]        # [T, L, B, 4Hm]
    h = x.new_zeros(len(lstms), x.shape[1], hmax)
    c = torch.zeros_like(h)
    steps = []
    for t in range(x.shape[2]):
        i, f, g, o = (xp[t] + torch.bmm(h, w_hh.transpose(1, 2))).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        steps.append(h)
    out = torch.stack(steps, dim=2)                                           # [L, B, T, Hm]
    return [out[k, :, :, : m.hidden_size] for k, m in enumerate(lstms)]


def _pad_gates(w: torch.Tensor, hmax: int) -> torch.Tensor:
    """[4H, X] in gate blocks i, f, g, o -> [4*hmax, X], each block zero-padded."""
    blocks = w.reshape(4, -1, w.shape[-1])
    return torch.nn.functional.pad(blocks, (0, 0, 0, hmax - blocks.shape[1])).reshape(
        4 * hmax, -1)
