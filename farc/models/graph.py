"""`GraphModel`: a user's model (a torch.export program or an ONNX file) rebuilt from farc's
own modules, so that every later stage treats it like the built-in DeiT/FAR models.

Why a rebuilt model rather than the user's graph: calibration hooks, the compiler's importer
and verify's reference all find crossbar layers as *modules by path* (nn.Linear, the
nn.Conv1d/nn.Conv2d, single-direction batch-first nn.LSTM). A `GraphModel` holds
exactly those, at paths named after the user's modules (.pt2) or nodes (ONNX), plus a flat
list of digital steps between them, interpreted by `forward`. The user's file is read as
data and never executed (docs/byom.md, trust model).

Layout rule: every value is stored batch-first (axis 0 = batch), as the tile program wants.
A front end whose tensors put the batch elsewhere (ONNX LSTM layout 0, a time-major
`nn.LSTM`) speaks through `GraphBuilder`, which keeps each value's logical axis order as a
permutation of the stored one and only emits a permute when a reshape needs the data in
logical order. A multi-layer or bidirectional LSTM becomes one unidirectional LSTM module
per layer and direction (`<path>.l<k>` and `<path>.l<k>_reverse`); the reverse one reads
the sequence flipped (and `farc::lstm` with reverse=1 when exported for the compiler).
An `lstm` node reads x, or x and two `const` values: a constant initial h and c [hidden],
the same for every batch row (ONNX initial_h / initial_c; absent = zero).
A GRU likewise becomes one `farc.models.gru.GRU` per layer and direction (a `gru` node,
x or x and a constant initial h [hidden]; `farc::gru` when exported for the compiler).

Node ops (stored, batch-first semantics): input, const, linear, conv, lstm, gru, relu, gelu,
sigmoid, tanh, softmax, layer_norm, add, sub, mul, div, matmul, reshape, permute, cat, slice,
select, and the digital ops of `DIGITAL` (pool, reduce, pad, log_softmax, clip, leaky_relu,
hardsigmoid, hardswish)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from farc.errors import ConfigError
from farc.models.gru import GRU
from farc.models.refusal import UnsupportedModelError
from farc.windows import window_out

__all__ = ["GraphBuilder", "GraphModel", "Node", "UnsupportedModelError", "Val", "as_val"]


@dataclass(frozen=True)
class Node:
    """One step of a GraphModel: `op` on the values named `ins`, result named `out`."""

    op: str
    ins: tuple[str, ...]
    out: str
    attrs: dict[str, Any] = field(default_factory=dict)


UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
         "gelu": F.gelu}
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
          "matmul": torch.matmul}


def _pool(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    """Max or average pooling over the last 1 or 2 axes, ONNX pads [begins, ends]. Pads
    torch's pooling cannot take (asymmetric, or above half the kernel) are applied first
    with F.pad: -inf for max, 0 for an average that counts them (the builder refuses an
    average that does not)."""
    n, p = len(a["kernel"]), a["pads"]
    begins, ends = p[:n], p[n:]
    native = begins == ends and all(2 * b <= k for b, k in zip(begins, a["kernel"]))
    if not native:
        fill = float("-inf") if a["mode"] == "max" else 0.0
        x = F.pad(x, [q for i in reversed(range(n)) for q in (begins[i], ends[i])],
                  value=fill)
        begins = [0] * n
    if a["mode"] == "max":
        fn = F.max_pool1d if n == 1 else F.max_pool2d
        return fn(x, a["kernel"], a["stride"], begins, a["dilation"])
    fn = F.avg_pool1d if n == 1 else F.avg_pool2d
    return fn(x, a["kernel"], a["stride"], begins, count_include_pad=a["count_include_pad"])


def _reduce(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    fn = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax}[a["mode"]]
    return fn(x, list(a["dims"]), keepdim=a["keepdim"])


def _pad(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    """Constant padding, ONNX pads [begins of every axis, ends of every axis]."""
    n, p = x.ndim, a["pads"]
    return F.pad(x, [q for k in reversed(range(n)) for q in (p[k], p[n + k])],
                 value=a["value"])


DIGITAL = {
    "pool": _pool, "reduce": _reduce, "pad": _pad,
    "log_softmax": lambda x, a: torch.log_softmax(x, dim=a["dim"]),
    "clip": lambda x, a: torch.clamp(x, a["min"], a["max"]),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a["alpha"]),
    "hardsigmoid": lambda x, a: torch.clamp(x * a["alpha"] + a["beta"], 0.0, 1.0),
    "hardswish": lambda x, a: F.hardswish(x),
}
"""The digital ops users' models need around their crossbar layers (docs/byom.md): node op
-> f(x, attrs), attrs in stored (batch-first) axes. hardsigmoid and hardswish export as
mul/add/clip (Relax lowers F.hardswish so), so the tile program has no opcode for them."""


class GraphModel(nn.Module):
    """A batch-first model as a list of nodes over farc modules (see the module docstring).

    forward(x [B, *input_shape[1:]]) -> the output (one tensor) or a tuple of outputs."""

    kind = "graph"

    def __init__(self, nodes: Sequence[Node], input_name: str, input_shape: Sequence[int],
                 outputs: Sequence[tuple[str, str]], modules: dict[str, nn.Module],
                 consts: dict[str, torch.Tensor], source: dict[str, Any],
                 batch_axes: dict[str, int] | None = None) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self.input_name = input_name
        self.input_shape = tuple(int(s) for s in input_shape)
        """Input shape, batch axis first (1 here; any batch at run time)."""
        self.outputs = list(outputs)
        """(value, output name) pairs, in the model's output order."""
        self.source = dict(source)
        """Where the model came from: format, path, sha256 (recorded in the program)."""
        self.batch_axes = {k: int(v) for k, v in (batch_axes or {}).items() if v}
        """Input/output name -> the axis holding the batch in the model's own layout, where
        it is not 0 (a time-major input [T, B, F]: 1). forward() and the program are
        batch-first; the program records these (`batch_axis`) for run and verify."""
        self.consts = nn.Module()
        for name, value in consts.items():
            self.consts.register_buffer(name, value.detach().float().clone())
        for path, module in modules.items():
            _set_module(self, path, module)
        self._lstm_export = False

    @property
    def output_names(self) -> list[str]:
        return [name for _, name in self.outputs]

    def classifier_paths(self) -> set[str]:
        """Linear layers whose result is a model output (program layer kind 'classifier')."""
        outs = {v for v, _ in self.outputs}
        return {n.attrs["module"] for n in self.nodes if n.op == "linear" and n.out in outs}

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            env[node.out] = self._step(node, [env[i] for i in node.ins], x)
        outs = tuple(env[v] for v, _ in self.outputs)
        return outs[0] if len(outs) == 1 else outs

    def _step(self, node: Node, xs: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        op, a = node.op, node.attrs
        if op == "input":
            return image
        if op == "const":
            return getattr(self.consts, a["name"])
        if op in ("linear", "conv"):
            return self.get_submodule(a["module"])(xs[0])
        if op == "lstm":  # ins: x, or x, h0, c0 (constant [hidden] initial states)
            return self._lstm(self.get_submodule(a["module"]), xs[0], bool(a["reverse"]),
                              *xs[1:3])
        if op == "gru":  # ins: x, or x, h0 (a constant [hidden] initial state)
            return self._gru(self.get_submodule(a["module"]), xs[0], bool(a["reverse"]),
                             *xs[1:2])
        if op in UNARY:
            return UNARY[op](xs[0])
        if op in BINARY:
            return BINARY[op](xs[0], xs[1])
        if op == "softmax":
            return torch.softmax(xs[0], dim=a["dim"])
        if op == "layer_norm":
            return F.layer_norm(xs[0], (int(xs[1].shape[0]),), xs[1], xs[2], a["eps"])
        if op == "reshape":
            return xs[0].reshape(xs[0].shape[0], *a["shape"])
        if op == "permute":
            return xs[0].permute(*a["perm"])
        if op == "cat":
            return torch.cat(xs, dim=a["dim"])
        if op == "slice":
            return xs[0][(slice(None),) * a["dim"] + (slice(a["start"], a["stop"]),)]
        if op == "select":
            return xs[0].select(a["dim"], a["index"])
        if op in DIGITAL:
            return DIGITAL[op](xs[0], a)
        raise ConfigError(f"GraphModel: unknown node op {op!r}")

    def _lstm(self, lstm: nn.LSTM, x: torch.Tensor, reverse: bool,
              h0: torch.Tensor | None = None, c0: torch.Tensor | None = None) -> torch.Tensor:
        """One direction; h0/c0 [hidden] are the same for every batch row (absent: zero).
        The zero-state call stays exactly as before, so such programs do not change."""
        state = () if h0 is None else ((h0.expand(1, x.shape[0], -1).contiguous(),
                                        c0.expand(1, x.shape[0], -1).contiguous()),)
        if self._lstm_export:  # one farc::lstm node per direction (farc.compiler.importer)
            init = () if h0 is None else (h0, c0)
            return torch.ops.farc.lstm(x, lstm.weight_ih_l0, lstm.weight_hh_l0,
                                       lstm.bias_ih_l0, lstm.bias_hh_l0, reverse, *init)
        if reverse:
            return lstm(x.flip(1), *state)[0].flip(1)
        return lstm(x, *state)[0]

    def _gru(self, gru: GRU, x: torch.Tensor, reverse: bool,
             h0: torch.Tensor | None = None) -> torch.Tensor:
        """One GRU direction; h0 [hidden] is the same for every batch row (absent: zero)."""
        if self._lstm_export:  # one farc::gru node per direction (farc.compiler.importer)
            init = () if h0 is None else (h0,)
            return torch.ops.farc.gru(x, gru.weight_ih, gru.weight_hh, gru.bias_ih,
                                      gru.bias_hh, reverse, gru.linear_before_reset, *init)
        if reverse:
            return gru(x.flip(1), h0).flip(1)
        return gru(x, h0)

    def export_onnx(self, path: str | Path, opset: int = 17) -> Path:
        """The float golden model as ONNX (TorchScript exporter: each LSTM one ONNX LSTM
        node, a reverse one between two flips), inputs and outputs named as the model's,
        in the model's layout (`batch_axes`: a time-major input stays [T, B, F]), dynamic
        batch; written atomically."""
        import warnings

        from farc.atomic import atomic_write

        names = self.output_names
        axes = {n: {self.batch_axes.get(n, 0): "batch"} for n in [self.input_name, *names]}
        x = torch.zeros(2, *self.input_shape[1:]).movedim(0, self.batch_axes.get(
            self.input_name, 0))

        def write(tmp: Path) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                model = _InModelLayout(self.eval()) if self.batch_axes else self.eval()
                torch.onnx.export(model, (x,),
                                  str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[self.input_name], output_names=names,
                                  dynamic_axes=axes, do_constant_folding=True)

        atomic_write(Path(path), write)
        return Path(path)

    @contextlib.contextmanager
    def lstms_as_custom_op(self) -> Iterator[None]:
        """Route every LSTM through `farc::lstm` and every GRU through `farc::gru`
        (registered by farc.compiler.importer)."""
        self._lstm_export = True
        try:
            yield
        finally:
            self._lstm_export = False


class _InModelLayout(nn.Module):
    """`model` taking and giving its tensors in the model's own layout (the batch at its
    `batch_axes`), as the user's file does; the identity for batch-first models."""

    def __init__(self, model: GraphModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        axes = self.model.batch_axes
        out = self.model(x.movedim(axes.get(self.model.input_name, 0), 0))
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        moved = tuple(o.movedim(0, axes.get(n, 0))
                      for o, n in zip(outs, self.model.output_names))
        return moved[0] if len(moved) == 1 else moved


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Place `module` at dotted `path`, creating plain containers on the way."""
    parts = path.split(".")
    parent = root
    for p in parts[:-1]:
        if not hasattr(parent, p):
            parent.add_module(p, nn.Module())
        parent = getattr(parent, p)
        if not isinstance(parent, nn.Module) or isinstance(parent, nn.Linear | nn.LSTM |
                                                           nn.Conv1d | nn.Conv2d | GRU):
            raise ConfigError(f"module path {path} runs through a layer")
    if hasattr(parent, parts[-1]):
        raise ConfigError(f"two layers at module path {path}")
    parent.add_module(parts[-1], module)


USER_SUFFIXES = (".pt2", ".onnx")
"""Model files compiled without a farc checkpoint: torch.export programs and ONNX graphs."""


def is_user_model_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in USER_SUFFIXES


def load_user_model(path: str | Path) -> GraphModel:
    """A .pt2 (torch.export.save) or .onnx file as a GraphModel; nothing in it is run."""
    if Path(path).suffix.lower() == ".onnx":
        from farc.models.from_onnx import load_onnx

        return load_onnx(path)
    from farc.models.from_torch import load_pt2

    return load_pt2(path)


def sample_inputs(model: GraphModel, data: str, split: str, limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a data set shaped as `model`'s input: a dataset sample of the same element
    count is reshaped (digits' 8x8 image -> [64] or [8, 8]); anything else is refused."""
    from farc.data import load_split
    from farc.errors import DataError

    x, y = load_split(data, split)
    want = model.input_shape[1:]
    if math.prod(x.shape[1:]) != math.prod(want):
        raise DataError(f"the model takes inputs {list(want)} and {data} holds "
                        f"{list(x.shape[1:])} images; give inputs of the model's shape as "
                        ".npy (--calib-npy for compile, --inputs-npy for verify)")
    n = len(x) if limit is None else min(limit, len(x))
    return x[:n].reshape(n, *want).float(), y[:n]


# ---------------------------------------------------------------- the builder
@dataclass(frozen=True)
class Val:
    """A value as a front end sees it: stored tensor `name` (batch first), and `order`:
    logical axis k is stored axis order[k] (logical = stored.permute(order))."""

    name: str
    order: tuple[int, ...]
    shape: tuple[int, ...]
    """Logical shape, batch 1."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def batch_axis(self) -> int:
        """The logical axis holding the batch."""
        return self.order.index(0)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        out = [0] * self.ndim
        for k, s in enumerate(self.order):
            out[s] = self.shape[k]
        return tuple(out)


class NotATensor:
    """A front end's stand-in for an op output that is not a tensor the tile program computes
    (an LSTM's final cell state, a pattern's partial product): `as_val` refuses it with
    `refusal(where)`."""

    def refusal(self, where: str) -> str:
        raise NotImplementedError


class FinalCellState(NotATensor):
    """An LSTM's final cell state (`what` names it as the front end does), which the tile
    program does not keep."""

    def __init__(self, what: str) -> None:
        self.what = what

    def refusal(self, where: str) -> str:
        return f"{where}: uses an LSTM's {self.what}, which the tile program does not keep"


def as_val(x: Any, where: str) -> Val:
    """`x` as a Val, or the refusal of a front-end value that is not one."""
    if isinstance(x, NotATensor):
        raise UnsupportedModelError(x.refusal(where))
    if not isinstance(x, Val):
        raise UnsupportedModelError(f"{where}: expected a tensor computed from the input")
    return x


class GraphBuilder:
    """Builds a GraphModel from logical-layout ops; every refusal names `where`."""

    def __init__(self, source: dict[str, Any]) -> None:
        self.nodes: list[Node] = []
        self.modules: dict[str, nn.Module] = {}
        self.consts: dict[str, torch.Tensor] = {}
        self.source = source
        self.n = 0
        self.input_name = "input"
        self.input_shape: tuple[int, ...] = ()
        self.batch_axes: dict[str, int] = {}
        """Input/output name -> its batch axis in the model's layout (when not 0)."""

    # ---- plumbing
    def _new(self, op: str, ins: Sequence[str], attrs: dict | None = None) -> str:
        self.n += 1
        out = f"v{self.n}"
        self.nodes.append(Node(op, tuple(ins), out, dict(attrs or {})))
        return out

    def input(self, name: str, shape: Sequence[int], batch_axis: int = 0) -> Val:
        """The model's input of logical `shape` (batch 1 at `batch_axis`), stored batch
        first: a time-major [T, 1, F] is stored [1, T, F] and read back through its order."""
        k = _axis(batch_axis, len(shape), f"input {name}")
        rest = [int(s) for j, s in enumerate(shape) if j != k]
        self.input_name, self.input_shape = name, (1, *rest)
        if k:
            self.batch_axes[name] = k
        order = tuple(0 if j == k else j + (j < k) for j in range(len(shape)))
        logical = tuple(1 if j == k else int(s) for j, s in enumerate(shape))
        return Val(self._new("input", []), order, logical)

    def const(self, value: np.ndarray | torch.Tensor) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = torch.tensor(np.array(value, np.float32))
        return self._new("const", [], {"name": name})

    def add_module(self, path: str, module: nn.Module, where: str) -> str:
        path = path.strip(".") or "layer"
        base, k = path, 1
        while path in self.modules or any(p.startswith(path + ".") or
                                          path.startswith(p + ".") for p in self.modules):
            k += 1
            path = f"{base}_{k}"
        self.modules[path] = module
        return path

    def stored(self, v: Val, where: str) -> str:
        """The value with stored order == logical order (a permute when needed)."""
        if v.order == tuple(range(v.ndim)):
            return v.name
        if v.order[0] != 0:
            raise UnsupportedModelError(f"{where}: needs the batch axis first, and this "
                                        f"tensor's batch axis is logical axis {v.batch_axis}")
        # logical = stored.permute(order): emit that permute
        return self._new("permute", [v.name], {"perm": list(v.order)})

    def plain(self, v: Val, where: str) -> Val:
        return Val(self.stored(v, where), tuple(range(v.ndim)), v.shape)

    def finish(self, outputs: Sequence[tuple[Val, str]]) -> GraphModel:
        """The model; an output whose batch is not its first axis (a time-major LSTM's Y) is
        stored batch-first with its other axes in the model's order, and its batch axis
        recorded."""
        outs = []
        for v, name in outputs:
            if v.batch_axis:
                self.batch_axes[name] = v.batch_axis
            outs.append((self.stored(_batch_first(v), f"output {name}"), name))
        return GraphModel(self.nodes, self.input_name, self.input_shape, outs, self.modules,
                          self.consts, self.source, self.batch_axes)

    # ---- crossbar layers
    def linear(self, v: Val, weight: np.ndarray, bias: np.ndarray | None, path: str,
               where: str) -> Val:
        """y = v @ weight.T + bias over the last logical axis; weight [N, K]."""
        if v.order[-1] != v.ndim - 1:
            v = self.plain(v, where)
        n, k = weight.shape
        if v.shape[-1] != k:
            raise UnsupportedModelError(f"{where}: input has {v.shape[-1]} features, the "
                                        f"weight expects {k}")
        lin = _with_params(nn.Linear(k, n, bias=bias is not None), weight, bias)
        path = self.add_module(path, lin, where)
        out = self._new("linear", [v.name], {"module": path})
        return Val(out, v.order, (*v.shape[:-1], n))

    def conv(self, v: Val, weight: np.ndarray, bias: np.ndarray | None, stride, padding,
             dilation, groups: int, path: str, where: str) -> Val:
        """A 1-d or 2-d convolution on [B, C, L] / [B, C, H, W], any kernel, stride, padding
        and dilation, one group: one crossbar layer of C x kernel rows (docs/byom.md).
        `padding` is torch's (one entry per spatial axis) or ONNX's (begin..., end...);
        where begin and end differ, a zero `pad` node comes first."""
        spatial = weight.ndim - 2
        if spatial not in (1, 2) or v.ndim != weight.ndim:
            raise UnsupportedModelError(
                f"{where}: a {spatial}-d convolution on a rank-{v.ndim} input; farc maps "
                "1-d and 2-d convolutions ([B, C, L] or [B, C, H, W])")
        if int(groups) != 1:
            raise UnsupportedModelError(
                f"{where}: a grouped or depthwise convolution (group={int(groups)}); farc maps "
                "group=1 convolutions (write it as group=1 with a block-diagonal weight)")
        stride, dilation = per_axis(stride, spatial), per_axis(dilation, spatial)
        pads = [int(p) for p in (padding if isinstance(padding, list | tuple) else [padding])]
        if len(pads) == 2 * spatial and spatial > 0:
            if pads[:spatial] != pads[spatial:]:
                # asymmetric (ONNX SAME_* with an odd total): the zeros are a digital `pad`
                # before an unpadded convolution (torch pads both sides alike)
                v = self.pad(v, [0, 0, *pads[:spatial], 0, 0, *pads[spatial:]], 0.0, where)
                pads = [0] * spatial
            pads = pads[:spatial]
        pads = per_axis(pads, spatial)
        d, c, *kernel = weight.shape
        v = self.plain(v, where)
        if v.shape[1] != c:
            raise UnsupportedModelError(f"{where}: input has {v.shape[1]} channels, the "
                                        f"weight expects {c}")
        out_size = [window_out(n, k, s, 2 * p, dl)
                    for n, k, s, p, dl in zip(v.shape[2:], kernel, stride, pads, dilation)]
        if min(out_size) < 1:
            raise UnsupportedModelError(f"{where}: the kernel {kernel} does not fit the "
                                        f"input {list(v.shape[2:])}")
        cls = nn.Conv1d if spatial == 1 else nn.Conv2d
        conv = _with_params(cls(c, d, tuple(kernel), stride=tuple(stride), padding=tuple(pads),
                                dilation=tuple(dilation), bias=bias is not None), weight, bias)
        path = self.add_module(path, conv, where)
        out = self._new("conv", [v.name], {"module": path})
        return Val(out, v.order, (v.shape[0], d, *out_size))

    def batch_norm(self, v: Val, scale: np.ndarray, shift: np.ndarray, mean: np.ndarray,
                   var: np.ndarray, eps: float, fold: bool, where: str) -> Val:
        """Inference BatchNorm over channel axis 1. Folded into the convolution or linear
        layer that computed `v` when `fold` (the front end knows nothing else reads that
        layer's raw output), so it costs nothing on the chip; otherwise a digital per-channel
        multiply and add."""
        if v.ndim < 2:
            raise UnsupportedModelError(f"{where}: BatchNormalization of a rank-{v.ndim} "
                                        "tensor")
        c = v.shape[1]
        arrays = [np.asarray(a, np.float32).reshape(-1) for a in (scale, shift, mean, var)]
        if any(a.shape != (c,) for a in arrays):
            raise UnsupportedModelError(f"{where}: BatchNormalization parameters do not "
                                        f"match the {c} channels")
        scale, shift, mean, var = arrays
        mul = scale / np.sqrt(var + np.float32(eps))
        add = shift - mean * mul
        node = self.nodes[-1] if self.nodes else None
        if fold and node is not None and node.out == v.name and \
                node.op in ("conv", "linear") and (node.op == "conv" or v.ndim == 2):
            layer = self.modules[node.attrs["module"]]
            with torch.no_grad():
                w = layer.weight
                w.mul_(torch.tensor(mul).reshape(-1, *[1] * (w.ndim - 1)))
                b = torch.zeros(c) if layer.bias is None else layer.bias.detach()
                new_bias = b * torch.tensor(mul) + torch.tensor(add)
                if layer.bias is None:
                    layer.bias = nn.Parameter(new_bias)
                else:
                    layer.bias.copy_(new_bias)
            return v
        shape = (c, *[1] * (v.ndim - 2))
        scaled = self.binary("mul", v, mul.reshape(shape), where)
        return self.binary("add", scaled, add.reshape(shape), where)

    def lstm_direction(self, v: Val, time_axis: int, w_ih: np.ndarray, w_hh: np.ndarray,
                       b_ih: np.ndarray, b_hh: np.ndarray, reverse: bool, path: str,
                       where: str, h0: np.ndarray | None = None,
                       c0: np.ndarray | None = None) -> Val:
        """One direction of one LSTM layer (PyTorch gate order i, f, g, o) over logical
        [.., T, .., I] with time at `time_axis`; output logical [B, T, H] (stored
        batch-first). `h0`/`c0` [H]: a constant initial state shared by every batch row
        (None or all zero: the zero state, and the node stays the zero-state form)."""
        v = self._sequence(v, time_axis, "LSTM", where)
        hidden, inp = w_hh.shape[1], w_ih.shape[1]
        if v.shape[-1] != inp:
            raise UnsupportedModelError(f"{where}: input has {v.shape[-1]} features, the "
                                        f"LSTM expects {inp}")
        m = nn.LSTM(inp, hidden, batch_first=True)
        with torch.no_grad():
            for name, val in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh),
                              ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
                getattr(m, name).copy_(torch.tensor(np.array(val, np.float32)))
        path = self.add_module(path, m, where)
        ins = [v.name]
        if any(s is not None and np.any(s != 0) for s in (h0, c0)):
            for given in (h0, c0):
                s = np.zeros(hidden, np.float32) if given is None else \
                    np.asarray(given, np.float32)
                if s.shape != (hidden,):
                    raise UnsupportedModelError(f"{where}: initial state of shape "
                                                f"{list(s.shape)}, the LSTM has {hidden} units")
                ins.append(self.const(s))
        out = self._new("lstm", ins, {"module": path, "reverse": bool(reverse)})
        return Val(out, (0, 1, 2), (1, v.shape[1], hidden))

    def gru_direction(self, v: Val, time_axis: int, w_ih: np.ndarray, w_hh: np.ndarray,
                      b_ih: np.ndarray, b_hh: np.ndarray, linear_before_reset: bool,
                      reverse: bool, path: str, where: str,
                      h0: np.ndarray | None = None) -> Val:
        """One direction of one GRU layer (PyTorch gate order r, z, n) over logical
        [.., T, .., I] with time at `time_axis`; output logical [B, T, H] (stored
        batch-first). `h0` [H]: a constant initial state shared by every batch row (None
        or all zero: the zero state)."""
        v = self._sequence(v, time_axis, "GRU", where)
        hidden, inp = w_hh.shape[1], w_ih.shape[1]
        if v.shape[-1] != inp:
            raise UnsupportedModelError(f"{where}: input has {v.shape[-1]} features, the "
                                        f"GRU expects {inp}")
        m = GRU(inp, hidden, linear_before_reset)
        with torch.no_grad():
            for name, val in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                              ("bias_hh", b_hh)):
                getattr(m, name).copy_(torch.tensor(np.array(val, np.float32)))
        path = self.add_module(path, m, where)
        ins = [v.name]
        if h0 is not None and np.any(h0 != 0):
            s = np.asarray(h0, np.float32)
            if s.shape != (hidden,):
                raise UnsupportedModelError(f"{where}: initial state of shape "
                                            f"{list(s.shape)}, the GRU has {hidden} units")
            ins.append(self.const(s))
        out = self._new("gru", ins, {"module": path, "reverse": bool(reverse)})
        return Val(out, (0, 1, 2), (1, v.shape[1], hidden))

    def _sequence(self, v: Val, time_axis: int, what: str, where: str) -> Val:
        """A recurrent layer's input as stored [batch, time, features] (a permute if
        needed)."""
        time_axis = _axis(time_axis, v.ndim, where)
        if v.ndim != 3 or v.batch_axis == time_axis or 2 in (v.batch_axis, time_axis):
            raise UnsupportedModelError(f"{where}: {what} input must be [batch, time, "
                                        "features] or [time, batch, features]")
        want = [0, v.order[time_axis], v.order[2]]  # stored axes of batch, time, features
        name = v.name if want == [0, 1, 2] else self._new("permute", [v.name],
                                                          {"perm": want})
        return Val(name, (0, 1, 2), (1, v.shape[time_axis], v.shape[2]))

    # ---- digital ops
    def unary(self, op: str, v: Val) -> Val:
        return Val(self._new(op, [v.name]), v.order, v.shape)

    def softmax(self, v: Val, axis: int, where: str) -> Val:
        axis = _axis(axis, v.ndim, where)
        return Val(self._new("softmax", [v.name], {"dim": v.order[axis]}), v.order, v.shape)

    def layer_norm(self, v: Val, weight: np.ndarray | None, bias: np.ndarray | None,
                   eps: float, axis: int, where: str) -> Val:
        if _axis(axis, v.ndim, where) != v.ndim - 1:
            raise UnsupportedModelError(f"{where}: layer norm only over the last axis")
        if v.order[-1] != v.ndim - 1:
            v = self.plain(v, where)
        n = v.shape[-1]
        w = np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32)
        b = np.zeros(n, np.float32) if bias is None else np.asarray(bias, np.float32)
        if w.size != n or b.size != n:
            raise UnsupportedModelError(f"{where}: layer norm over more than the last axis")
        out = self._new("layer_norm", [v.name, self.const(w.reshape(n)),
                                       self.const(b.reshape(n))], {"eps": float(eps)})
        return Val(out, v.order, v.shape)

    def binary(self, op: str, a: Val | np.ndarray, b: Val | np.ndarray, where: str) -> Val:
        """Elementwise add/sub/mul/div with numpy broadcasting; a constant operand is laid
        out like the value's stored tensor. Division only by a constant."""
        if not isinstance(a, Val) and not isinstance(b, Val):
            raise UnsupportedModelError(f"{where}: both operands constant")
        if op == "div" and not isinstance(b, Val):
            c = np.asarray(b, np.float32)
            if c.size != 1:
                return self.binary("mul", a, (np.float32(1.0) / c).astype(np.float32), where)
        elif op == "div":
            raise UnsupportedModelError(f"{where}: division only by a constant")
        if isinstance(a, Val) and isinstance(b, Val):
            if a.order != b.order or a.ndim != b.ndim:
                a, b = self.plain(a, where), self.plain(b, where)
                if a.ndim != b.ndim:
                    raise UnsupportedModelError(f"{where}: operands of rank {a.ndim} and "
                                                f"{b.ndim}")
            shape = tuple(int(s) for s in np.broadcast_shapes(a.shape, b.shape))
            return Val(self._new(op, [a.name, b.name]), a.order, shape)
        v, c, v_first = (a, np.asarray(b, np.float32), True) if isinstance(a, Val) else \
            (b, np.asarray(a, np.float32), False)
        if c.ndim > v.ndim:
            raise UnsupportedModelError(f"{where}: a constant of rank {c.ndim} against a "
                                        f"tensor of rank {v.ndim}")
        try:
            shape = tuple(int(s) for s in np.broadcast_shapes(v.shape, c.shape))
        except ValueError:
            raise UnsupportedModelError(f"{where}: shapes {list(v.shape)} and "
                                        f"{list(c.shape)} do not broadcast") from None
        if shape != v.shape:
            raise UnsupportedModelError(f"{where}: a constant that enlarges the tensor")
        full = c.reshape((1,) * (v.ndim - c.ndim) + c.shape) if c.ndim else c
        if c.ndim:  # logical -> stored layout
            inv = [v.order.index(s) for s in range(v.ndim)]
            full = np.transpose(full, inv)
            while full.ndim and full.shape[0] == 1:
                full = full[0]  # no batch axis on constants (broadcast from the right)
        ins = [v.name, self.const(full)] if v_first else [self.const(full), v.name]
        return Val(self._new(op, ins), v.order, v.shape)

    def matmul(self, a: Val, b: Val, where: str) -> Val:
        """Activation x activation (constant weights go through `linear`)."""
        a, b = self.plain(a, where), self.plain(b, where)
        if a.ndim != b.ndim or a.ndim < 3:
            raise UnsupportedModelError(f"{where}: matmul of two tensors needs the same rank "
                                        ">= 3 (batch first)")
        shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
        return Val(self._new("matmul", [a.name, b.name]), tuple(range(a.ndim)),
                   tuple(int(s) for s in shape))

    def transpose(self, v: Val, perm: Sequence[int], where: str) -> Val:
        perm = [_axis(p, v.ndim, where) for p in perm]
        if sorted(perm) != list(range(v.ndim)):
            raise UnsupportedModelError(f"{where}: bad permutation {perm}")
        return Val(v.name, tuple(v.order[p] for p in perm), tuple(v.shape[p] for p in perm))

    def reshape(self, v: Val, shape: Sequence[int], where: str,
                batch_out: int | None = None) -> Val:
        """Reshape in logical order (shapes at batch 1; -1 allowed once). The batch axis
        stays an axis of its own: it is logical axis `batch_out` of the result (default:
        first, with the target's first entry 1 or -1), and the axes before it hold the
        same elements as the input's axes before its batch axis."""
        shape = [int(s) for s in shape]
        p = v.batch_axis
        q = 0 if batch_out is None else int(batch_out)
        if batch_out is None and (not shape or shape[0] not in (1, -1)):
            raise UnsupportedModelError(f"{where}: reshape {list(v.shape)} -> {shape} "
                                        "does not keep the batch axis first")
        shape[q] = 1
        rest = math.prod(v.shape) // max(v.shape[p], 1)
        if shape.count(-1) == 1:
            known = math.prod(s for s in shape if s != -1)
            shape = [rest // known if s == -1 and known else s for s in shape]
        pre_in, pre_out = math.prod(v.shape[:p]), math.prod(shape[:q])
        if -1 in shape or math.prod(shape) != rest or pre_in != pre_out:
            raise UnsupportedModelError(f"{where}: reshape {list(v.shape)} -> {shape} "
                                        "mixes the batch axis with others")
        # stored as [B, logical non-batch axes in order], then one reshape of the rest
        perm = [0] + [v.order[k] for k in range(v.ndim) if k != p]
        name = v.name if perm == list(range(v.ndim)) else \
            self._new("permute", [v.name], {"perm": perm})
        flat_in = [d for k, d in enumerate(v.shape) if k != p]
        tail = [d for k, d in enumerate(shape) if k != q]
        if tail != flat_in:
            name = self._new("reshape", [name], {"shape": tail})
        order = [0] * len(shape)
        for k in range(len(shape)):
            order[k] = 0 if k == q else 1 + k - (k > q)
        return Val(name, tuple(order), tuple(shape))

    def concat(self, vals: Sequence[Val], axis: int, where: str) -> Val:
        first = vals[0]
        axis = _axis(axis, first.ndim, where)
        if any(x.order != first.order for x in vals):
            vals = [self.plain(x, where) for x in vals]
            first = vals[0]
        if first.order[axis] == 0:
            raise UnsupportedModelError(f"{where}: concatenation along the batch axis")
        shape = list(first.shape)
        shape[axis] = sum(x.shape[axis] for x in vals)
        out = self._new("cat", [x.name for x in vals], {"dim": first.order[axis]})
        return Val(out, first.order, tuple(shape))

    def slice(self, v: Val, axis: int, start: int, stop: int, step: int, where: str) -> Val:
        axis = _axis(axis, v.ndim, where)
        if step != 1:
            raise UnsupportedModelError(f"{where}: slices with a step other than 1")
        if v.order[axis] == 0:
            raise UnsupportedModelError(f"{where}: slicing the batch axis")
        start, stop, _ = slice(start, stop).indices(v.shape[axis])
        stop = max(stop, start)
        if (start, stop) == (0, v.shape[axis]):
            return v
        shape = list(v.shape)
        shape[axis] = stop - start
        out = self._new("slice", [v.name], {"dim": v.order[axis], "start": start,
                                            "stop": stop})
        return Val(out, v.order, tuple(shape))

    def select(self, v: Val, axis: int, index: int, where: str) -> Val:
        axis = _axis(axis, v.ndim, where)
        if v.order[axis] == 0:
            raise UnsupportedModelError(f"{where}: indexing the batch axis")
        index = range(v.shape[axis])[index]
        s = v.order[axis]
        out = self._new("select", [v.name], {"dim": s, "index": index})
        order = tuple(o - (o > s) for k, o in enumerate(v.order) if k != axis)
        return Val(out, order, tuple(d for k, d in enumerate(v.shape) if k != axis))

    def unsqueeze(self, v: Val, axis: int, where: str) -> Val:
        """A new size-1 logical axis at `axis` (of the result)."""
        axis = _axis(axis, v.ndim + 1, where)
        p = v.batch_axis
        shape = [*v.shape[:axis], 1, *v.shape[axis:]]
        return self.reshape(v, shape, where, batch_out=p + (axis <= p))

    def squeeze(self, v: Val, axes: Sequence[int], where: str) -> Val:
        axes = sorted({_axis(a, v.ndim, where) for a in axes})
        if any(v.shape[a] != 1 for a in axes):
            raise UnsupportedModelError(f"{where}: squeezing an axis of size > 1")
        p = v.batch_axis
        if p in axes:
            raise UnsupportedModelError(f"{where}: squeezing the batch axis")
        shape = [d for k, d in enumerate(v.shape) if k not in axes]
        return self.reshape(v, shape, where, batch_out=p - sum(a < p for a in axes))

    # ---- digital ops around the crossbar layers (DIGITAL)
    def elementwise(self, op: str, v: Val, **attrs: Any) -> Val:
        """clip, leaky_relu, hardsigmoid, hardswish: shape and layout kept."""
        return Val(self._new(op, [v.name], attrs), v.order, v.shape)

    def log_softmax(self, v: Val, axis: int, where: str) -> Val:
        axis = _axis(axis, v.ndim, where)
        return Val(self._new("log_softmax", [v.name], {"dim": v.order[axis]}), v.order,
                   v.shape)

    def reduce(self, v: Val, mode: str, axes: Sequence[int] | None, keepdims: bool,
               where: str) -> Val:
        """mean/sum/max over logical `axes` (None: every axis, which holds the batch)."""
        axes = range(v.ndim) if axes is None else axes
        axes = sorted({_axis(a, v.ndim, where) for a in axes})
        if v.batch_axis in axes:
            raise UnsupportedModelError(f"{where}: reduce{mode.capitalize()} over axes "
                                        f"{axes} includes the batch axis ({v.batch_axis})")
        dims = [v.order[a] for a in axes]
        out = self._new("reduce", [v.name], {"mode": mode, "dims": dims,
                                             "keepdim": bool(keepdims)})
        if keepdims:
            return Val(out, v.order, tuple(1 if k in axes else d for k, d in
                                           enumerate(v.shape)))
        order = tuple(o - sum(d < o for d in dims) for k, o in enumerate(v.order)
                      if k not in axes)
        return Val(out, order, tuple(d for k, d in enumerate(v.shape) if k not in axes))

    def pool(self, v: Val, mode: str, kernel: Sequence[int], stride: Sequence[int],
             pads: Sequence[int] | None, dilation: Sequence[int] | None,
             count_include_pad: bool, where: str) -> Val:
        """Max/average pooling of logical [B, C, *spatial] (1 or 2 spatial axes), floor
        mode, ONNX pads [begins, ends] (None: none), dilation None: 1."""
        n = len(kernel)
        kernel = [int(k) for k in kernel]
        stride = [int(s) for s in stride]
        pads = [int(p) for p in pads] if pads else [0] * (2 * n)
        dilation = [int(d) for d in dilation] if dilation else [1] * n
        self._check_pool(v, mode, kernel, stride, pads, dilation, count_include_pad, where)
        v = self.plain(v, where)
        shape = (*v.shape[:2], *(window_out(v.shape[2 + i], kernel[i], stride[i],
                                           pads[i] + pads[n + i], dilation[i])
                                 for i in range(n)))
        if min(shape) < 1:
            raise UnsupportedModelError(f"{where}: pooling {list(v.shape)} with kernel "
                                        f"{kernel} leaves no output")
        out = self._new("pool", [v.name], {"mode": mode, "kernel": kernel, "stride": stride,
                                           "pads": pads, "dilation": dilation,
                                           "count_include_pad": bool(count_include_pad)})
        return Val(out, v.order, shape)

    @staticmethod
    def _check_pool(v: Val, mode: str, kernel: list[int], stride: list[int],
                    pads: list[int], dilation: list[int], count_include_pad: bool,
                    where: str) -> None:
        n = len(kernel)
        if n not in (1, 2) or v.ndim != n + 2 or v.batch_axis != 0:
            raise UnsupportedModelError(f"{where}: pooling over {n} axes of a rank-{v.ndim} "
                                        "tensor; [batch, channels, 1 or 2 spatial axes] only")
        if len(stride) != n or len(pads) != 2 * n or len(dilation) != n or \
                min(kernel + stride + dilation) < 1 or min(pads) < 0:
            raise UnsupportedModelError(f"{where}: pooling kernel {kernel}, strides {stride}, "
                                        f"pads {pads}, dilations {dilation} do not fit")
        if any(max(pads[i], pads[n + i]) >= dilation[i] * (kernel[i] - 1) + 1
               for i in range(n)):
            raise UnsupportedModelError(f"{where}: pads {pads} as large as the window")
        if mode == "avg" and any(d != 1 for d in dilation):
            raise UnsupportedModelError(f"{where}: average pooling with dilations {dilation}")
        symmetric = pads[:n] == pads[n:] and all(2 * p <= k for p, k in zip(pads, kernel))
        if mode == "avg" and not count_include_pad and not symmetric:
            raise UnsupportedModelError(f"{where}: average pooling with pads {pads} "
                                        "(asymmetric or above half the kernel) and "
                                        "count_include_pad = 0")

    def pad(self, v: Val, pads: Sequence[int], value: float, where: str) -> Val:
        """Constant padding, ONNX pads [begins, ends] in logical axes; never the batch."""
        pads = [int(p) for p in pads]
        n = v.ndim
        if len(pads) != 2 * n or min(pads, default=0) < 0:
            raise UnsupportedModelError(f"{where}: pads {pads} for a rank-{n} tensor "
                                        "(2 per axis, none negative)")
        if pads[v.batch_axis] or pads[n + v.batch_axis]:
            raise UnsupportedModelError(f"{where}: padding the batch axis")
        stored = [0] * (2 * n)
        for k in range(n):
            stored[v.order[k]], stored[n + v.order[k]] = pads[k], pads[n + k]
        shape = tuple(d + pads[k] + pads[n + k] for k, d in enumerate(v.shape))
        return Val(self._new("pad", [v.name], {"pads": stored, "value": float(value)}),
                   v.order, shape)


def _batch_first(v: Val) -> Val:
    """`v` with its batch moved to logical axis 0, the other axes in the model's order."""
    p = v.batch_axis
    if p == 0:
        return v
    perm = [0] + [v.order[k] for k in range(v.ndim) if k != p]
    return Val(v.name, tuple(perm), (1, *[d for k, d in enumerate(v.shape) if k != p]))


def _axis(axis: int, ndim: int, where: str) -> int:
    a = int(axis)
    if not -ndim <= a < ndim:
        raise UnsupportedModelError(f"{where}: axis {a} out of range for rank {ndim}")
    return a + ndim if a < 0 else a


def per_axis(values: Any, spatial: int, default: int | None = None) -> list[int]:
    """A kernel attribute (stride, padding, dilation; torch's and ONNX's forms: an int, or a
    list of 1 or `spatial` ints; None: `default` on every axis) as one int per spatial axis."""
    if values is None and default is not None:
        return [default] * spatial
    out = [int(x) for x in (values if isinstance(values, list | tuple) else [values])]
    return out * spatial if len(out) == 1 else out


def _with_params(module: nn.Module, weight: np.ndarray, bias: np.ndarray | None) -> nn.Module:
    """`module` (a Linear, Conv1d or Conv2d) holding the file's weight and bias, as float32."""
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.array(weight, np.float32)))
        if bias is not None:
            module.bias.copy_(torch.tensor(np.array(bias, np.float32).reshape(-1)))
    return module
