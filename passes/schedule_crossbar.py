"""ScheduleCrossbar: weight-stationary placement, optional replication, overlap-friendly order.

Expects: Relax after TileCrossbar (crossbar functions with `farc.row_tiles`/`farc.col_tiles`).

Leaves, in a new module (the input is left unchanged):
- every tile of every layer on its own physical crossbar, for the whole run (ids are
  consecutive: layer by first use, then replica, row tile, column tile); a PassError naming
  both numbers when the model needs more crossbars than the target has;
- with `replicate`, spare crossbars given by `farc.targets.schedule.plan_replicas`, the one
  replication rule: always to the throughput bottleneck, the layer with the most vectors
  per replica per image (tokens for a linear layer, steps for an LSTM cell; a replica takes
  some of one image's tokens, or, for an LSTM cell whose steps are a recurrence, another
  image in flight), stopping with a reason when the bottleneck's next replica does not fit
  or it has one replica per vector (a replica elsewhere would not raise throughput);
- `main`'s bindings reordered so that the LSTM scans that do not depend on each other (every
  head and direction of a FAR block) are adjacent, their inputs computed before them: the
  emitter puts each such group into one `loop`, so they run in lockstep;
- attributes `farc.replicas`, `farc.first_crossbar`, `farc.vectors` and `farc.crossbars`
  (the physical ids of each replica's tiles) on the crossbar functions `main` uses, and the
  module attribute `farc.schedule` (crossbars used/available, loop groups).
Run before emit_tile_program (codegen)."""

from __future__ import annotations

import math

import tvm
from farc.passes._crossbar_ir import CODEGEN, is_scan, with_functions, xbar_of
from farc.targets import Target
from farc.targets.schedule import layer_load, plan_replicas
from tvm import relax

from farc.errors import PassError


@tvm.transform.module_pass(opt_level=0, name="ScheduleCrossbar")
class ScheduleCrossbar:
    """Place tiles on physical crossbars and order main for overlap.

    Parameters
    ----------
    target : the hardware target (chip section: number of crossbars)
    replicate : give spare crossbars to hot layers"""

    def __init__(self, target: Target, replicate: bool = False):
        self.target, self.replicate = target, replicate

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        order, vectors, calls = _layer_uses(mod)
        tiles = {g: _tiles(mod[g]) for g in order}
        used = sum(tiles.values())
        have = self.target.crossbars
        if used > have:
            raise PassError(f"model needs {used:,} crossbars, target "
                            f"'{self.target.name}' has {have:,}")
        replicas = {g: 1 for g in order}
        reason = "replication off"
        if self.replicate:
            loads = {g: layer_load(vectors[g], calls[g], xbar_of(mod[g]).cycles,
                                   self.target.latency.mvm_pipeline_cycles) for g in order}
            plan = plan_replicas(tiles, loads, have - used, {g: g.name_hint for g in order},
                                 vectors)
            replicas, reason = plan.replicas, plan.reason
            used += plan.added
        main, groups = _order_main(mod["main"])
        placed = _place(mod, order, tiles, replicas, vectors)
        return with_functions(mod, {**placed, mod.get_global_var("main"): main}).with_attr(
            "farc.schedule", {"crossbars_used": used, "crossbars_available": have,
                              "loop_groups": [[str(v) for v in g] for g in groups],
                              "replication": reason})


def _place(mod: tvm.IRModule, order: list, tiles: dict, replicas: dict, vectors: dict
           ) -> dict[tvm.ir.GlobalVar, relax.Function]:
    """Consecutive crossbar ids, layer by first use, then replica, row tile, column tile."""
    first, out = 0, {}
    for gv in order:
        per = tiles[gv]
        out[gv] = mod[gv].with_attrs({
            "farc.replicas": replicas[gv], "farc.first_crossbar": first,
            "farc.vectors": vectors[gv],
            "farc.crossbars": [list(range(first + r * per, first + (r + 1) * per))
                               for r in range(replicas[gv])]})
        first += per * replicas[gv]
    return out


def _tiles(func: relax.Function) -> int:
    return int(func.attrs["farc.row_tiles"]) * int(func.attrs["farc.col_tiles"])


# ---- which crossbar layers main uses, in order, and how many vectors each sees ----

def _is_crossbar_call(mod: tvm.IRModule, e: relax.Expr) -> bool:
    return (isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar)
            and (mod[e.op].attrs or {}).get("Codegen") == CODEGEN)


def _layer_uses(mod: tvm.IRModule) -> tuple[list, dict, dict]:
    """Crossbar layers in order of first use, input vectors per image through each, and
    MVM instructions per image (one per step inside a scan)."""
    order: list = []
    vectors: dict = {}
    calls: dict = {}

    def use(gv, n: int, k: int = 1) -> None:
        if gv not in vectors:
            order.append(gv)
            vectors[gv] = calls[gv] = 0
        vectors[gv] += n
        calls[gv] += k

    for binding in _bindings(mod["main"]):
        v = binding.value
        if _is_crossbar_call(mod, v):
            use(v.op, math.prod([int(s) for s in v.args[0].ty.shape][1:-1]))
        elif is_scan(v):
            steps = int(v.args[1].ty.shape[1])
            for inner in _bindings(mod[v.args[2]]):
                if _is_crossbar_call(mod, inner.value):
                    use(inner.value.op, steps, steps)
    return order, vectors, calls


def _bindings(func: relax.Function) -> list:
    return [b for block in func.body.blocks for b in block.bindings]


# ---- reorder main so independent scans are adjacent ----

def _order_main(main: relax.Function) -> tuple[relax.Function, list[list]]:
    if len(main.body.blocks) != 1:
        return main, []
    bindings = list(main.body.blocks[0].bindings)
    order, groups = _grouped_order(bindings)
    block = relax.DataflowBlock([bindings[i] for i in order])
    body = relax.SeqExpr([block], main.body.body)
    relax.expr._update_type(body, main.body.ty)  # same value, same type
    func = relax.Function(main.params, body, main.ret_ty, main.is_pure, main.attrs)
    return func, [[bindings[i].var.name for i in g] for g in groups]


def _grouped_order(bindings: list) -> tuple[list[int], list[list[int]]]:
    index = {b.var: i for i, b in enumerate(bindings)}
    anc = []
    for b in bindings:
        mask = 0
        for v in relax.analysis.free_vars(b.value):
            if v in index:
                mask |= anc[index[v]] | (1 << index[v])
        anc.append(mask)
    scans = [i for i, b in enumerate(bindings) if is_scan(b.value)]
    done, order, groups, grouped = 0, [], [], set()
    for s in scans:
        if s in grouped:
            continue
        group = [s]
        for t in scans:
            if t > s and t not in grouped and not any(anc[t] >> g & 1 for g in group):
                group.append(t)
        grouped.update(group)
        groups.append(group)
        need = 0
        for g in group:
            need |= anc[g]
        for i in range(len(bindings)):
            if need >> i & 1 and not done >> i & 1:
                order.append(i)
                done |= 1 << i
        order.extend(group)
        for g in group:
            done |= 1 << g
    order.extend(i for i in range(len(bindings)) if not done >> i & 1)
    return order, groups
