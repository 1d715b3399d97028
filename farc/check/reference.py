"""The independent reference of `farc verify`: the model's own graph, with every crossbar
matmul computed as docs/numerics.md says, built from the checkpoint's float weights.

What it takes from a compiled program is only what a user chooses or calibrates, per layer
(by name): bit widths, crossbar height, mapping, the per-column weight scales, the input
scale, the ADC step of each row tile and the flip flag. It never reads the program's
conductance codes, column maps or instruction stream, and it imports nothing from the
compiler or from farc.runtime: the weights are quantized, sliced, flip-encoded, digitised
and shifted-and-added here, from the spec, so a packing, slicing, column-map, lowering or
emulator fault makes the two disagree.

How the graph is built: a copy of the torch model whose crossbar modules (every Linear,
the patch-embedding convolution, every LSTM and GRU) are replaced by reference modules, so the
model's own forward (token mixing, norms, GELU, attention's digital matmuls, the LSTMs'
gate math) is the graph; it runs eagerly in torch, and its crossbar layers are exported to
ONNX side by side (`export_layer_bank`) for the per-layer integer check in onnxruntime.
Integer arithmetic is float64 (exact below 2**53, far above any target's sums), or float32
on the bit-level ADC path where a layer's own bounds and an enumeration of its ADC prove
float32 gives the same integers (`_float32_is_exact`); digital arithmetic is float32 as in
the model.

A reference layer takes the ADC's bit-level path (per row tile, input cycle, column) unless
its own levels prove the ADC lossless (every step 1 and no stored column can sum past the
top code), where the one matmul x_int @ q gives the same integers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from farc.errors import FarcError
from farc.limits import max_memory
from farc.models.gru import GRU


class ReferenceError(FarcError):
    """The program and the checkpoint do not describe the same model."""


@dataclass(frozen=True)
class LayerChoice:
    """What one crossbar layer of a program says a user chose or calibrated."""

    name: str
    kind: str
    K: int
    N: int
    weight_bits: int
    input_bits: int
    cell_bits: int
    dac_bits: int
    adc_bits: int
    mapping: str
    rows: int
    in_scale: float
    w_scale: np.ndarray
    adc_step: tuple
    """Per row tile: a step, or (granularity 'slice') a tuple of one per weight slice."""
    adc_flip: bool
    input_encoding: str = "offset"
    adc_granularity: str = "tile"

    @staticmethod
    def of(layer: dict[str, Any], arrays: Any) -> LayerChoice:
        """Read from the layer's plain JSON sections (docs/tile-program.md), not through
        the runtime's schema: the reference stays independent of it."""
        xbar, dac, adc, quant = (layer[k] for k in ("crossbar", "dac", "adc", "quant"))
        return LayerChoice(
            name=str(layer["name"]), kind=str(layer["kind"]), K=int(layer["K"]),
            N=int(layer["N"]), weight_bits=int(quant["weight_bits"]),
            input_bits=int(quant["input_bits"]), cell_bits=int(xbar["cell_bits"]),
            dac_bits=int(dac["bits"]), adc_bits=int(adc["bits"]),
            mapping=str(quant["mapping"]), rows=int(xbar["rows"]),
            in_scale=float(layer["in_scale"]),
            w_scale=np.asarray(arrays[layer["arrays"]["w_scale"]], np.float32),
            adc_step=tuple(tuple(float(v) for v in s) if isinstance(s, list) else float(s)
                           for s in layer["adc_step"]),
            adc_flip=bool(adc["flip"]), input_encoding=str(quant["input_encoding"]),
            adc_granularity=str(adc["granularity"]))


def program_choices(program: Any) -> dict[str, LayerChoice]:
    """Layer name -> LayerChoice for every crossbar layer of a program."""
    return {c.name: c for c in (LayerChoice.of(L, program.arrays)
                                for L in program.manifest["layers"])}


# ---------------------------------------------------------------- one crossbar layer
class CrossbarMatmul(nn.Module):
    """y = x @ W + b on crossbars, from the float W [K, N] and the layer's choices.

    forward(x [..., K] float32) -> (y [..., N] float32, y_int [V, N] float64)."""

    def __init__(self, W: np.ndarray, bias: np.ndarray | None, c: LayerChoice) -> None:
        super().__init__()
        W = np.asarray(W, np.float32)
        if W.shape != (c.K, c.N) or c.w_scale.shape != (c.N,):
            raise ReferenceError(f"layer {c.name}: the checkpoint's weight is "
                                 f"{list(W.shape)}, the program's layer is [{c.K}, {c.N}]")
        self.name, self.K, self.N = c.name, c.K, c.N
        qw = 2 ** (c.weight_bits - 1) - 1
        qx = 2 ** (c.input_bits - 1) - 1
        q = np.clip(np.rint(W.astype(np.float64) / c.w_scale.astype(np.float64)), -qw, qw)
        if c.input_encoding not in ("offset", "sign_magnitude", "bipolar"):
            raise ReferenceError(f"layer {c.name}: unknown input encoding "
                                 f"{c.input_encoding!r}")
        self.encoding = c.input_encoding
        self.qx = float(qx)
        self.zero = float(2 ** (c.input_bits - 1)) if self.encoding == "offset" else 0.0
        self.in_scale = float(np.float32(c.in_scale))
        self.register_buffer("scale", torch.from_numpy(np.float32(c.in_scale) * c.w_scale))
        self.register_buffer("bias", None if bias is None else
                             torch.from_numpy(np.asarray(bias, np.float32).reshape(c.N)))
        self.register_buffer("q", torch.from_numpy(q))
        self.register_buffer("colsum", torch.from_numpy(q.sum(axis=0)))
        levels, colw, self.offset, col_slice = _slice_weights(q.astype(np.int64), c)
        rt = math.ceil(c.K / c.rows)
        padded = np.zeros((rt * c.rows, levels.shape[1]), np.int64)
        padded[:c.K] = levels
        tiles = padded.reshape(rt, c.rows, -1)
        cell_top = 2**c.cell_bits - 1
        used = np.minimum(c.rows, c.K - np.arange(rt) * c.rows)
        flipped = np.zeros((rt, tiles.shape[2]), bool)
        if c.adc_flip:  # a column past half its levels is stored complemented
            flipped = tiles.sum(axis=1) > (used * cell_top // 2)[:, None]
            live = np.arange(c.rows)[None, :, None] < used[:, None, None]
            tiles = np.where(flipped[:, None, :] & live, cell_top - tiles, tiles)
        if len(c.adc_step) != rt:
            raise ReferenceError(f"layer {c.name}: {len(c.adc_step)} ADC steps for {rt} row "
                                 "tiles")
        steps = np.asarray(c.adc_step, np.float64)  # [RT] or [RT, slices]
        if steps.ndim == 1:
            steps = np.repeat(steps[:, None], col_slice.max(initial=0) + 1, axis=1)
        steps = steps[:, col_slice]                   # the step of every column
        # bipolar sums take either sign: a sign bit and adc_bits - 1 magnitude bits
        adc_top = 2**c.adc_bits - 1 if self.encoding != "bipolar" else 2**(c.adc_bits - 1) - 1
        self.adc_low = 0.0 if self.encoding != "bipolar" else -float(adc_top)
        peak = tiles.sum(axis=1).max(initial=0) * (2**c.dac_bits - 1)
        self.exact_adc = bool(np.all(steps == 1) and peak <= adc_top)
        if self.encoding == "offset":  # u = x + z, LSB first
            per = math.ceil(c.input_bits / c.dac_bits)
            plane_w = 2.0 ** (np.arange(per) * c.dac_bits)
        else:  # |x| bit planes (sign-magnitude: positive rows, then negative rows)
            per = math.ceil((c.input_bits - 1) / c.dac_bits)
            weights = 2.0 ** (np.arange(per) * c.dac_bits)
            plane_w = np.concatenate([weights, -weights]) \
                if self.encoding == "sign_magnitude" else weights
        cycles = len(plane_w)
        self.rows, self.row_tiles, self.cycles = c.rows, rt, cycles
        self.col_slice, self.slices = col_slice, int(col_slice.max(initial=0)) + 1
        # the physical largest partial sum of a column in one cycle (flip: half the levels)
        levels = c.rows * cell_top
        self.full_pmax = (2**c.dac_bits - 1) * (levels // 2 if c.adc_flip else levels)
        self.adc_top, self.cell_top = float(adc_top), float(cell_top)
        self.digit_base = float(2**c.dac_bits)
        # the bit-level path's arithmetic: float32 where it is proven to give the float64
        # integers (_float32_is_exact), else float64
        self.work = torch.float32 if _float32_is_exact(
            peak, steps, self.adc_low, float(adc_top), plane_w, c.rows * (2**c.dac_bits - 1),
            signed=self.encoding == "bipolar") else torch.float64
        sign = np.where(flipped, -1.0, 1.0)[:, None, :]   # flip recovery: total - ADC(P')
        self.register_buffer("stored", torch.from_numpy(tiles.astype(np.float64)))
        self.register_buffer("stored_w", self.stored.to(self.work))
        self.register_buffer("flipped", torch.from_numpy(flipped[:, None, :].astype(np.float64)))
        self.register_buffer("steps", torch.from_numpy(steps.reshape(rt, 1, -1)).to(self.work))
        self.register_buffer("signed_steps", torch.from_numpy(steps.reshape(rt, 1, -1) * sign))
        self.register_buffer("digit_div", torch.from_numpy(
            (2.0 ** (np.arange(per) * c.dac_bits)).reshape(per, 1, 1)))
        self.register_buffer("plane_w", torch.from_numpy(plane_w.reshape(1, cycles)))
        self.register_buffer("plane_w_work", self.plane_w.to(self.work))
        self.register_buffer("colw", torch.from_numpy(colw))
        # vectors per _adc_path call in eager torch: its [RT, C*V, J] sums (and codes, and
        # their shift-add) within ADC_PATH_MEMORY_SHARE of the memory budget (a VGG-8
        # convolution over 8 images is 8,192 vectors of 2.2 MB of sums each)
        self.chunk = max(1, int(max_memory() * ADC_PATH_MEMORY_SHARE //
                                (rt * cycles * tiles.shape[2] * ADC_PATH_BYTES_PER_SUM)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.K).float()
        x_int = torch.clamp(torch.round(flat / self.in_scale), -self.qx, self.qx).double()
        if self.exact_adc:
            y_int = x_int @ self.q
        elif torch.onnx.is_in_onnx_export() or len(x_int) <= self.chunk:
            y_int = self._adc_path(x_int)
        else:  # rows are independent: a bounded working set (not traced: export stays one)
            y_int = torch.cat([self._adc_path(x_int[lo:lo + self.chunk])
                               for lo in range(0, len(x_int), self.chunk)])
        y = y_int.float() * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.N), y_int

    def _adc_path(self, x_int: torch.Tensor) -> torch.Tensor:
        """Every (row tile, input cycle, column) partial sum through the ADC, then the
        flip recovery, shift-and-add and the digital corrections.

        Vectorised over row tiles, cycles and columns: the partial sums of all of them are
        one batched matmul [RT, C*V, rows] @ [rows, J], the ADC acts on that tensor in
        place, and the shift-and-add over cycles is one matmul with the plane weights. What
        follows the ADC is linear, so it is summed in this order (exact: every term is a
        dyadic rational far inside float64's 53 bits):
        acc[v, n] = sum_j colw[j, n] * sum_r (
              sign[r, j] * step[r, j] * sum_c plane_w[c] * code[r, c, v, j]
            + flipped[r, j] * cell_top * sum_c plane_w[c] * sum_k digit[r, c, v, k])
        with sign = -1 on a flipped column (P = cell_top * sum_k digit - ADC(P'))."""
        v = x_int.shape[0]
        u = x_int + self.zero
        lhs = self._digits(x_int.to(self.work))                 # [RT, C*V, rows]
        codes = self._codes(lhs @ self.stored_w)                 # [RT, C*V, J], in place
        rt, cycles = self.row_tiles, self.cycles
        shifted = (self.plane_w_work @ codes.reshape(rt, cycles, -1)).reshape(rt, v, -1)
        acc_j = (shifted.double() * self.signed_steps).sum(dim=0)            # [V, J]
        total = lhs.sum(dim=2).reshape(rt, cycles, v)           # sum_k digit, per cycle
        total = (self.plane_w_work @ total).double().reshape(rt, v, 1) * self.cell_top
        acc_j = acc_j + (total * self.flipped).sum(dim=0)
        acc = acc_j @ self.colw                                 # [V, N]
        if self.offset:
            acc = acc - self.offset * u.sum(dim=1, keepdim=True)
        return acc - self.zero * self.colsum

    def _codes(self, p: torch.Tensor) -> torch.Tensor:
        """The ADC codes clip(floor(P/step + 1/2), low, top) of partial sums p [RT, *, J],
        computed in p's storage."""
        return torch.clamp_(torch.floor_(p.div_(self.steps).add_(0.5)),
                            self.adc_low, self.adc_top)

    def partial_sums(self, x_int: torch.Tensor) -> Iterator[torch.Tensor]:
        """The analog partial sums of the stored levels of integer inputs x_int [V, K]
        float64, one row tile at a time ([C*V, J] float64 each): all tiles at once held
        9 GB for a VGG-8 convolution's 256 calibration vectors."""
        lhs = self._digits(x_int.double())
        for r in range(self.row_tiles):
            yield lhs[r] @ self.stored[r]

    def _digits(self, x_int: torch.Tensor) -> torch.Tensor:
        """The DAC digits [RT, C*V, rows] of integer inputs x_int [V, K], in x_int's dtype
        (exact: digits and inputs are small integers)."""
        v = x_int.shape[0]
        u = x_int + self.zero
        pad = self.row_tiles * self.rows - self.K
        drive = {"offset": [u], "bipolar": [x_int.abs()],
                 "sign_magnitude": [torch.clamp(x_int, min=0.0), torch.clamp(-x_int, min=0.0)]
                 }[self.encoding]
        if pad:
            drive = [torch.cat([d, torch.zeros(v, pad, dtype=d.dtype)], dim=1) for d in drive]
        div = self.digit_div.to(x_int.dtype)
        digits = torch.cat([torch.remainder(torch.floor(d.unsqueeze(0) / div),
                                            self.digit_base) for d in drive])
        if self.encoding == "bipolar":  # each row's pulses carry the sign of its input
            sign = torch.sign(x_int)
            if pad:
                sign = torch.cat([sign, torch.zeros(v, pad, dtype=sign.dtype)], dim=1)
            digits = digits * sign.unsqueeze(0)
        # [C, V, RT, rows] -> [RT, C*V, rows]
        return digits.reshape(self.cycles * v, self.row_tiles, self.rows).transpose(0, 1)


ADC_PATH_MEMORY_SHARE = 0.125
"""Share of the memory budget (`--max-memory`) one eager call of the bit-level ADC path may
hold (the emulator, onnxruntime and the other layers' data take the rest)."""
ADC_PATH_BYTES_PER_SUM = 24
"""Bytes that path holds per (row tile, input cycle, column) partial sum of a vector: the
sums, their codes and the shift-add, float64 at worst."""

FLOAT32_EXACT = 2**24
"""Integers below this are exact in float32, and so is any sum of them that stays below."""


def _float32_is_exact(peak: float, steps: np.ndarray, low: float, top: float,
                      plane_w: np.ndarray, drive_max: int, *, signed: bool) -> bool:
    """Whether the bit-level path in float32 gives exactly the float64 integers.

    Three things must hold: every partial sum (at most `peak`, the largest stored column
    sum times the largest digit; either sign for a signed drive) and every partial result
    of the matmul that forms it are integers below 2**24; so are the shift-added codes
    (at most max(|low|, top) * sum |plane_w|) and shift-added digit sums; and the ADC, run
    in float32 by `_codes` itself, gives the float64 codes clip(floor(P/step + 1/2)) for
    every integer P in the partial sums' range, at every step of the layer (enumerated:
    the range is small, a few hundred values on ISAAC)."""
    reach = float(np.abs(plane_w).sum())
    if max(peak, max(abs(low), top) * reach, drive_max * reach) >= FLOAT32_EXACT:
        return False
    distinct = np.unique(steps)
    lo = -int(peak) if signed else 0
    if distinct.size * (int(peak) - lo + 1) > FLOAT32_EXACT:
        return False
    p = np.arange(lo, int(peak) + 1, dtype=np.float64)[None, :]
    want = np.clip(np.floor(p / distinct[:, None] + 0.5), low, top)
    probe = _Codes(torch.from_numpy(distinct[:, None]).float(), low, top)
    got = probe(torch.from_numpy(np.repeat(p, distinct.size, axis=0)).float())
    return bool(np.array_equal(got.double().numpy(), want))


class _Codes:
    """CrossbarMatmul._codes on its own, for the enumeration in _float32_is_exact."""

    def __init__(self, steps: torch.Tensor, low: float, top: float) -> None:
        self.steps, self.adc_low, self.adc_top = steps, low, top

    __call__ = CrossbarMatmul._codes


def _slice_weights(q: np.ndarray, c: LayerChoice
                   ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Signed integers -> (cell levels [K, J], shift-add weights [J, N], offset Qw or 0,
    the weight slice of every column [J]). The column order is this module's own: any
    order gives the same sums."""
    qw = 2 ** (c.weight_bits - 1) - 1
    if c.mapping == "differential":
        mags, signs, offset = [np.maximum(q, 0), np.maximum(-q, 0)], [1.0, -1.0], 0.0
        slices = math.ceil((c.weight_bits - 1) / c.cell_bits)
    elif c.mapping == "offset":
        mags, signs, offset = [q + qw], [1.0], float(qw)
        slices = math.ceil(c.weight_bits / c.cell_bits)
    else:
        raise ReferenceError(f"layer {c.name}: unknown mapping {c.mapping!r}")
    cols, weights, which = [], [], []
    eye = np.eye(c.N)
    for m, sign in zip(mags, signs):
        for s in range(slices):
            cols.append((m >> (s * c.cell_bits)) & (2**c.cell_bits - 1))
            weights.append(sign * 2.0 ** (s * c.cell_bits) * eye)
            which.append(np.full(c.N, s))
    return (np.concatenate(cols, axis=1), np.concatenate(weights, axis=0), offset,
            np.concatenate(which))


# ---------------------------------------------------------------- the model's modules
class Recorder:
    """Every crossbar call of a reference run, in call order: (layer name, input, the
    reference's own output). With `forced` set (layer name -> the emulator's outputs, one
    array per call), each call hands the emulator's output on instead of its own, so the
    digital steps between crossbar layers are checked from the emulator's values and float
    differences cannot grow from layer to layer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.forced: dict[str, list[np.ndarray]] | None = None
        self._next: dict[str, int] = {}

    def reset(self) -> None:
        self.calls.clear()
        self._next = {}

    def __call__(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((name, x, y))
        if self.forced is None:
            return y
        k = self._next[name] = self._next.get(name, -1) + 1
        given = self.forced.get(name, [])
        if k >= len(given) or given[k].size != y.numel():
            return y  # the program calls this layer differently: the comparison shows it
        return torch.from_numpy(np.asarray(given[k], np.float32)).reshape(y.shape)


class ReferenceLinear(nn.Module):
    """nn.Linear on crossbars; records its calls when the owner asks."""

    def __init__(self, layer: CrossbarMatmul, taps: Recorder) -> None:
        super().__init__()
        self.layer, self._taps = layer, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.layer(x)
        return self._taps(self.layer.name, x, y)


class ReferenceConv(nn.Module):
    """A convolution (1-d or 2-d, any kernel, stride, padding, dilation; a patch embedding
    included) as one crossbar matmul per output position: torch's own unfold gives each
    position's receptive field in (channel, kernel offset) order, the order of the weight
    [D, C, *kernel] flattened."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, layer: CrossbarMatmul,
                 taps: Recorder) -> None:
        super().__init__()
        two = len(conv.kernel_size) == 2
        self.kernel = tuple(conv.kernel_size) if two else (1, conv.kernel_size[0])
        self.stride = tuple(conv.stride) if two else (1, conv.stride[0])
        self.padding = tuple(conv.padding) if two else (0, conv.padding[0])
        self.dilation = tuple(conv.dilation) if two else (1, conv.dilation[0])
        self.two, self.dim, self.layer, self._taps = two, conv.out_channels, layer, taps

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x2 = img if self.two else img.unsqueeze(2)
        cols = torch.nn.functional.unfold(x2, self.kernel, self.dilation, self.padding,
                                          self.stride)  # [B, C*K, P]
        x = cols.transpose(1, 2)
        y, _ = self.layer(x)
        y = self._taps(self.layer.name, x, y)
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
               zip(x2.shape[2:], self.kernel, self.stride, self.padding, self.dilation)]
        shape = out if self.two else out[1:]
        # back to the conv's [B, D, *out] so the model's own forward continues unchanged
        return y.transpose(1, 2).reshape(img.shape[0], self.dim, *shape)


class ReferenceLSTM(nn.Module):
    """A single-layer, unidirectional, batch-first nn.LSTM: one crossbar matmul of
    [x_t ; h_{t-1}] per step, PyTorch gate order i, f, g, o. The initial state is what
    the model calls it with (nn.LSTM's `hx`: a GraphModel's constant h0, c0 from the
    model file), else zero; never anything read from the program."""

    def __init__(self, layer: CrossbarMatmul, hidden: int, taps: Recorder) -> None:
        super().__init__()
        self.layer, self.hidden, self._taps = layer, hidden, taps

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        b, t = x.shape[0], x.shape[1]
        h = torch.zeros(b, self.hidden, dtype=x.dtype)
        c = torch.zeros(b, self.hidden, dtype=x.dtype)
        if hx is not None:  # [1, B, H] each, as nn.LSTM takes them
            h = h + hx[0].reshape(b, self.hidden).to(x.dtype)
            c = c + hx[1].reshape(b, self.hidden).to(x.dtype)
        outs = []
        for step in range(t):
            xh = torch.cat([x[:, step], h], dim=1)
            z, _ = self.layer(xh)
            z = self._taps(self.layer.name, xh, z)
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1), (h.unsqueeze(0), c.unsqueeze(0))


GRU_HIDDEN = ".hidden"
"""A GRU's second layer is named `<gru>.hidden` (docs/compiler.md, restated here)."""


class ReferenceGRU(nn.Module):
    """One direction of a GRU (farc.models.gru.GRU, batch-first), written from the ONNX GRU
    definition with the two crossbar layers of docs/compiler.md: `gates` is
    [x_t ; h_{t-1}] @ [[W_ir W_iz W_in] ; [W_hr W_hz 0]]^T + [b_ir+b_hr, b_iz+b_hz, b_in]
    (columns r, z, n_x), `hidden` is W_hn^T + b_hn reading r * h (linear_before_reset 0)
    or h (1). The initial state is what the model calls it with (a constant [H]), else 0."""

    def __init__(self, gates: CrossbarMatmul, hidden: CrossbarMatmul,
                 linear_before_reset: bool, taps: Recorder) -> None:
        super().__init__()
        self.gates, self.hidden, self._taps = gates, hidden, taps
        self.linear_before_reset = bool(linear_before_reset)
        self.size = hidden.N

    def _call(self, layer: CrossbarMatmul, x: torch.Tensor) -> torch.Tensor:
        y, _ = layer(x)
        return self._taps(layer.name, x, y)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.size, dtype=x.dtype)
        if h0 is not None:
            h = h + h0.reshape(1, self.size).to(x.dtype)
        outs = []
        for step in range(x.shape[1]):
            r, z, n_x = self._call(self.gates, torch.cat([x[:, step], h], dim=1)).chunk(3, 1)
            r, z = torch.sigmoid(r), torch.sigmoid(z)
            if self.linear_before_reset:
                n = torch.tanh(n_x + r * self._call(self.hidden, h))
            else:
                n = torch.tanh(n_x + self._call(self.hidden, r * h))
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, dim=1)


def _gru_layers(module: GRU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W [I+H, 3H], b [3H], W_hn^T [H, H], b_hn [H]) of a GRU's two crossbar layers."""
    k = module.hidden_size
    w_ih, w_hh, b_ih, b_hh = (t.detach().float() for t in (
        module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh))
    h_rows = torch.cat([w_hh[: 2 * k].T, torch.zeros(k, k)], dim=1)
    w = torch.cat([w_ih.T, h_rows], dim=0)
    b = torch.cat([b_ih[: 2 * k] + b_hh[: 2 * k], b_ih[2 * k :]])
    return w, b, w_hh[2 * k :].T, b_hh[2 * k :]


class Reference(nn.Module):
    """The model with its crossbar modules replaced. forward(image) -> logits; every
    crossbar call's (input, output) is in `calls` afterwards, in call order."""

    def __init__(self, model: nn.Module, choices: dict[str, LayerChoice]) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().float()
        self.recorder = Recorder()
        self.layers: dict[str, CrossbarMatmul] = {}
        _replace(self.model, choices, self)
        missing = sorted(set(choices) - set(self.layers))
        if missing:
            raise ReferenceError(f"the program has crossbar layers the checkpoint does not: "
                                 f"{', '.join(missing[:4])}")

    @property
    def calls(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        return self.recorder.calls

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.recorder.reset()
        return self.model(image)


def _replace(model: nn.Module, choices: dict[str, LayerChoice], ref: Reference) -> None:
    """Swap every module that a program layer names for its reference version."""
    for name, module in list(model.named_modules()):
        if name not in choices:
            continue
        c = choices[name]
        if isinstance(module, nn.Linear):
            new = ReferenceLinear(_matmul(ref, c, module.weight.T, module.bias), ref.recorder)
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            w = module.weight.reshape(module.out_channels, -1).T
            new = ReferenceConv(module, _matmul(ref, c, w, module.bias), ref.recorder)
        elif isinstance(module, nn.LSTM):
            if module.num_layers != 1 or module.bidirectional or not module.batch_first:
                raise ReferenceError(f"layer {name}: only single-layer, unidirectional, "
                                     "batch-first LSTMs have a reference")
            w = torch.cat([module.weight_ih_l0.T, module.weight_hh_l0.T], dim=0)
            b = module.bias_ih_l0 + module.bias_hh_l0
            new = ReferenceLSTM(_matmul(ref, c, w, b), module.hidden_size, ref.recorder)
        elif isinstance(module, GRU):
            if name + GRU_HIDDEN not in choices:
                raise ReferenceError(f"layer {name}: the program has no {name}{GRU_HIDDEN} "
                                     "layer for this GRU")
            w, b, w_hn, b_hn = _gru_layers(module)
            new = ReferenceGRU(_matmul(ref, c, w, b),
                               _matmul(ref, choices[name + GRU_HIDDEN], w_hn, b_hn),
                               module.linear_before_reset, ref.recorder)
        else:
            raise ReferenceError(f"layer {name}: no reference for a {type(module).__name__}")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)


def _matmul(ref: Reference, c: LayerChoice, w: torch.Tensor,
            b: torch.Tensor | None) -> CrossbarMatmul:
    layer = CrossbarMatmul(w.detach().cpu().numpy(),
                           None if b is None else b.detach().cpu().numpy(), c)
    ref.layers[c.name] = layer
    return layer


def build_reference(model: nn.Module, program: Any) -> Reference:
    """The reference of `program` built from `model` (the checkpoint it was compiled from)."""
    return Reference(model, program_choices(program))


# ---------------------------------------------------------------- ONNX
REF_OPSET = 17


class LayerBank(nn.Module):
    """Every crossbar layer of a reference side by side: forward(x_0, ..., x_L) ->
    (y_int_0, ..., y_int_L), for the per-layer integer check on the emulator's own inputs."""

    def __init__(self, ref: Reference) -> None:
        super().__init__()
        self.names = list(ref.layers)
        self.bank = nn.ModuleList(ref.layers[n] for n in self.names)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(layer(x)[1] for layer, x in zip(self.bank, xs))


def export_layer_bank(ref: Reference, path: Any) -> list[str]:
    """Write the LayerBank as ONNX: inputs "x.<layer>" [V, K] float32, outputs
    "y_int.<layer>" [V, N] float64 (V dynamic). Returns the layer names in order."""
    import warnings

    bank = LayerBank(ref)
    example = tuple(torch.zeros(2, layer.K) for layer in bank.bank)
    ins = [f"x.{n}" for n in bank.names]
    outs = [f"y_int.{n}" for n in bank.names]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(bank, example, str(path), dynamo=False, opset_version=REF_OPSET,
                          input_names=ins, output_names=outs,
                          dynamic_axes={n: {0: "vectors"} for n in ins + outs},
                          do_constant_folding=False)
    return bank.names
