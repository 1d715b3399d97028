"""The torch twin of the crossbar numerics (docs/numerics.md), for training through them.

`farc finetune` (farc/far/finetune.py) trains a FAR *through* what the compiled program does
to every crossbar matmul `y = x @ W + b`. This module is a declared twin of the emulator, as
aihwkit's torch tile is of its simulator:

- the WEIGHT side is the runtime's own numpy, run once per programming (`LayerNumerics.prepare`,
  i.e. once per forward with fresh weights, one device draw) and moved to the torch device:
  `runtime.builder.pack_layer` (per-column quantization, signed mapping, bit slices, dense
  column packing, row x column tiles), `runtime.crossbar.prepare_layer` (the levels the
  crossbars hold with ISAAC's flip encoding, the flip mask, rows in use, per-column ADC steps,
  shift-add weights of columns and DAC cycles, column sums, the lossless rule) and
  `runtime.noise.program_layer` (the chip: programming variation, on/off ratio, drift and its
  compensation, stuck-at cells; the emulator's very function on the emulator's very array);
- the model's own forward is the graph: its crossbar modules are swapped for ones that
  compute through the numerics (`swap_crossbars`, as check/reference.py swaps its
  reference modules in), so FAR's forward is not restated here;
- only the INPUT side is torch arithmetic: input quantization, DAC digits
  (`numerics.encoding_rule`), partial sums, read noise, the ADC rule, flip recovery,
  shift-and-add, offset and zero-point corrections, rescale. Its constants (Qx, top codes,
  phase cycles, plane weights) come from `farc.runtime.numerics`.

tests/test_finetune_numerics.py checks that, noise-free, it gives the emulator's integers bit
for bit on a compiled digits FAR (lossless and lossy ADC programs alike).

Gradients are straight-through: the forward value is the hardware's, the backward is that of
`(x_q * s_x) @ (q * s_w) + b` with the rounding treated as identity (and no gradient to inputs
that the input quantizer clips). q and s_w are the runtime's; the gradient reaches the float W.
The bit-level path runs without autograd, so the backward costs one float matmul per layer
whatever the ADC or noise.

Why float64 for everything after the partial sums: partial sums and ADC outputs are integers
(or dyadic rationals for uniform steps), exact in float64, so the sums equal the emulator's
exactly; the partial sums themselves are exact in float32 below F32_EXACT (checked)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from farc.errors import ConfigError
from farc.runtime.builder import pack_layer
from farc.runtime.crossbar import PreparedLayer, prepare_layer
from farc.runtime.noise import program_layer
from farc.runtime.numerics import (
    F32_EXACT,
    XbarParams,
    adc_codes,
    encoding_rule,
    max_code,
    phase_cycles,
    qmax,
)
from farc.runtime.schema import DeviceSection


@dataclass
class LayerNumerics:
    """The choices one crossbar layer is executed with: its parameters, input scale and ADC
    steps (as a program layer records them: one per row tile, or per row tile one per
    weight slice)."""

    name: str
    p: XbarParams
    in_scale: float
    adc_step: list

    @classmethod
    def from_program_layer(cls, layer: dict[str, Any]) -> LayerNumerics:
        return cls(str(layer["name"]), XbarParams.from_layer(layer), float(layer["in_scale"]),
                   list(layer["adc_step"]))

    def prepare(self, W: torch.Tensor, bias: torch.Tensor | None,
                noise: DeviceSection | None = None,
                gen: torch.Generator | None = None) -> PreparedXbar:
        """Program W [K, N] onto crossbars with the runtime's weight side (and, with `noise`,
        draw one device instance). Apply to inputs with `mvm`."""
        return PreparedXbar(self, W, bias, noise if noise is not None and noise.enabled
                            else None, gen)

    def pack(self, W: np.ndarray) -> tuple[PreparedLayer, np.ndarray]:
        """The runtime's weight side on W [K, N]: the layer the emulator would prepare from
        the program `farc compile` makes of W with these choices, and the weight scales s_w.
        The ADC steps are this layer's own (the range pack_layer is handed only fills the
        field they replace)."""
        p = self.p
        rt = p.geometry(*W.shape).row_tiles
        if len(self.adc_step) != rt:
            raise ConfigError(f"layer {self.name}: {len(self.adc_step)} ADC steps for "
                              f"{rt} row tiles")
        layer, arrays = pack_layer(W, None, self.in_scale, p, name=self.name, prefix="w",
                                   adc_pmax=p.pmax)
        layer["adc_step"] = self.adc_step
        return prepare_layer(0, layer, arrays), arrays["w.w_scale"]


def quantize_input_t(x: torch.Tensor, in_scale: float, input_bits: int) -> torch.Tensor:
    """numerics.quantize_input on a tensor: clip(rint(x / s_x), -Qx, Qx), divided in float32."""
    qx = float(qmax(input_bits))
    s = torch.tensor(in_scale, dtype=torch.float32, device=x.device)
    return torch.clamp(torch.round(x.float() / s), -qx, qx)


def _digits(d: torch.Tensor, cycles: int, dac_bits: int) -> torch.Tensor:
    """[V, K] integers (float) -> [cycles, V, K] float32 digits base 2**dac_bits of |d|,
    LSB first, each with the sign of d (numerics.input_planes: a phase value is
    non-negative, or signed for bipolar pulses)."""
    shifts = torch.arange(cycles, device=d.device, dtype=torch.int32)[:, None, None] * dac_bits
    mag = (d.abs().to(torch.int32).unsqueeze(0) >> shifts) & max_code(dac_bits)
    return (torch.sign(d).unsqueeze(0) * mag).float()


def _device_rng(gen: torch.Generator | None) -> np.random.Generator:
    """A numpy generator for one device draw, seeded from `gen` (the global torch RNG when
    None): every chip is reproducible from the torch seed."""
    dev = gen.device if gen is not None else "cpu"
    seed = torch.randint(2**62, (1,), generator=gen, device=dev)
    return np.random.default_rng(int(seed))


class PreparedXbar:
    """One layer programmed onto crossbars (one device instance when noisy): the runtime's
    prepared layer, its arrays moved to W's device."""

    def __init__(self, ln: LayerNumerics, W: torch.Tensor, bias: torch.Tensor | None,
                 noise: DeviceSection | None, gen: torch.Generator | None) -> None:
        p = ln.p
        if p.pmax >= F32_EXACT:
            raise ConfigError(f"layer {ln.name}: partial sums up to {p.pmax} are not exact "
                              "in float32")
        K, N = W.shape
        self.ln, self.p, self.K, self.N = ln, p, K, N
        self.W, self.bias, self.noise, self.gen = W, bias, noise, gen
        dev = W.device
        pl, s_w = ln.pack(W.detach().to("cpu", torch.float64).numpy())

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        self.s_x = float(np.float32(ln.in_scale))
        self.qx = float(p.qx)
        self.zero = float(p.in_zero)
        self.offset_qw = float(pl.offset_qw)
        self.rt = pl.row_tiles
        # driven rows (one row tile: only its K rows; the others see 0 V and add nothing)
        self.rows = int(pl.used_rows.max())
        self.q = t(pl.q.astype(np.float64))                            # [K, N]
        self.s_w = t(s_w)
        self.scale = t(pl.scale)                                       # s_x * s_w, float32
        self.colsum = t(pl.colsum.astype(np.float64))
        self.colw = t(pl.colw)                                         # [N, slices*signs]
        self.pw = t(pl.cycle_w)                                        # [cycles]
        self.stored = t(pl.codes[:, :self.rows]).float()               # [RT, rows, J]
        self.flip = None if pl.flip is None else t(pl.flip)            # [RT, J]
        self.cell_top = float(max_code(p.crossbar.cell_bits))
        self.pow2_tile = pl.col_steps is None   # one power-of-two step per row tile
        self.steps = t(pl.steps.astype(np.float64) if self.pow2_tile else pl.col_steps)
        self.lossless = pl.lossless
        self.g = None
        if noise is not None:  # the emulator's programming, on the emulator's levels
            chip = program_layer(pl.levels, p.crossbar.cell_bits, noise, _device_rng(gen))
            self.g = t(chip.g[:, :self.rows])
        self._w_ste: torch.Tensor | None = None

    # ---- input side
    def mvm(self, x: torch.Tensor) -> torch.Tensor:
        """y [..., N] float32: the hardware's value forward, straight-through gradients."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.K)
        x_int = quantize_input_t(flat, self.s_x, self.p.quant.input_bits)
        with torch.no_grad():
            y_int = self.integers(x_int)
            y_hw = y_int.float() * self.scale
            if self.bias is not None:
                y_hw = y_hw + self.bias.detach().float()
        if not (torch.is_grad_enabled() and (flat.requires_grad or self.W.requires_grad)):
            return y_hw.reshape(*lead, self.N)
        y_ste = self._ste(flat, x_int)
        return (y_ste + (y_hw - y_ste).detach()).reshape(*lead, self.N)

    def _ste(self, flat: torch.Tensor, x_int: torch.Tensor) -> torch.Tensor:
        """(x_q * s_x) @ (q * s_w) + b with identity gradients through both roundings
        (zero for inputs beyond the quantizer's range)."""
        inside = (flat.detach().abs() <= self.qx * self.s_x).to(flat.dtype)
        x_q = (x_int * self.s_x).to(flat.dtype)
        x_ste = x_q + (flat - flat.detach()) * inside
        if self._w_ste is None:  # once per programming, not per LSTM step
            w_q = (self.q * self.s_w.double()).to(self.W.dtype)
            self._w_ste = w_q + (self.W - self.W.detach())
        y = x_ste @ self._w_ste
        return y if self.bias is None else y + self.bias

    def integers(self, x_int: torch.Tensor) -> torch.Tensor:
        """y_int [V, N] float64 from input integers [V, K]: `x_int @ q` where the ADC is
        provably lossless and the devices ideal (the emulator's fast path), else every
        (row tile, cycle, column) partial sum through the ADC."""
        if self.g is None and self.lossless:
            return x_int.double() @ self.q
        return self._bitlevel(x_int)

    def _planes(self, x_int: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(DAC digits [RT, C*V, rows] float32, the driven values u [V, K] float64)."""
        p = self.p
        v = x_int.shape[0]
        q = p.quant
        per = phase_cycles(q.input_bits, p.dac.bits, q.input_encoding)
        planes = torch.cat([_digits(v, per, p.dac.bits)               # [C, V, K]
                            for v in encoding_rule(q.input_encoding).phase_values(
                                x_int, q.input_bits)])
        u = x_int + self.zero
        pad = self.rt * self.rows - self.K
        if pad:
            planes = torch.nn.functional.pad(planes, (0, pad))
        lhs = planes.reshape(p.cycles * v, self.rt, self.rows).transpose(0, 1)
        return lhs, u

    def _bitlevel(self, x_int: torch.Tensor) -> torch.Tensor:
        """The definition (runtime/crossbar.py mvm_bitlevel): ADC per partial sum, flip
        recovery, shift-add over cycles and slices, digital corrections."""
        p = self.p
        v = x_int.shape[0]
        lhs, u = self._planes(x_int)                                   # [RT, C*V, rows]
        cond = self.stored if self.g is None else self.g
        part = torch.bmm(lhs, cond)                                    # [RT, C*V, J]
        if self.noise is not None and self.noise.read_sigma > 0:
            sigma = self.noise.read_sigma * self.cell_top
            sumsq = (lhs * lhs).sum(dim=2, keepdim=True)
            part += (sigma * torch.sqrt(sumsq)) * torch.randn(
                part.shape, generator=self.gen, device=part.device)
        low, top = (float(c) for c in adc_codes(p.adc.bits, p.adc_signed))
        if self.pow2_tile:  # one power-of-two step per row tile: exact in float32,
            step = self.steps                                           # applied after the sums
            if bool(torch.any(step != 1)):
                part.div_(step[:, None, None].float())
            code = part.add_(0.5).floor_().clamp_(low, top)
        else:  # per-column steps divide in float64, as the emulator does
            steps = self.steps[:, None, :]
            code = torch.clamp(torch.floor(part.double() / steps + 0.5), low, top) * steps
            step = None
        # shift-add over cycles per row tile: [RT, C, V, J] -> [RT, V, J]
        per_col = torch.tensordot(code.reshape(self.rt, p.cycles, v, -1),
                                  self.pw.to(code.dtype), dims=([1], [0])).double()
        if step is not None:
            per_col = per_col * step[:, None, None]
        if self.flip is not None:  # P = top * sum_k u_c[k] - ADC(P'), shift-added: linear
            drive = torch.tensordot(lhs.reshape(self.rt, p.cycles, v, -1).sum(dim=3).double(),
                                    self.pw, dims=([1], [0]))           # [RT, V]
            f = self.flip[:, None, :].double()
            per_col = per_col * (1.0 - 2.0 * f) + f * (drive[:, :, None] * self.cell_top)
        per_col = per_col[0] if self.rt == 1 else per_col.sum(dim=0)   # [V, J]
        acc = torch.einsum("vnm,nm->vn", per_col.reshape(v, self.N, -1), self.colw)
        return self._corrected(acc, u)

    def _corrected(self, acc: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The digital corrections: the offset mapping's Qw * sum(u), the zero point's
        z * colsum (runtime/crossbar.py)."""
        if self.offset_qw:
            acc = acc - self.offset_qw * u.sum(dim=1, keepdim=True)
        return acc - self.zero * self.colsum


# ---------------------------------------------------------------- a FAR through crossbars
Matmul = Callable[[str, torch.Tensor, torch.Tensor | None], Callable[[torch.Tensor],
                                                                     torch.Tensor]]
"""(layer name, W [K, N], bias [N]) -> x [..., K] -> y [..., N]: how one layer is applied."""


def crossbar_weights(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One crossbar layer's (W [K, N], bias [N]) as the compiler sees it. Linear: weight^T;
    the patch conv: its kernel flattened in (c, kh, kw) order; an LSTM: [W_ih^T ; W_hh^T]
    with the two biases summed (gate order i, f, g, o), as passes/legalize_lstm.py stacks
    them."""
    if isinstance(mod, nn.Linear):
        return mod.weight.t(), mod.bias
    if isinstance(mod, nn.Conv2d):
        return mod.weight.reshape(mod.weight.shape[0], -1).t(), mod.bias
    if isinstance(mod, nn.LSTM):
        return (torch.cat([mod.weight_ih_l0.t(), mod.weight_hh_l0.t()]),
                mod.bias_ih_l0 + mod.bias_hh_l0)
    raise ConfigError(f"{type(mod).__name__} is not a crossbar layer")


CROSSBAR_MODULES = (nn.Linear, nn.Conv2d, nn.LSTM)


def layer_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Every crossbar layer of a model: name -> (W [K, N], bias [N])."""
    return {name: crossbar_weights(mod) for name, mod in model.named_modules()
            if isinstance(mod, CROSSBAR_MODULES)}


# ---------------------------------------------------------------- the module swap
class CrossbarLinear(nn.Linear):
    """A Linear computed through a `Matmul` (see `swap_crossbars`)."""

    layer_name: str
    matmul: Matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(self.layer_name, *crossbar_weights(self))(x)


class CrossbarPatchConv(nn.Conv2d):
    """The patch-embedding conv (stride = kernel, no padding) as the program runs it: the
    image cut into patches flattened in (c, kh, kw) order, one crossbar matmul per patch."""

    layer_name: str
    matmul: Matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        patches = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 2, 4, 1, 3, 5)
        tok = self.matmul(self.layer_name, *crossbar_weights(self))(
            patches.reshape(b, (h // kh) * (w // kw), c * kh * kw))
        return tok.transpose(1, 2).reshape(b, -1, h // kh, w // kw)


class CrossbarLSTM(nn.LSTM):
    """A one-layer, batch-first, unidirectional LSTM from zero state, step by step on
    `[x_t ; h_{t-1}]` as the compiled scan runs it: one crossbar matmul per step, the gate
    math in float32."""

    layer_name: str
    matmul: Matmul

    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:  # type: ignore[override]
        if hx is not None:
            raise ConfigError(f"{self.layer_name}: the crossbar twin runs LSTMs from zero state")
        cell = self.matmul(self.layer_name, *crossbar_weights(self))
        b, steps, _ = x.shape
        h = x.new_zeros(b, self.hidden_size)
        c = torch.zeros_like(h)
        out = []
        for k in range(steps):
            i, f, g, o = cell(torch.cat([x[:, k], h], dim=-1)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1), (h.unsqueeze(0), c.unsqueeze(0))


SWAPS: dict[type, type] = {nn.Linear: CrossbarLinear, nn.Conv2d: CrossbarPatchConv,
                           nn.LSTM: CrossbarLSTM}


def swap_crossbars(model: nn.Module, matmul: Matmul) -> nn.Module:
    """In place: every crossbar module of `model` (Linear, the patch conv, LSTM) computes
    through `matmul(name, W, b)`, as check/reference.py swaps its reference modules in; the
    model's own forward (tokens, norms, GELU, gate math) is the graph, so nothing of FAR's
    forward is restated here. The class changes, the parameters stay: the state dict is
    the model's. Returns `model`."""
    for name, mod in model.named_modules():
        cls = SWAPS.get(type(mod), type(mod) if type(mod) in SWAPS.values() else None)
        if cls is None:
            continue
        if isinstance(mod, nn.Conv2d) and (mod.stride != mod.kernel_size or
                                           any(mod.padding) or mod.groups != 1):
            raise ConfigError(f"{name}: only patch convolutions (stride = kernel, no padding) "
                              "run on the crossbar twin")
        if isinstance(mod, nn.LSTM) and (mod.num_layers != 1 or mod.bidirectional or
                                         not mod.batch_first):
            raise ConfigError(f"{name}: the crossbar twin runs one-layer, batch-first, "
                              "unidirectional LSTMs (FAR's)")
        mod.__class__ = cls
        mod.layer_name = name
        mod.matmul = matmul
    return model


@dataclass
class CrossbarNumerics:
    """Every layer's numerics plus the device model: the `Matmul` of `swap_crossbars`.
    Each call of `matmul` programs the layer afresh (a new device draw with noise); one
    forward is one chip instance. With `fixed`, a layer already in `prepared` is reused:
    one chip for many forwards (clear `prepared` for a new one)."""

    layers: dict[str, LayerNumerics]
    noise: DeviceSection | None = None
    gen: torch.Generator | None = None
    prepared: dict[str, PreparedXbar] = field(default_factory=dict)
    fixed: bool = False

    @classmethod
    def from_program(cls, program: Any, noise: DeviceSection | None = None,
                     gen: torch.Generator | None = None) -> CrossbarNumerics:
        return cls({L["name"]: LayerNumerics.from_program_layer(L) for L in program.layers},
                   noise, gen)

    def matmul(self, name: str, W: torch.Tensor, bias: torch.Tensor | None
               ) -> Callable[[torch.Tensor], torch.Tensor]:
        if name not in self.layers:
            raise ConfigError(f"no crossbar numerics for layer {name!r}")
        if self.fixed and name in self.prepared:
            return self.prepared[name].mvm
        prep = self.layers[name].prepare(W, bias, self.noise, self.gen)
        self.prepared[name] = prep
        return prep.mvm
