"""emit_tile_program: the scheduled Relax module -> the tile program of docs/tile-program.md.

Codegen, not a pass: `emit_tile_program(mod, target, model) -> Program` reads the module
and returns the program; the module is left unchanged.

Expects: Relax after ScheduleCrossbar: crossbar functions carrying QuantizeCrossbar's,
TileCrossbar's and ScheduleCrossbar's `farc.*` attributes (every number and array of a
program layer comes from them), LSTM scans of one block adjacent. `main` takes one image
tensor whose axis 0 is the batch (exported as 1) and returns a tuple of tensors.

One emitter per Relax op (`_op_<name>`), each mirroring one emulator handler:
- a call to a crossbar function -> `mvm`; a `farc.digital.matmul` composite -> `matmul`;
- each run of adjacent, mutually independent LSTM scans -> ONE `loop` whose body holds
  every cell (gather x_t, concat [x_t ; h], mvm, gate math, scatter h), so all heads and
  directions of a block step in lockstep; each state of a cell (LSTM h and c, GRU h) is a
  carry register set to zero first (or to a constant initial state, broadcast over the
  batch with `zeros` + `add`);
- constants become `const` registers (broadcast against the batch); a constant used where
  a batch axis is needed (the CLS token) is materialised with `zeros` + `add`;
- a `permute_dims` that moves the batch axis (DeiT's qkv split) is kept pending and folded
  into the `take`/`strided_slice` that follows it. Anything else that would move the batch
  axis, and any op without an instruction, is a PassError naming the op."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from farc.passes._crossbar_ir import (
    CODEGEN,
    IM2COL_EXTERN,
    const_value,
    is_extern_call,
    is_scan,
    program_arrays,
    xbar_of,
)
from farc.runtime.builder import layer_fields
from farc.runtime.numerics import Geometry
from farc.runtime.program import Program
from farc.targets import Target
from tvm import relax

from farc.errors import PassError

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Reg:
    """A register; `shape` includes the batch axis."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Lazy:
    """transpose(reg, perm) not yet emitted because perm moves the batch axis."""

    reg: Reg
    perm: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.reg.shape[p] for p in self.perm)


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class Tup:
    items: tuple


def emit_tile_program(mod: tvm.IRModule, target: Target, model: dict[str, Any]) -> Program:
    """Translate `main` into instructions, layers and constants: codegen, not a pass.

    Parameters
    ----------
    mod : the module after ScheduleCrossbar (read only)
    target : the target the program is built for (its dict goes into the manifest; its
        crossbar parameters fill each layer's parameter fields)
    model : the manifest's `model` entry (kind, name, config, provenance)

    Returns
    -------
    Program
        Not yet validated (the driver validates it, `CompileOptions.validate`)."""
    em = _Emitter(mod)
    main = mod["main"]
    (image,) = main.params
    x = em.emit("input", [], _shape(image), name=INPUT_NAME)
    em.input_reg = x
    em.env[image] = x
    out = em.run_main(main)
    outs = out.items if isinstance(out, Tup) else (out,)
    specs = []
    for i, o in enumerate(outs):
        name = OUTPUT_NAME if len(outs) == 1 else f"{OUTPUT_NAME}{i}"
        reg = em.materialise(o)
        em.code.append({"op": "output", "in": [reg.name], "name": name})
        specs.append({"name": name, "shape": [None, *reg.shape[1:]], "dtype": "float32"})
    manifest, arrays = em.finish(target, model, mod)
    manifest["inputs"] = [{"name": INPUT_NAME, "shape": [None, *x.shape[1:]],
                           "dtype": "float32"}]
    manifest["outputs"] = specs
    return Program(manifest, arrays)


def _shape(expr: relax.Expr) -> tuple[int, ...]:
    return tuple(int(s) for s in expr.ty.shape)


def _ints(values) -> list[int]:
    return [int(getattr(v, "value", v)) for v in values]


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


class _Emitter:
    def __init__(self, mod: tvm.IRModule) -> None:
        self.mod = mod
        self.env: dict = {}
        self.code: list[dict] = []
        self.layers: dict[str, relax.Function] = {}
        """Crossbar functions by layer name, in order of first use (= program layer id)."""
        self.constants: dict[str, np.ndarray] = {}
        self.count = 0
        self.input_reg: Reg | None = None

    # ---- registers and instructions
    def fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def emit(self, op: str, ins: list, out_shape, **attrs) -> Reg:
        reg = Reg(self.fresh(), tuple(int(s) for s in out_shape))
        self.code.append({"op": op, "in": [r.name for r in ins], "out": reg.name, **attrs})
        return reg

    def const_reg(self, value: np.ndarray) -> Reg:
        name = f"c{len(self.constants)}"
        self.constants[name] = np.ascontiguousarray(value, dtype=np.float32)
        return self.emit("const", [], value.shape, name=name)

    def materialise(self, v) -> Reg:
        """A register with a batch axis for any value."""
        if isinstance(v, Reg):
            return v
        if isinstance(v, Lazy):
            raise PassError(f"cannot emit transpose {list(v.perm)}: it moves the batch axis")
        if isinstance(v, Const):
            value = v.value
            if value.ndim == 0 or value.shape[0] != 1:
                value = value[None]
            c = self.const_reg(value[0])
            z = self.emit("zeros", [self.input_reg], value.shape, shape=list(value.shape[1:]))
            return self.emit("add", [z, c], value.shape)
        raise PassError(f"cannot use {type(v).__name__} as a tensor")

    def operand(self, v) -> Reg:
        """A register for an elementwise operand (constants broadcast, no batch needed)."""
        return self.const_reg(v.value) if isinstance(v, Const) else self.materialise(v)

    def value(self, expr: relax.Expr):
        if isinstance(expr, relax.Var):
            return self.env[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return Const(const_value(expr))
        if isinstance(expr, relax.Tuple):
            return Tup(tuple(self.value(f) for f in expr.fields))
        if isinstance(expr, tvm.tirx.IntImm | tvm.tirx.FloatImm):
            return expr.value
        raise PassError(f"unsupported operand {type(expr).__name__}")

    # ---- functions and bindings
    def run_main(self, main: relax.Function):
        bindings = [b for blk in main.body.blocks for b in blk.bindings]
        i = 0
        while i < len(bindings):
            if is_scan(bindings[i].value):
                group = _scan_group(bindings, i)
                self.loop(group)
                i += len(group)
                continue
            self.bind(bindings[i])
            i += 1
        return self.value(main.body.body)

    def run_function(self, func: relax.Function, args: list):
        for p, a in zip(func.params, args):
            self.env[p] = a
        for blk in func.body.blocks:
            for b in blk.bindings:
                self.bind(b)
        return self.value(func.body.body)

    def bind(self, binding) -> None:
        self.env[binding.var] = self.expr(binding.value)

    def expr(self, e: relax.Expr):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar):
            return self.call_function(e)
        if is_extern_call(e, "relax.call_dps_packed", IM2COL_EXTERN):
            return self.im2col(e)
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            handler = getattr(self, "_op_" + e.op.name.replace("relax.", "").replace(".", "_"),
                              None)
            if handler is None:
                raise PassError(f"no tile-program instruction for Relax op {e.op.name}")
            return handler(e, [self.value(a) for a in e.args
                               if isinstance(a, relax.Var | tvm.ir.GenericConst | relax.Tuple)])
        if isinstance(e, relax.TupleGetItem):
            return self.value(e.tuple_value).items[e.index]
        return self.value(e)

    def call_function(self, call: relax.Call):
        func = self.mod[call.op]
        attrs = func.attrs or {}
        args = [self.value(a) for a in call.args]
        if attrs.get("Codegen") == CODEGEN:
            return self.mvm(func, self.materialise(args[0]))
        if "Composite" in attrs or "Primitive" in attrs:
            return self.run_function(func, args)
        raise PassError(f"call to {call.op.name_hint} has no tile-program lowering")

    def mvm(self, func: relax.Function, x: Reg) -> Reg:
        layer = str(func.attrs["farc.layer"])
        self.layers.setdefault(layer, func)
        return self.emit("mvm", [x], (*x.shape[:-1], int(func.attrs["farc.N"])),
                         layer=list(self.layers).index(layer))

    def im2col(self, call: relax.Call) -> Reg:
        """A convolution's patch gather (the importer's `farc.im2col`): one instruction
        over all positions, so the program does not grow with the image."""
        x, *prims = call.args[1].fields
        spatial, *rest = (int(p.value) for p in prims)
        kernel, stride, pads, dilation = (rest[k * spatial:(k + 1) * spatial]
                                          for k in range(4))
        return self.emit("im2col", [self.materialise(self.value(x))], _shape(call),
                         kernel=kernel, stride=stride, pads=pads, dilation=dilation)

    # ---- LSTM scans -> one loop
    def loop(self, group: list) -> None:
        carry, gather, scatter, body = [], [], [], []
        xs = [self.materialise(self.value(b.value.args[1])) for b in group]
        outer, self.code = self.code, body
        for b, x in zip(group, xs):
            cell = self.mod[b.value.args[2]]
            reverse = bool(int(b.value.args[3].value))
            hidden = _shape(cell.params[1])[1]
            n_states = len(cell.params) - 1  # LSTM: h, c; GRU: h
            state = [const_value(a) for a in b.value.args[4:]] or [None] * n_states
            regs = [self.state_before(outer, x, hidden, s) for s in state]
            h = regs[0]
            carry += [r.name for r in regs]
            xt = Reg(self.fresh(), (x.shape[0], *x.shape[2:]))
            gather.append({"src": x.name, "axis": 1, "dst": xt.name, "reverse": reverse})
            new = self.run_function(cell, [xt, *regs]).items
            for r_new, r in reversed(list(zip(new, regs))):  # c before h, as before
                self.write_carry(r_new, r)
            out = Reg(self.fresh(), (x.shape[0], x.shape[1], hidden))
            scatter.append({"src": h.name, "axis": 1, "dst": out.name, "reverse": reverse})
            self.env[b.var] = out
        self.code = outer
        self.code.append({"op": "loop", "count": {"reg": xs[0].name, "axis": 1},
                          "carry": carry, "gather": gather, "body": body, "scatter": scatter})

    def zeros_before(self, code: list, x: Reg, hidden: int) -> Reg:
        reg = Reg(self.fresh(), (x.shape[0], hidden))
        code.append({"op": "zeros", "in": [x.name], "out": reg.name, "shape": [hidden]})
        return reg

    def state_before(self, code: list, x: Reg, hidden: int, value: np.ndarray | None) -> Reg:
        """The loop's initial h or c: zeros, or a constant [hidden] broadcast over the
        batch as the CLS token is (`const` + `zeros` + `add`: the ISA has no broadcast of
        a constant to the batch). An all-zero constant stays the plain `zeros`."""
        zeros = self.zeros_before(code, x, hidden)
        if value is None or not np.any(value):
            return zeros
        name = f"c{len(self.constants)}"
        self.constants[name] = np.ascontiguousarray(value, dtype=np.float32).reshape(hidden)
        const = Reg(self.fresh(), (hidden,))
        code.append({"op": "const", "in": [], "out": const.name, "name": name})
        reg = Reg(self.fresh(), zeros.shape)
        code.append({"op": "add", "in": [zeros.name, const.name], "out": reg.name})
        return reg

    def write_carry(self, new: Reg, carry: Reg) -> None:
        """Make the body leave `new` in the carry register: rename its definition when the
        old carry value is dead by then, else copy."""
        at = next(i for i, ins in enumerate(self.code) if ins.get("out") == new.name)
        if any(carry.name in ins["in"] for ins in self.code[at + 1 :]):
            self.code.append({"op": "scale", "in": [new.name], "out": carry.name, "value": 1.0})
            return
        for ins in self.code[at:]:
            ins["in"] = [carry.name if r == new.name else r for r in ins["in"]]
        self.code[at]["out"] = carry.name

    # ---- per-op emitters
    def _binary(self, op: str, call, a, b):
        if isinstance(a, Const) and isinstance(b, Const):
            fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op]
            return Const(fn(a.value, b.value))
        if op == "mul" and isinstance(b, Const) and b.value.size == 1:
            return self.emit("scale", [self.materialise(a)], _shape(call),
                             value=float(b.value.reshape(())))
        if op == "mul" and isinstance(a, Const) and a.value.size == 1:
            return self._binary(op, call, b, a)
        return self.emit(op, [self.operand(a), self.operand(b)], _shape(call))

    def _op_add(self, call, args):
        return self._binary("add", call, *args)

    def _op_subtract(self, call, args):
        return self._binary("sub", call, *args)

    def _op_multiply(self, call, args):
        return self._binary("mul", call, *args)

    def _op_divide(self, call, args):
        a, b = args
        if not (isinstance(b, Const) and b.value.size == 1):
            raise PassError("division is only supported by a scalar constant")
        return self._binary("mul", call, a, Const(np.float32(1.0) / b.value))

    def _unary(self, op: str, call, args):
        return self.emit(op, [self.materialise(args[0])], _shape(call))

    def _op_sigmoid(self, call, args):
        return self._unary("sigmoid", call, args)

    def _op_tanh(self, call, args):
        return self._unary("tanh", call, args)

    def _op_nn_relu(self, call, args):
        return self._unary("relu", call, args)

    def _op_nn_gelu(self, call, args):
        return self._unary("gelu", call, args)

    def _op_nn_softmax(self, call, args):
        return self.emit("softmax", [self.materialise(args[0])], _shape(call),
                         axis=_axis(int(call.attrs.axis), len(_shape(call))))

    def _op_nn_layer_norm(self, call, args):
        x, gamma, beta = args
        nd = len(_shape(call))
        if [_axis(a, nd) for a in _ints(call.attrs.axes)] != [nd - 1]:
            raise PassError("layer_norm is only supported over the last axis")
        return self.emit("layernorm", [self.materialise(x), self.operand(gamma),
                                       self.operand(beta)], _shape(call),
                         eps=float(call.attrs.epsilon))

    def _op_matmul(self, call, args):
        a, b = args
        if isinstance(b, Const):
            raise PassError("a constant-weight matmul reached the emitter: it was not "
                            "partitioned onto crossbars")
        return self.emit("matmul", [self.materialise(a), self.materialise(b)], _shape(call))

    def _op_astype(self, call, args):
        if str(call.attrs.dtype) != "float32":
            raise PassError(f"astype to {call.attrs.dtype} is not supported")
        return args[0]

    def _op_broadcast_to(self, call, args):
        (x,) = args
        if isinstance(x, Const):
            return Const(np.broadcast_to(x.value, _shape(call)).copy())
        raise PassError("broadcast_to of a computed tensor is not supported")

    def _op_reshape(self, call, args):
        x, shape = args[0], _shape(call)
        if isinstance(x, Const):
            return Const(x.value.reshape(shape))
        x = self.materialise(x)
        if shape[0] != x.shape[0]:
            raise PassError(f"reshape {list(x.shape)} -> {list(shape)} moves the batch axis")
        return x if shape == x.shape else self.emit("reshape", [x], shape,
                                                    shape=list(shape[1:]))

    _op_squeeze = _op_reshape
    _op_expand_dims = _op_reshape

    def _op_permute_dims(self, call, args):
        (x,) = args
        nd = len(_shape(call))
        axes = _ints(call.attrs.axes) if call.attrs.axes is not None else \
            list(range(nd))[::-1]
        if isinstance(x, Const):
            return Const(np.transpose(x.value, axes))
        if isinstance(x, Lazy):
            x, axes = x.reg, [x.perm[a] for a in axes]
        return self._transpose(x, tuple(axes))

    def _transpose(self, x: Reg, perm: tuple[int, ...]):
        if perm[0] != 0:
            return Lazy(x, perm)
        if perm == tuple(range(len(perm))):
            return x
        return self.emit("transpose", [x], [x.shape[p] for p in perm], perm=list(perm))

    def _slice(self, x, axis: int, start: int, stop: int):
        """Slice a logical axis of a register or a pending transpose."""
        if isinstance(x, Lazy):
            real = self._slice(x.reg, x.perm[axis], start, stop)
            return Lazy(real, x.perm)
        x = self.materialise(x)
        if axis == 0:
            raise PassError("slicing the batch axis is not supported")
        shape = list(x.shape)
        stop = min(stop, shape[axis])
        if (start, stop) == (0, shape[axis]):
            return x
        shape[axis] = stop - start
        return self.emit("slice", [x], shape, axis=axis, start=start, stop=stop)

    def _op_strided_slice(self, call, args):
        x = args[0]
        axes, begin, end = (_ints(a) for a in call.args[1:4])
        strides = _ints(call.args[4]) if len(call.args) > 4 else [1] * len(axes)
        if any(s != 1 for s in strides):
            raise PassError("strided_slice with a stride other than 1 is not supported")
        nd = len(x.shape)
        for a, b, e in zip(axes, begin, end):
            x = self._slice(x, _axis(a, nd), b, e)
        return x

    def _op_take(self, call, args):
        x, idx = args
        if not (isinstance(idx, Const) and idx.value.size == 1 and idx.value.ndim == 0):
            raise PassError("take is only supported with one constant index")
        i = int(idx.value)
        axis = _axis(int(call.attrs.axis), len(x.shape))
        if isinstance(x, Const):
            return Const(np.take(x.value, i, axis=axis))
        if isinstance(x, Lazy):
            real_axis = x.perm[axis]
            r = self._drop_axis(self._slice(x.reg, real_axis, i, i + 1), real_axis)
            rest = tuple(p - (p > real_axis) for p in x.perm if p != real_axis)
            return self._transpose(r, rest)
        return self._drop_axis(self._slice(x, axis, i, i + 1), axis)

    def _drop_axis(self, x: Reg, axis: int) -> Reg:
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        return self.emit("reshape", [x], shape, shape=list(shape[1:]))

    def _op_concat(self, call, args):
        (tup,) = args
        regs = [self.materialise(v) for v in tup.items]
        axis = _axis(int(call.attrs.axis), len(_shape(call)))
        return self.emit("concat", regs, _shape(call), axis=axis)

    def _op_stack(self, call, args):
        (tup,) = args
        out = _shape(call)
        axis = _axis(int(call.attrs.axis), len(out))
        parts = []
        for v in tup.items:
            r = self.materialise(v)
            shape = (*r.shape[:axis], 1, *r.shape[axis:])
            parts.append(self.emit("reshape", [r], shape, shape=list(shape[1:])))
        return self.emit("concat", parts, out, axis=axis)

    def _op_split(self, call, args):
        x = args[0]
        nd = len(x.shape)
        axis = _axis(int(call.attrs.axis), nd)
        spec = call.attrs.indices_or_sections
        size = x.shape[axis]
        if isinstance(spec, int) or hasattr(spec, "value"):
            n = int(getattr(spec, "value", spec))
            bounds = [size * k // n for k in range(n + 1)]
        else:
            bounds = [0, *_ints(spec), size]
        return Tup(tuple(self._slice(x, axis, a, b) for a, b in itertools.pairwise(bounds)))

    # ---- digital ops of users' models (pool, reduce, log_softmax, clip, leaky_relu, pad)
    def _pool(self, call, args, mode: str):
        a = call.attrs
        if bool(a.ceil_mode):
            raise PassError(f"{call.op.name} with ceil_mode is not supported")
        if str(a.layout) not in ("NCW", "NCHW") or str(a.out_layout) != str(a.layout):
            raise PassError(f"{call.op.name} with layout {a.layout} is not supported")
        return self.emit("pool", [self.materialise(args[0])], _shape(call), mode=mode,
                         kernel=_ints(a.pool_size), stride=_ints(a.strides),
                         pads=_ints(a.padding), dilation=_ints(a.dilation),
                         count_include_pad=bool(a.count_include_pad))

    def _op_nn_max_pool2d(self, call, args):
        return self._pool(call, args, "max")

    def _op_nn_avg_pool2d(self, call, args):
        return self._pool(call, args, "avg")

    _op_nn_max_pool1d = _op_nn_max_pool2d
    _op_nn_avg_pool1d = _op_nn_avg_pool2d

    def _op_zeros_like(self, call, args):
        """max_pool2d's unused indices output: a constant, emitted only if it is read."""
        return Const(np.zeros(_shape(call), np.float32))

    def _reduce(self, call, args, mode: str):
        x = self.materialise(args[0])
        nd = len(x.shape)
        if call.attrs.axis is None:
            raise PassError(f"{mode} over every axis would reduce the batch axis")
        axes = sorted({_axis(a, nd) for a in _ints(call.attrs.axis)})
        if 0 in axes:
            raise PassError(f"{mode} over axes {axes} reduces the batch axis (0)")
        return self.emit("reduce", [x], _shape(call), mode=mode, axes=axes,
                         keepdims=bool(call.attrs.keepdims))

    def _op_mean(self, call, args):
        return self._reduce(call, args, "mean")

    def _op_sum(self, call, args):
        return self._reduce(call, args, "sum")

    def _op_max(self, call, args):
        return self._reduce(call, args, "max")

    def _op_nn_log_softmax(self, call, args):
        return self.emit("log_softmax", [self.materialise(args[0])], _shape(call),
                         axis=_axis(int(call.attrs.axis), len(_shape(call))))

    def _op_clip(self, call, args):
        """Bounds are PrimValues; an infinite one (hardsigmoid's clip(x, 0, inf)) becomes
        float32's largest value, which clips nothing and keeps the program finite."""
        big = float(np.finfo(np.float32).max)
        lo, hi = (float(np.clip(float(getattr(b.value, "value", b.value)), -big, big))
                  for b in call.args[1:3])
        return self.emit("clip", [self.materialise(args[0])], _shape(call), min=lo, max=hi)

    def _op_nn_leakyrelu(self, call, args):
        return self.emit("leaky_relu", [self.materialise(args[0])], _shape(call),
                         alpha=float(call.attrs.alpha))

    def _op_nn_pad(self, call, args):
        a = call.attrs
        if str(a.pad_mode) != "constant":
            raise PassError(f"pad mode {a.pad_mode} is not supported (constant only)")
        width = _ints(a.pad_width)
        begins, ends = width[0::2], width[1::2]
        if begins[0] or ends[0]:
            raise PassError("padding the batch axis is not supported")
        if min(width) < 0:
            raise PassError(f"negative pads {width} are not supported")
        big = float(np.finfo(np.float32).max)  # -inf: the padding before a max pool
        return self.emit("pad", [self.materialise(args[0])], _shape(call),
                         pads=begins + ends, value=float(np.clip(float(a.pad_value), -big, big)))

    # ---- manifest
    def finish(self, target: Target, model: dict, mod: tvm.IRModule):
        arrays: dict[str, np.ndarray] = {}
        layers = []
        for lid, func in enumerate(self.layers.values()):
            prefix = f"layer{lid}"
            own = program_arrays(func)
            arrays.update({f"{prefix}.{k}": v for k, v in own.items()})
            layers.append({"id": lid, **_layer_fields(func),
                           "arrays": {k: f"{prefix}.{k}" for k in own}})
        const_names = {}
        for cname, value in self.constants.items():
            arrays[f"const.{cname}"] = value
            const_names[cname] = f"const.{cname}"
        sched = dict(mod.attrs["farc.schedule"]) if mod.attrs and \
            "farc.schedule" in mod.attrs else {}
        manifest = {
            "model": model, "target": target.to_dict(), "constants": const_names,
            "layers": layers, "instructions": self.code,
            "schedule": _schedule(sched, layers, target),
        }
        return manifest, arrays


_LAYER_ATTRS = ("farc.xbar", "farc.in_scale", "farc.row_tiles", "farc.col_tiles", "farc.adc_step",
                "farc.codes", "farc.replicas", "farc.crossbars")
"""What codegen reads from each crossbar function, by the pass that leaves it."""


def _layer_fields(func: relax.Function) -> dict[str, Any]:
    """The layer dict of docs/tile-program.md (without id and arrays), from the crossbar
    function's attributes alone (its sections included: the IR, not the target, says how
    each layer is packed)."""
    a = func.attrs
    missing = [k for k in _LAYER_ATTRS if k not in a]
    if missing:
        raise PassError(f"crossbar layer {a['farc.layer']} lacks {', '.join(missing)}: "
                        "run QuantizeCrossbar, TileCrossbar and ScheduleCrossbar first")
    fields = layer_fields(xbar_of(func), int(a["farc.row_tiles"]), int(a["farc.col_tiles"]),
                          float(a["farc.in_scale"]), _plain(a["farc.adc_step"]))
    clipped = {"adc_calib_clipped": float(a["farc.adc_calib_clipped"])} \
        if "farc.adc_calib_clipped" in a else {}
    return {"name": str(a["farc.layer"]), "kind": str(a["farc.kind"]), "K": int(a["farc.K"]),
            "N": int(a["farc.N"]), **fields, **clipped, **_calib_stats(a),
            "replicas": int(a["farc.replicas"]),
            "crossbars": [[int(i) for i in rep] for rep in a["farc.crossbars"]]}


def _calib_stats(a: Any) -> dict[str, Any]:
    """`calib`: what calibration measured for the layer (docs/tile-program.md): the input
    range its s_x covers and, with a calibrated ADC, the partial-sum range of each row tile
    (or of each weight slice of each row tile)."""
    stats: dict[str, Any] = {}
    if "farc.calib_range" in a:
        stats["input_range"] = float(a["farc.calib_range"])
    if "farc.adc_pmax" in a:
        stats["adc_range"] = _plain(a["farc.adc_pmax"])
    return {"calib": stats} if stats else {}


def _plain(value: Any) -> Any:
    """An attribute value as JSON-ready Python: nested lists, ints stay ints (power-of-two
    steps), floats stay floats (uniform steps)."""
    if isinstance(value, int | float):
        return value
    if isinstance(value, tvm.tirx.FloatImm):
        return float(value.value)
    if isinstance(value, tvm.tirx.IntImm):
        return int(value.value)
    return [_plain(v) for v in value]


def _schedule(sched, layers: list[dict], target: Target) -> dict:
    used = sum(Geometry.from_layer(L).all_crossbars for L in layers)
    avail = int(sched.get("crossbars_available", 0)) if sched else 0
    return {
        "crossbars_used": used, "crossbars_available": avail,
        "utilization": used / avail if avail else 0.0,
        "order": "weight-stationary; independent LSTM heads/directions share one loop",
        "replicas": {L["name"]: L["replicas"] for L in layers if L["replicas"] > 1},
        "loop_groups": [[str(v) for v in g] for g in sched.get("loop_groups", [])],
        "layer_crossbars": {L["name"]: L["crossbars"] for L in layers},
        "cells_per_crossbar": target.crossbar.rows * target.crossbar.cols if layers else 0,
    }


def _scan_group(bindings: list, start: int) -> list:
    """Adjacent scans from `start` that do not read each other and share a length."""
    group = [bindings[start]]
    steps = int(bindings[start].value.args[1].ty.shape[1])
    defined = {bindings[start].var}
    for b in bindings[start + 1 :]:
        if not is_scan(b.value) or int(b.value.args[1].ty.shape[1]) != steps:
            break
        if any(v in defined for v in relax.analysis.free_vars(b.value)):
            break
        group.append(b)
        defined.add(b.var)
    return group
