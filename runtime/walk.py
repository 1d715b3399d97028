"""The one static walk of a tile program: every register's shape and how often each
instruction runs, from the manifest alone (no arrays, no arithmetic).

`walk(program)` yields one `Step` per instruction in program order, loop bodies once with
their trip counts multiplied in. Output shapes come from the opcode table's shape rules
(`isa.OPS[op].shape`). Both static consumers read it: the counters' static part
(`counters.static_counts`) and the cost model (`farc.targets.cost`), and both turn a step
into events with the one event rule `counters.record`, the rule the emulator applies to the
shapes it sees at run time."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from farc.errors import ProgramError

from .isa import OPS, Shape, ShapeContext


@dataclass(frozen=True)
class Step:
    """One instruction as executed: its shapes and how often it runs per walk."""

    instr: dict[str, Any]
    """The instruction dict from the manifest."""
    path: tuple[int, ...]
    """Index path: (i,) at top level, (i, j) for instruction j of the loop at i, ..."""
    in_shapes: tuple[Shape, ...]
    """Shapes of the input registers (batch axis included, constants without it)."""
    out_shape: Shape | None
    """Shape of the output register, None for `output` and `loop`."""
    trips: int
    """Executions per run: product of the enclosing loops' trip counts."""
    count: int = 0
    """For a `loop`: its trip count T (its body's steps have trips * T)."""
    loop_io: int = 0
    """For a `loop`: elements gathered and scattered per step."""


def numel(shape: Shape) -> int:
    return math.prod(shape)


def manifest_of(program: Any) -> dict[str, Any]:
    """Accept a Program (anything with `.manifest`) or a manifest dict."""
    return program.manifest if hasattr(program, "manifest") else program


def input_shapes(manifest: dict[str, Any], batch: int = 1,
                 given: Mapping[str, Shape] | None = None) -> dict[str, Shape]:
    """Program inputs by name: the spec's shape with the batch axis set to `batch`, or the
    full shape in `given` (for inputs with unknown dimensions beyond the batch)."""
    shapes = {}
    for spec in manifest["inputs"]:
        full = (given or {}).get(spec["name"])
        shape = tuple(full) if full is not None else (batch, *spec["shape"][1:])
        if any(d is None for d in shape):
            raise ProgramError(f"input {spec['name']!r} has unknown dims {spec['shape']}; "
                               "give its full shape (input_shapes)")
        shapes[spec["name"]] = tuple(int(d) for d in shape)
    return shapes


def shape_context(manifest: dict[str, Any], batch: int = 1,
                  given: Mapping[str, Shape] | None = None) -> ShapeContext:
    """Everything the shape rules read besides input shapes, from the manifest alone."""
    arrays = manifest.get("arrays", {})
    return ShapeContext(
        inputs=input_shapes(manifest, batch, given),
        consts={name: tuple(arrays[arr]["shape"])
                for name, arr in manifest.get("constants", {}).items()},
        layer_n={int(lay["id"]): int(lay["N"]) for lay in manifest["layers"]})


def infer_shape(ins: dict[str, Any], in_shapes: tuple[Shape, ...],
                ctx: ShapeContext) -> Shape | None:
    """The output shape numpy produces for one (non-loop) instruction."""
    rule = OPS[ins["op"]].shape
    if rule is None:
        raise ProgramError(f"opcode {ins['op']!r} has no shape rule")
    try:
        return rule(tuple(in_shapes), ins, ctx)
    except ValueError as exc:  # the digital ops' rank checks (pool, reduce, pad)
        raise ProgramError(f"{ins['op']}: {exc}") from None


def walk(program: Any, batch: int = 1,
         given: Mapping[str, Shape] | None = None) -> Iterator[Step]:
    """Every instruction of `program` (Program or manifest) in order, loop bodies once with
    `trips` multiplied by T, a loop's own step after its body. `batch` sets the inputs'
    batch axis; `given` gives full input shapes where the spec has unknown dimensions."""
    manifest = manifest_of(program)
    ctx = shape_context(manifest, batch, given)
    yield from _walk(manifest["instructions"], {}, ctx, (), 1)


def _walk(instrs: list[dict], env: dict[str, Shape], ctx: ShapeContext,
          path: tuple[int, ...], trips: int) -> Iterator[Step]:
    for i, ins in enumerate(instrs):
        where = (*path, i)
        try:
            in_shapes = tuple(env[r] for r in ins.get("in", []))
        except KeyError as exc:
            raise ProgramError(f"instruction {where} ({ins['op']}): register {exc} is read "
                               "before it is written") from None
        if ins["op"] == "loop":
            yield from _walk_loop(ins, env, ctx, where, trips)
            continue
        out = infer_shape(ins, in_shapes, ctx)
        if "out" in ins and out is not None:
            env[ins["out"]] = out
        yield Step(ins, where, in_shapes, out, trips)


def _walk_loop(ins: dict, env: dict[str, Shape], ctx: ShapeContext, where: tuple[int, ...],
               trips: int) -> Iterator[Step]:
    """Body temporaries stay in the body (as in the emulator): only carries and scatter
    destinations reach the registers after the loop."""
    T = loop_count(ins, env)
    body = dict(env)
    io = 0
    for g in ins["gather"]:
        src = env[g["src"]]
        ax = g["axis"] % len(src)
        body[g["dst"]] = src[:ax] + src[ax + 1:]
        io += numel(body[g["dst"]])
    yield from _walk(ins["body"], body, ctx, where, trips * T)
    for s in ins["scatter"]:
        src = body[s["src"]]
        io += numel(src)
        ax = s["axis"] if s["axis"] >= 0 else s["axis"] + len(src) + 1
        env[s["dst"]] = (*src[:ax], T, *src[ax:])
    for reg in ins["carry"]:
        env[reg] = body[reg]
    yield Step(ins, where, (), None, trips, count=T, loop_io=io)


def loop_count(ins: dict, env: Mapping[str, Shape]) -> int:
    """Trip count T of a loop: the length of register count.reg along count.axis."""
    return int(env[ins["count"]["reg"]][ins["count"]["axis"]])
