"""Import a DeiT or FAR model into a Relax IRModule, one node per LSTM.

`torch.export` traces the model with every LSTM (each head and direction) replaced by the
custom op `farc::lstm`, so neither export nor import unrolls time. Custom converters then
map three ops to Relax in the form the passes expect:

- `farc::lstm` -> `R.call_dps_packed("farc.lstm", (x, W_ih, W_hh, b_ih, b_hh, reverse))`:
  one recurrence node, weights as visible constants (PyTorch layout, gates i, f, g, o),
  `reverse` a `R.prim_value` flag (1 = the backward direction: the LSTM reads the sequence
  from its end, and its outputs are written back in the original time order); an LSTM
  with a constant initial state (a GraphModel from an ONNX initial_h / initial_c) adds
  two fields, `h0, c0` [H] constants, after `reverse`;
- `farc::gru` (a GraphModel's `farc.models.gru.GRU`) -> `R.call_dps_packed("farc.gru",
  (x, W_ih, W_hh, b_ih, b_hh, reverse, linear_before_reset))` likewise (gates r, z, n),
  plus one field `h0` [H] for a constant initial state;
- `aten.linear` -> `R.matmul(x, W^T) + b` with `W^T` as a `[K, N]` constant;
- `aten.conv2d` with stride == kernel (the patch embedding) -> patches `[B, P, C*kh*kw]`
  `@ W [C*kh*kw, D] + b`, reshaped back to the conv's `[B, D, Hp, Wp]`;
- any other `aten.conv1d` / `aten.conv2d` (kernel, stride, padding, dilation; one group) ->
  `R.call_dps_packed("farc.im2col", ...)` gathering the patches `[B, P, C*prod(kernel)]`
  (one node whatever the image size), the same matmul (kind conv), reshaped back to
  `[B, D, *out]`.

Every weight and bias constant carries its parameter name in its span
(`SourceName("<kind>:<layer>")`, kind one of linear, patch_embed, conv, lstm, classifier), which
survives the Relax passes and names the crossbar layers, the calibration statistics and the
tile program. The batch is exported as 1; the tile program treats axis 0 as the batch."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from farc.errors import PassError
from farc.models.graph import per_axis
from farc.passes._crossbar_ir import GRU_EXTERN, IM2COL_EXTERN, LSTM_EXTERN, named_const
from farc.windows import window_out


@torch.library.custom_op("farc::lstm", mutates_args=())
def lstm_op(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
            b_hh: torch.Tensor, reverse: bool, h0: torch.Tensor | None = None,
            c0: torch.Tensor | None = None) -> torch.Tensor:
    """One single-layer LSTM over x [B, T, I] -> h [B, T, H], from the initial state
    h0, c0 [H] (shared by every batch row; omitted: zero, the form FAR models use).
    `reverse` runs it from the last step back; outputs stay in the original time order."""
    hidden = w_hh.shape[1]
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    if h0 is not None:
        h, c = h + h0, c + c0
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    out = x.new_zeros(x.shape[0], x.shape[1], hidden)
    for t in steps:
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out[:, t] = h
    return out


@lstm_op.register_fake
def _lstm_fake(x, w_ih, w_hh, b_ih, b_hh, reverse, h0=None, c0=None):
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


@torch.library.custom_op("farc::gru", mutates_args=())
def gru_op(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
           b_hh: torch.Tensor, reverse: bool, linear_before_reset: bool,
           h0: torch.Tensor | None = None) -> torch.Tensor:
    """One single-layer GRU over x [B, T, I] -> h [B, T, H] (farc.models.gru), from h0 [H]
    (shared by every batch row; omitted: zero); `reverse` as for farc::lstm."""
    from farc.models.gru import gru_sequence

    if reverse:
        return gru_sequence(x.flip(1), w_ih, w_hh, b_ih, b_hh, linear_before_reset,
                            h0).flip(1)
    return gru_sequence(x, w_ih, w_hh, b_ih, b_hh, linear_before_reset, h0)


@gru_op.register_fake
def _gru_fake(x, w_ih, w_hh, b_ih, b_hh, reverse, linear_before_reset, h0=None):
    return x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1])


@dataclass(frozen=True)
class ImportedModel:
    """The Relax module plus what the later stages need to know about its interface."""

    mod: tvm.IRModule
    input_shape: tuple[int, ...]
    """Shape of the image input, batch first (batch 1 as exported)."""
    output_shape: tuple[int, ...]


def import_model(model: nn.Module) -> ImportedModel:
    """Export `model` (DeiT, FAR or a GraphModel; eval mode) and import it into Relax.

    Parameters
    ----------
    model : DeiT or FAR (anything with `.cfg` holding a DeiTConfig or a FARConfig), or a
        farc.models.graph.GraphModel (a user's .pt2 or ONNX model)

    Returns
    -------
    ImportedModel with `mod["main"](x: [1, *input]) -> outputs`."""
    from tvm.relax.frontend.torch import from_exported_program

    from farc.models.graph import GraphModel

    model = model.eval()
    if isinstance(model, GraphModel):
        x = torch.zeros(model.input_shape)
        routed = model.lstms_as_custom_op()
        classifiers = model.classifier_paths()
    else:
        cfg = getattr(model.cfg, "deit", model.cfg)
        x = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
        routed = _lstms_as_custom_op(model)
        classifiers = {"head"}
    with torch.no_grad(), routed:
        ep = torch.export.export(model, (x,))
    names = _param_names(ep)
    convert = {
        "lstm.default": lambda node, imp: _convert_lstm(node, imp, names, ep),
        "gru.default": lambda node, imp: _convert_gru(node, imp, names, ep),
        "linear.default": lambda node, imp: _convert_linear(node, imp, names, ep,
                                                            classifiers),
        "conv2d.default": lambda node, imp: _convert_conv(node, imp, names, ep),
        "conv1d.default": lambda node, imp: _convert_conv(node, imp, names, ep),
        "amax.default": _convert_amax,
    }
    mod = from_exported_program(ep, custom_convert_map=convert, run_ep_decomposition=False)
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    out = mod["main"].ret_ty
    shape = tuple(int(s) for s in out.shape) if hasattr(out, "shape") else ()
    return ImportedModel(mod, tuple(x.shape), shape)


# ---- export-time view of the model: LSTMs as farc::lstm ----

@contextlib.contextmanager
def _lstms_as_custom_op(model: nn.Module) -> Iterator[None]:
    """Temporarily route every FAR mixer's LSTMs through `farc::lstm`."""
    from farc.models.far import FARMixer

    mixers = [m for m in model.modules() if isinstance(m, FARMixer)]
    for m in mixers:
        m.heads_out = types.MethodType(_heads_out_export, m)
    try:
        yield
    finally:
        for m in mixers:
            del m.heads_out


def _heads_out_export(self, x: torch.Tensor) -> torch.Tensor:
    """FARMixer.heads_out with each LSTM as one `farc::lstm` call (same maths)."""
    x = self.pre_proj(x)
    d = self.head_dim
    outs = []
    for h in range(self.num_heads):
        xh = x[:, :, h * d : (h + 1) * d]
        fwd = _call_lstm(self.lstm_fwd[h], xh, reverse=False)
        bwd = _call_lstm(self.lstm_bwd[h], xh, reverse=True)
        outs.append(self.head_proj[h](torch.cat([fwd, bwd], dim=-1)))
    return torch.stack(outs, dim=2)


def _call_lstm(lstm: nn.LSTM, x: torch.Tensor, reverse: bool) -> torch.Tensor:
    if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias or lstm.proj_size:
        raise PassError("only single-layer, unidirectional LSTMs with bias can be compiled")
    return lstm_op(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                   lstm.bias_hh_l0, reverse)


# ---- converters ----

def _param_names(ep: torch.export.ExportedProgram) -> dict[str, str]:
    """Placeholder name in the exported graph -> parameter name in the state dict."""
    kinds = (torch.export.graph_signature.InputKind.PARAMETER,
             torch.export.graph_signature.InputKind.BUFFER)
    return {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.kind in kinds}


def _param(node, names: dict[str, str], ep) -> tuple[str, np.ndarray]:
    """(parameter name, float32 value) of an fx argument that must be a model parameter."""
    if not hasattr(node, "name") or node.name not in names:
        raise PassError(f"weight {node} is computed, not a model parameter; "
                        "only constant weights can be mapped to crossbars")
    name = names[node.name]
    return name, ep.state_dict[name].detach().float().numpy()


def _layer_of(param: str) -> str:
    return param.rsplit(".", 1)[0]


def _convert_linear(node, imp, names, ep, classifiers: set[str]) -> relax.Var:
    x = imp.env[node.args[0]]
    wname, w = _param(node.args[1], names, ep)
    layer = _layer_of(wname)
    kind = "classifier" if layer in classifiers else "linear"
    bb = imp.block_builder
    y = bb.emit(relax.op.matmul(x, named_const(w.T, kind, layer)))
    if len(node.args) > 2 and node.args[2] is not None:
        _, b = _param(node.args[2], names, ep)
        y = bb.emit(relax.op.add(y, named_const(b, kind, layer + ".bias")))
    return y


def _convert_amax(node, imp) -> relax.Var:
    """torch.amax(x, dims, keepdim): Relax's stock importer has no converter for it."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    x = imp.env[node.args[0]]
    return imp.block_builder.emit(relax.op.max(x, [int(d) for d in dims] or None, bool(keep)))


def _convert_conv(node, imp, names, ep) -> relax.Var:
    """A convolution as one crossbar matmul over its patches: a patch embedding (2-d,
    stride == kernel, no padding, the image a whole number of patches) by reshapes, any
    other by the `farc.im2col` gather."""
    args = list(node.args) + [None] * (7 - len(node.args))
    x_node, w_node, b_node, stride, padding, dilation, groups = args[:7]
    wname, w = _param(w_node, names, ep)
    d, c, *kernel = w.shape
    spatial = len(kernel)
    stride, padding, dilation = (per_axis(v, spatial, dflt) for v, dflt in
                                 ((stride, 1), (padding, 0), (dilation, 1)))
    layer = _layer_of(wname)
    if (groups or 1) != 1:
        raise PassError(f"{layer}: only convolutions of one group can be compiled")
    x = imp.env[x_node]
    b_, _, *size = (int(s) for s in x.ty.shape)
    bb = imp.block_builder
    patch = spatial == 2 and stride == kernel and not any(padding) and dilation == [1, 1] \
        and all(n % k == 0 for n, k in zip(size, kernel))
    if patch:
        kh, kw = kernel
        out = [size[0] // kh, size[1] // kw]
        p = bb.emit(relax.op.reshape(x, (b_, c, out[0], kh, out[1], kw)))
        p = bb.emit(relax.op.permute_dims(p, [0, 2, 4, 1, 3, 5]))
        p = bb.emit(relax.op.reshape(p, (b_, out[0] * out[1], c * kh * kw)))
        kind = "patch_embed"
    else:
        out = [window_out(n, k, s, 2 * pd, dl)
               for n, k, s, pd, dl in zip(size, kernel, stride, padding, dilation)]
        rows = c * int(np.prod(kernel))
        prims = [relax.prim_value(int(v)) for v in (spatial, *kernel, *stride, *padding,
                                                    *dilation)]
        p = bb.emit(relax.call_dps_packed(
            IM2COL_EXTERN, relax.Tuple([x, *prims]),
            relax.TensorType((b_, int(np.prod(out)), rows), "float32")))
        kind = "conv"
    y = bb.emit(relax.op.matmul(p, named_const(w.reshape(d, -1).T, kind, layer)))
    if b_node is not None:
        _, b = _param(b_node, names, ep)
        y = bb.emit(relax.op.add(y, named_const(b, kind, layer + ".bias")))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1]))
    return bb.emit(relax.op.reshape(y, (b_, d, *out)))


def _convert_lstm(node, imp, names, ep) -> relax.Var:
    x = imp.env[node.args[0]]
    params = [_param(n, names, ep) for n in node.args[1:5]]
    layer = _layer_of(params[0][0])
    reverse = bool(node.args[5])
    consts = [named_const(v, "lstm", n) for n, v in params]
    b_, t, _ = (int(s) for s in x.ty.shape)
    hidden = params[1][1].shape[1]
    init = [n for n in node.args[6:8] if n is not None]
    if len(init) == 1:
        raise PassError(f"{layer}: an LSTM initial state needs both h0 and c0")
    # A constant initial state: two more fields, h0 and c0 [H] (plain constants, not crossbar
    # weights). Absent for the zero state, so those programs are unchanged.
    state = [relax.const(np.ascontiguousarray(_param(n, names, ep)[1], np.float32))
             for n in init]
    out = relax.TensorType((b_, t, hidden), "float32")
    call = relax.call_dps_packed(
        LSTM_EXTERN, relax.Tuple([x, *consts, relax.prim_value(int(reverse)), *state]), out)
    return imp.block_builder.emit(call, name_hint=layer.replace(".", "_"))


def _convert_gru(node, imp, names, ep) -> relax.Var:
    """farc::gru -> one `farc.gru` recurrence node (weights named `gru:<layer>.*`)."""
    x = imp.env[node.args[0]]
    params = [_param(n, names, ep) for n in node.args[1:5]]
    layer = _layer_of(params[0][0])
    reverse, lbr = bool(node.args[5]), bool(node.args[6])
    consts = [named_const(v, "gru", n) for n, v in params]
    b_, t, _ = (int(s) for s in x.ty.shape)
    hidden = params[1][1].shape[1]
    init = [relax.const(np.ascontiguousarray(_param(n, names, ep)[1], np.float32))
            for n in node.args[7:8] if n is not None]
    out = relax.TensorType((b_, t, hidden), "float32")
    call = relax.call_dps_packed(
        GRU_EXTERN, relax.Tuple([x, *consts, relax.prim_value(int(reverse)),
                                 relax.prim_value(int(lbr)), *init]), out)
    return imp.block_builder.emit(call, name_hint=layer.replace(".", "_"))
