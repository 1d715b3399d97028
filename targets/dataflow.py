"""Static shape walk of a tile program (docs/tile-program.md), for the cost model.

`walk(manifest)` infers every register's shape for ONE inference (batch = 1) and yields one
`Step` per executed instruction, with how many times it runs (the product of the trip
counts of the loops around it). It reads only the manifest (dicts), never arrays, so the
cost model needs neither numpy arrays nor `farc.runtime`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from farc.errors import ProgramError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One instruction as executed: its shapes and how often it runs per inference."""

    instr: dict[str, Any]
    """The instruction dict from the manifest."""
    path: tuple[int, ...]
    """Index path: (i,) at top level, (i, j) for instruction j of the loop at i, ..."""
    in_shapes: tuple[Shape, ...]
    """Shapes of the input registers (batch axis = 1, constants without it)."""
    out_shape: Shape | None
    """Shape of the output register, None for `output` and `loop`."""
    trips: int
    """Executions per inference: product of the enclosing loops' trip counts."""
    count: int = 0
    """For a `loop`: its trip count T (its body's steps have trips * T)."""
    loop_io: int = 0
    """For a `loop`: elements gathered and scattered per step."""


def numel(shape: Shape) -> int:
    return math.prod(shape)


def manifest_of(program: Any) -> dict[str, Any]:
    """Accept a Program (anything with `.manifest`) or a manifest dict."""
    return program.manifest if hasattr(program, "manifest") else program


def input_shapes(manifest: dict[str, Any]) -> dict[str, Shape]:
    """Program inputs by name, with the batch axis set to 1."""
    return {s["name"]: (1, *[int(d) for d in s["shape"][1:]]) for s in manifest["inputs"]}


def const_shapes(manifest: dict[str, Any]) -> dict[str, Shape]:
    arrays = manifest.get("arrays", {})
    return {name: tuple(arrays[arr]["shape"]) for name, arr in manifest.get("constants",
                                                                          {}).items()}


def walk(manifest: dict[str, Any]) -> Iterator[Step]:
    """Every instruction in program order (loop bodies once, with `trips` = T)."""
    env: dict[str, Shape] = {}
    ctx = _Ctx(manifest)
    yield from _walk(manifest["instructions"], env, ctx, (), 1)


class _Ctx:
    def __init__(self, manifest: dict[str, Any]) -> None:
        self.inputs = input_shapes(manifest)
        self.consts = const_shapes(manifest)
        self.layers = {int(lay["id"]): lay for lay in manifest["layers"]}


def _walk(instrs: list[dict], env: dict[str, Shape], ctx: _Ctx, path: tuple[int, ...],
          trips: int) -> Iterator[Step]:
    for i, ins in enumerate(instrs):
        where = (*path, i)
        try:
            ins_shapes = tuple(env[r] for r in ins.get("in", []))
        except KeyError as exc:
            raise ProgramError(f"instruction {where} ({ins['op']}): register {exc} is read "
                               "before it is written") from None
        if ins["op"] == "loop":
            yield from _walk_loop(ins, env, ctx, where, trips)
            continue
        out = _out_shape(ins, ins_shapes, ctx)
        if "out" in ins and out is not None:
            env[ins["out"]] = out
        yield Step(ins, where, ins_shapes, out, trips)


def _walk_loop(ins: dict, env: dict[str, Shape], ctx: _Ctx, where: tuple[int, ...],
               trips: int) -> Iterator[Step]:
    t = loop_count(ins, env)
    io = 0
    for g in ins["gather"]:
        src = env[g["src"]]
        ax = g["axis"] % len(src)
        env[g["dst"]] = src[:ax] + src[ax + 1:]
        io += numel(env[g["dst"]])
    yield from _walk(ins["body"], env, ctx, where, trips * t)
    for s in ins["scatter"]:
        src = env[s["src"]]
        io += numel(src)
        ax = s["axis"] if s["axis"] >= 0 else s["axis"] + len(src) + 1
        env[s["dst"]] = (*src[:ax], t, *src[ax:])
    yield Step(ins, where, (), None, trips, count=t, loop_io=io)


def loop_count(ins: dict, env: dict[str, Shape]) -> int:
    """Trip count T of a loop: the length of register count.reg along count.axis."""
    return int(env[ins["count"]["reg"]][ins["count"]["axis"]])


def _out_shape(ins: dict, s: tuple[Shape, ...], ctx: _Ctx) -> Shape | None:
    op = ins["op"]
    if op == "input":
        return ctx.inputs[ins["name"]]
    if op == "const":
        return ctx.consts[ins["name"]]
    if op == "output":
        return None
    if op == "mvm":
        return (*s[0][:-1], int(ctx.layers[int(ins["layer"])]["N"]))
    if op in ("add", "sub", "mul"):
        return _broadcast(s[0], s[1])
    if op in ("sigmoid", "tanh", "gelu", "scale", "softmax", "layernorm"):
        return s[0]
    if op == "matmul":
        return (*_broadcast(s[0][:-2], s[1][:-2]), s[0][-2], s[1][-1])
    return _move_shape(ins, s)


def _move_shape(ins: dict, s: tuple[Shape, ...]) -> Shape:
    op = ins["op"]
    if op == "reshape":
        return _reshape(s[0], [int(d) for d in ins["shape"]])
    if op == "transpose":
        return tuple(s[0][p] for p in ins["perm"])
    if op == "concat":
        ax = ins["axis"] % len(s[0])
        return (*s[0][:ax], sum(x[ax] for x in s), *s[0][ax + 1:])
    if op == "slice":
        ax = ins["axis"] % len(s[0])
        n = len(range(*slice(ins["start"], ins["stop"]).indices(s[0][ax])))
        return (*s[0][:ax], n, *s[0][ax + 1:])
    if op == "zeros":
        return (s[0][0], *[int(d) for d in ins["shape"]])
    raise ProgramError(f"cost model: unknown op {op!r}")


def _reshape(src: Shape, new: list[int]) -> Shape:
    rest = numel(src[1:])
    if -1 in new:
        known = math.prod(d for d in new if d != -1)
        new = [rest // known if d == -1 else d for d in new]
    return (src[0], *new)


def _broadcast(a: Shape, b: Shape) -> Shape:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(max(x, y) for x, y in zip(a, b))
