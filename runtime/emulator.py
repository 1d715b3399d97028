"""The functional ReRAM emulator: the executable meaning of every opcode.

One small handler per opcode (HANDLERS, whose key set tests/runtime/test_isa.py checks
against the opcode table runtime/isa.py); events go through the one event rule
(counters.record); the crossbar arithmetic lives in crossbar.py and
the device models in noise.py. Per-layer arrays are prepared once at construction, so a run
is a walk over the instructions with numpy doing the work. Registers are float32 tensors
whose first axis is the batch; a loop body runs once per step for every LSTM it holds
(all heads and directions of a block in lockstep)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from farc.errors import EmulatorError
from farc.limits import MAX_STEPS_ENV, MEMORY_ENV

from . import crossbar as xb
from .bounds import check_run_bounds
from .counters import Counters, record, record_move
from .isa import HANDLED_OPS, OPS, disagreements
from .lockstep import Group, HoistedInputs, hoist_inputs, mvm_hoisted, mvm_stacked, plan_body
from .noise import ProgrammedLayer, noisy_partial_sums, program_layer
from .numerics import Geometry
from .plan import Plan, run_plan
from .program import Program
from .schema import DeviceSection
from .split import SplitPlan, mvm_split, plan_split

Handler = Callable[["Emulator", dict[str, Any], list[np.ndarray]], np.ndarray | None]
HANDLERS: dict[str, Handler] = {}
MVM_PATHS = ("auto", "bitlevel", "fast")


def handler(*ops: str) -> Callable[[Handler], Handler]:
    """Register `fn` as the meaning of opcodes `ops`; each must be in the opcode table."""
    def register(fn: Handler) -> Handler:
        for op in ops:
            if op not in OPS:
                raise EmulatorError(f"handler for {op!r}: not an opcode of runtime/isa.py")
            HANDLERS[op] = fn
        return fn
    return register


def handler_disagreements() -> list[str]:
    """How HANDLERS and the opcode table disagree: every opcode but `loop` (which `_loop`
    runs) needs exactly one handler."""
    return disagreements("emulator HANDLERS", HANDLERS, HANDLED_OPS)


@dataclass(frozen=True)
class MvmTrace:
    """One executed crossbar MVM: float input x [V, K], integer accumulators y_int [V, N]
    (before the rescale), float output y [V, N]."""

    x: np.ndarray
    y_int: np.ndarray
    y: np.ndarray


class Emulator:
    """Runs a validated Program.

    Parameters
    ----------
    program: the tile program.
    noise: device non-idealities; None (or an all-ideal config) is bit-exact to the numerics.
    seed: seeds programming-time draws and read noise; same seed, same outputs.
    mvm_path: 'auto' (fast path on layers where it is provably exact, the split path of
        runtime/split.py on lossy ones: same integers), 'bitlevel' (always the
        per-cycle/per-column ADC path, the definition) or 'fast' (refused unless every layer
        is lossless).
    lockstep: run the same instruction of every LSTM in a loop body as one numpy call
        (runtime/lockstep.py); False runs the body one instruction at a time.
    hoist: with lockstep, move the x_t part of fast-path LSTM cell MVMs out of the loop
        (one matmul over all steps; exact, see lockstep.Hoist).
    trace: record every crossbar MVM's input, integer result and output in `traces`
        (layer id -> list of `MvmTrace`, in execution order), for per-layer verification;
        runs loop bodies one instruction at a time.
    step_plan: run through the step plan (runtime/plan.py: compiled once, same outputs and
        counters) where it applies: ideal devices, mvm_path auto or fast, lockstep and hoist
        on, no trace. False runs this interpreter, the definition.
    """

    def __init__(self, program: Program, noise: DeviceSection | None = None, seed: int = 0,
                 mvm_path: str = "auto", lockstep: bool = True, hoist: bool = True,
                 trace: bool = False, step_plan: bool = True) -> None:
        if mvm_path not in MVM_PATHS:
            raise EmulatorError(f"mvm_path {mvm_path!r} not in {MVM_PATHS}")
        if not program.validated:
            program.validate()
        self.program = program
        self.traces: dict[int, list[MvmTrace]] | None = {} if trace else None
        lockstep = lockstep and not trace
        self.noise = noise if noise is not None and noise.enabled else None
        self.mvm_path = mvm_path
        self.layers = [xb.prepare_layer(i, L, program.arrays)
                       for i, L in enumerate(program.layers)]
        self.geoms = [Geometry.from_layer(L) for L in program.layers]
        self.consts = {k: program.arrays[v] for k, v in program.manifest["constants"].items()}
        if mvm_path == "fast":
            lossy = [pl.index for pl in self.layers if not pl.lossless]
            if lossy or self.noise:
                raise EmulatorError(f"mvm_path 'fast' is not exact here: layers {lossy} have a "
                                    "lossy ADC" if lossy else "mvm_path 'fast' ignores noise")
        prog_seed, read_seed = np.random.SeedSequence(seed).spawn(2)
        self._read_rng = np.random.default_rng(read_seed)
        self._devices = self._program_devices(np.random.default_rng(prog_seed))
        self._splits: dict[int, SplitPlan | None] = {}
        self._plans = {id(ins): plan for ins in program.instructions if ins["op"] == "loop"
                       and lockstep and (plan := plan_body(ins["body"], self.layers,
                                                           fast_mvm=self._fast_ok(),
                                                           gathers=ins["gather"],
                                                           live_out=_live_out(ins),
                                                           split=self._split_plan))
                       is not None}
        self.counters = Counters()
        self._bounded: set[tuple] = set()
        self._events: dict[tuple, Counters] = {}
        self._pulses = 0
        self._record = True
        self._hoist = hoist
        self._hoisted: dict[int, HoistedInputs] = {}
        self._step = 0
        self._step_out: dict[int, np.ndarray] = {}
        self._stack_ok: dict[int, bool] = {}
        self._inputs: dict[str, np.ndarray] = {}
        self._outputs: dict[str, np.ndarray] = {}
        self._plan = Plan(self) if step_plan and lockstep and hoist and self._fast_ok() else None

    def _program_devices(self, rng: np.random.Generator) -> list[list[ProgrammedLayer]] | None:
        """Conductances (and column ADC mismatch) of every replica of every layer, drawn
        once (programming time)."""
        if self.noise is None:
            return None
        return [[program_layer(pl.levels, pl.params.crossbar.cell_bits, self.noise, rng)
                 for _ in range(L["replicas"])]
                for pl, L in zip(self.layers, self.program.layers)]

    def _fast_ok(self) -> bool:
        return self._devices is None and self.mvm_path != "bitlevel"

    def reset_counters(self) -> None:
        self.counters = Counters()

    # ---- running
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the program once on a batch; counters accumulate across runs.

        What depends on the input shapes alone is done once per shape: the bound check
        (a static walk of the whole program) and the events (every event but the DAC
        pulses is a function of the shapes, as static_counts shows): a later run with the
        same shapes adds the recorded events instead of recording them again. At batch 1
        these two were a third of a run."""
        self._inputs = self._check_inputs(inputs)
        shapes = tuple(sorted((k, v.shape) for k, v in self._inputs.items()))
        key = (shapes, os.environ.get(MEMORY_ENV), os.environ.get(MAX_STEPS_ENV))
        if key not in self._bounded:
            check_run_bounds(self.program.manifest, given=dict(shapes))
            self._bounded.add(key)
        if self._plan is not None and (out := run_plan(self, shapes)) is not None:
            return out
        known = self._events.get(shapes)
        outer = self.counters
        if known is None:
            self.counters = Counters()
        self._outputs = {}
        self._pulses = 0
        self._record = known is None
        try:
            with np.errstate(over="ignore"):  # exp overflow in sigmoid/softmax is handled
                self._block(self.program.instructions, {}, "")
        finally:
            events, self.counters = self.counters, outer
        if known is None:
            self._events[shapes] = known = events
        self.counters.add(known)
        self.counters.dac_pulses += self._pulses
        return self._outputs

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {s["name"]: s for s in self.program.inputs}
        extra = sorted(set(inputs) - set(specs))
        if extra:
            raise EmulatorError(f"unknown inputs {extra}; the program takes {sorted(specs)}")
        out = {}
        for name, spec in specs.items():
            if name not in inputs:
                raise EmulatorError(f"missing input {name!r}")
            x = np.asarray(inputs[name])
            if not np.issubdtype(x.dtype, np.floating):
                raise EmulatorError(f"input {name!r} has dtype {x.dtype}, expected float32")
            want = spec["shape"]
            if x.ndim != len(want) or any(w is not None and w != d
                                          for w, d in zip(want, x.shape)):
                shown = ["batch" if w is None else w for w in want]
                raise EmulatorError(f"input {name!r} has shape {list(x.shape)}, expected "
                                    f"{shown}")
            out[name] = x.astype(np.float32, copy=False)
        return out

    def _block(self, block: list[dict[str, Any]], regs: dict[str, np.ndarray],
               prefix: str) -> None:
        for i, ins in enumerate(block):
            if ins["op"] == "loop":
                self._loop(ins, regs, f"{prefix}{i}.")
            else:
                self._exec(i, ins, regs, prefix)

    def _exec(self, i: int, ins: dict[str, Any], regs: dict[str, np.ndarray],
              prefix: str) -> None:
        """One instruction: handler, one-line error naming it, events."""
        xs = [regs[r] for r in ins.get("in", [])]
        try:
            out = HANDLERS[ins["op"]](self, ins, xs)
        except EmulatorError as exc:
            raise EmulatorError(f"instruction {prefix}{i} ({ins['op']}): {exc}") from None
        except (ValueError, IndexError) as exc:
            shapes = [list(x.shape) for x in xs]
            raise EmulatorError(f"instruction {prefix}{i} ({ins['op']}) in={ins.get('in')} "
                                f"shapes {shapes}: {exc}") from None
        if self._record:
            record(self.counters, ins, [x.shape for x in xs],
                   None if out is None else out.shape, *self._placement(ins))
        if out is not None:
            regs[ins["out"]] = out

    def _placement(self, ins: dict[str, Any]) -> tuple[Geometry | None, list | None]:
        """What the event rule needs of an mvm's layer: geometry and crossbar ids."""
        if ins["op"] != "mvm":
            return None, None
        return self.geoms[ins["layer"]], self.program.layers[ins["layer"]]["crossbars"]

    # ---- lockstep loop bodies (runtime/lockstep.py)
    def _run_plan(self, plan: list[list[Group]], regs: dict[str, np.ndarray], prefix: str,
                  origin: dict[int, tuple]) -> None:
        for level in plan:
            for g in level:
                ok = self._stack_ok.get(id(g))
                if ok is None:  # shapes repeat every step: decide once per loop run
                    ok = self._stack_ok[id(g)] = (len(g.members) > 1 or g.mvm is not None) \
                        and self._stackable(g, regs)
                if ok:
                    self._exec_group(g, regs, prefix, origin)
                else:
                    for i, ins in g.members:
                        self._exec(i, ins, regs, prefix)

    @staticmethod
    def _stackable(g: Group, regs: dict[str, np.ndarray]) -> bool:
        """Same shape per input position across members, one rank across positions.
        Remembered per group and shapes of its first member (steps repeat the shapes)."""
        key = tuple(regs[names[0]].shape for names in g.inputs)
        ok = g.stackable.get(key)
        if ok is None:
            same = all(regs[r].shape == key[k] for k, names in enumerate(g.inputs)
                       for r in names)
            ok = g.stackable[key] = same and len({len(s) for s in key}) <= 1
        return ok

    def _stacked_input(self, g: Group, p: int, regs: dict[str, np.ndarray],
                       origin: dict[int, tuple]) -> np.ndarray:
        """Input position p of a group, stacked: slices of this step's producer groups
        when the plan knows them, else by identity (origin) or a copy."""
        runs = g.src_runs[p] if g.src_runs else None
        if runs is not None:
            outs = self._step_out
            if all(id(pg) in outs for pg, _, _ in runs):
                parts = [outs[id(pg)][a:b] for pg, a, b in runs]
                return parts[0] if len(parts) == 1 else np.concatenate(parts)
        return _stack([regs[r] for r in g.inputs[p]], origin)

    def _exec_group(self, g: Group, regs: dict[str, np.ndarray], prefix: str,
                    origin: dict[int, tuple]) -> None:
        xs = [self._stacked_input(g, p, regs, origin) for p in range(len(g.inputs))]
        try:
            hx = self._hoisted.get(id(g))
            if hx is not None:
                h = _stack([regs[r] for r in g.hoist.others], origin)
                out, pulses = mvm_hoisted(g.mvm, hx, self._step, h,
                                          xs[0] if g.mvm.split is not None else None)
                self._pulses += pulses
            elif g.mvm is not None:
                out, pulses = mvm_stacked(g.mvm, xs[0])
                self._pulses += pulses
            else:
                out = HANDLERS[g.op](self, g.axis_ins or g.members[0][1], xs)
        except (ValueError, IndexError) as exc:
            raise EmulatorError(f"instruction {prefix}{g.members[0][0]} ({g.op}, lockstep group "
                                f"of {len(g.members)}): {exc}") from None
        self._step_out[id(g)] = out
        for k, (name, view, keep) in enumerate(zip(g.outs, out, g.keep_origin)):
            regs[name] = view
            if keep:
                origin[id(view)] = (out, k, view, name)
        if self._record:
            for _, ins in g.members:
                record(self.counters, ins, [x.shape[1:] for x in xs], out.shape[1:],
                       *self._placement(ins))

    def _loop(self, ins: dict[str, Any], regs: dict[str, np.ndarray], prefix: str) -> None:
        """Run the body once per step; carry registers persist, body temporaries do not.
        Events are recorded on the first step and multiplied by the trip count (every step
        sees the same shapes); only the data-dependent DAC pulses are counted every step."""
        T = regs[ins["count"]["reg"]].shape[ins["count"]["axis"]]
        for g in ins["gather"]:  # step t reads index t (or T-1-t): lengths must be T
            n = regs[g["src"]].shape[g["axis"] % regs[g["src"]].ndim]
            if n != T:
                raise EmulatorError(f"instruction {prefix[:-1]} (loop): gathers {g['src']!r} "
                                    f"of length {n} along axis {g['axis']} over {T} steps")
        plan = self._plans.get(id(ins))
        if plan is not None:
            self._loop_lockstep(ins, regs, prefix, plan, T)
            return
        local = dict(regs)
        outs: dict[str, np.ndarray] = {}
        outer, recording = self.counters, self._record
        step = Counters()
        self.counters = step
        for t in range(T):
            for g in ins["gather"]:
                i = T - 1 - t if g.get("reverse") else t
                src = regs[g["src"]]
                local[g["dst"]] = src[(slice(None),) * (g["axis"] % src.ndim) + (i,)]
                if self._record:
                    record_move(step, local[g["dst"]].shape)
            self._block(ins["body"], local, prefix)
            for s in ins["scatter"]:
                self._scatter(s, local[s["src"]], t, T, outs)
            self._record = False
        self._close_loop(ins, regs, local, outer, recording, step, T)
        regs.update(outs)

    def _close_loop(self, ins: dict[str, Any], regs: dict[str, np.ndarray],
                    local: dict[str, np.ndarray], outer: Counters, recording: bool,
                    step: Counters, T: int) -> None:
        """After the last step: restore the outer counters (adding one step's events T
        times, since every step sees the same shapes) and hand the carries back."""
        self.counters, self._record = outer, recording
        if recording:
            outer.add(step, times=T)
            outer.instructions += 1
        for reg in ins["carry"]:
            regs[reg] = local[reg]

    def _loop_lockstep(self, ins: dict[str, Any], regs: dict[str, np.ndarray], prefix: str,
                       plan: list[list[Group]], T: int) -> None:
        """_loop with grouped body, gathers and scatters: sources of gathers with the same
        axis, direction and shape are stacked once per loop, so a step gathers every LSTM's
        x_t with one view; scatters write one stacked step slice. Same values, same events."""
        local = dict(regs)
        outer, recording = self.counters, self._record
        step = Counters()
        self.counters = step
        gathers = [(axis, rev, np.stack([regs[m["src"]] for m in ms]), ms)
                   for (axis, rev, _), ms in _move_groups(ins["gather"], regs, 0).items()]
        scatters: list[tuple[int, bool, np.ndarray, list[dict]]] = []
        origin: dict[int, tuple] = {}
        self._hoisted = {}
        self._stack_ok: dict[int, bool] = {}
        if self._hoist:
            for g in (g for level in plan for g in level if g.hoist is not None):
                hx, pulses = hoist_inputs(g, regs, T)
                if hx is not None:
                    self._hoisted[id(g)] = hx
                    self._pulses += pulses
        for t in range(T):
            self._step = t
            self._step_out = {}
            origin = {id(a): origin[id(a)] for a in (local[r] for r in ins["carry"])
                      if id(a) in origin and origin[id(a)][2] is a}
            for axis, rev, stack, ms in gathers:
                view = stack[(slice(None),) * (axis + 1) + (T - 1 - t if rev else t,)]
                for k, m in enumerate(ms):
                    local[m["dst"]] = v = view[k]
                    origin[id(v)] = (view, k, v, m["dst"])
                    if self._record:
                        record_move(step, v.shape)
            self._run_plan(plan, local, prefix, origin)
            if t == 0:
                scatters = [(axis, rev, np.zeros((len(ms), *shape[:axis], T, *shape[axis:]),
                                                 np.float32), ms)
                            for (axis, rev, shape), ms in
                            _move_groups(ins["scatter"], local, 1).items()]
            for axis, rev, dst, ms in scatters:
                src = _stack([local[m["src"]] for m in ms], origin)
                dst[(slice(None),) * (axis + 1) + (T - 1 - t if rev else t,)] = src
                if self._record:
                    for _ in ms:
                        record_move(step, src.shape[1:])
            self._record = False
        self._close_loop(ins, regs, local, outer, recording, step, T)
        for _, _, dst, ms in scatters:
            for k, m in enumerate(ms):
                regs[m["dst"]] = dst[k]
        self._hoisted = {}

    def _scatter(self, s: dict[str, Any], src: np.ndarray, t: int, T: int,
                 outs: dict[str, np.ndarray]) -> None:
        axis = s["axis"] % (src.ndim + 1)
        if t == 0:
            outs[s["dst"]] = np.zeros((*src.shape[:axis], T, *src.shape[axis:]), np.float32)
        i = T - 1 - t if s.get("reverse") else t
        outs[s["dst"]][(slice(None),) * axis + (i,)] = src
        if self._record:
            record_move(self.counters, src.shape)

    # ---- crossbar MVM
    def mvm(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Crossbar layer `layer` applied to x [..., K] -> [..., N] float32."""
        pl = self.layers[layer]
        if x.shape[-1] != pl.K:
            raise EmulatorError(f"layer {layer} takes K = {pl.K} inputs, register has "
                                f"{x.shape[-1]}")
        flat = x.reshape(-1, pl.K)
        if self._devices is None and pl.lossless and self.mvm_path != "bitlevel":
            x_q = xb.quantize_input(flat, pl.in_scale, pl.params.quant.input_bits, np.float32)
            y_int = xb.mvm_fast(pl, x_q)
        elif (split := self._split_plan(layer)) is not None:
            x_q = xb.quantize_input(flat, pl.in_scale, pl.params.quant.input_bits)
            y_int = mvm_split(pl, split, x_q)
        else:
            x_q = xb.quantize_input(flat, pl.in_scale, pl.params.quant.input_bits)
            y_int = (self._mvm_noisy(pl, x_q) if self._devices is not None
                     else xb.mvm_bitlevel(pl, x_q))
        self._pulses += xb.dac_pulses(pl, x_q)
        y = xb.dequantize(pl, y_int)
        if self.traces is not None:
            self.traces.setdefault(layer, []).append(
                MvmTrace(flat.copy(), np.asarray(y_int, np.float64).copy(), y.copy()))
        return y.reshape(*x.shape[:-1], pl.N)

    def _split_plan(self, layer: int) -> SplitPlan | None:
        """The split path's plan of a lossy layer (runtime/split.py), built on first use;
        None where the definition must run: bit-level forced, noisy devices, lossless
        layers (the fast path), steps the residue rule does not cover."""
        if self._devices is not None or self.mvm_path != "auto" or self.layers[layer].lossless:
            return None
        if layer not in self._splits:
            self._splits[layer] = plan_split(self.layers[layer])
        return self._splits[layer]

    def _mvm_noisy(self, pl: xb.PreparedLayer, x_int: np.ndarray) -> np.ndarray:
        """Vectors are shared among replicas in contiguous blocks, each replica its own
        programmed conductances."""
        cell_bits = pl.params.crossbar.cell_bits
        reps = self._devices[pl.index]
        parts = np.array_split(np.arange(len(x_int)), len(reps))
        out = np.empty((len(x_int), pl.N), dtype=np.float64)
        for g, idx in zip(reps, parts):
            if idx.size:
                ps = noisy_partial_sums(pl, g, cell_bits, self.noise, self._read_rng)
                out[idx] = xb.mvm_bitlevel(pl, x_int[idx], ps)
        return out


# ---------------------------------------------------------------- handlers, one per opcode
@handler("input")
def _input(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return emu._inputs[ins["name"]]


@handler("output")
def _output(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> None:
    emu._outputs[ins["name"]] = np.asarray(xs[0], dtype=np.float32)


@handler("const")
def _const(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return emu.consts[ins["name"]]


@handler("mvm")
def _mvm(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return emu.mvm(ins["layer"], xs[0])


@handler("add")
def _add(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.add(xs[0], xs[1], dtype=np.float32)


@handler("sub")
def _sub(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.subtract(xs[0], xs[1], dtype=np.float32)


@handler("mul")
def _mul(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.multiply(xs[0], xs[1], dtype=np.float32)


@handler("sigmoid")
def _sigmoid(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return sigmoid(xs[0])


@handler("tanh")
def _tanh(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.tanh(xs[0], dtype=np.float32)


@handler("relu")
def _relu(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.maximum(xs[0], np.float32(0), dtype=np.float32)


@handler("gelu")
def _gelu(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return gelu(xs[0])


@handler("layernorm")
def _layernorm(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    x, gamma, beta = xs
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    d = x - mean
    var = (d * d).mean(axis=-1, keepdims=True, dtype=np.float32)
    return (d / np.sqrt(var + np.float32(ins["eps"])) * gamma + beta).astype(np.float32)


@handler("softmax")
def _softmax(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    e = np.exp(xs[0] - xs[0].max(axis=ins["axis"], keepdims=True))
    return (e / e.sum(axis=ins["axis"], keepdims=True)).astype(np.float32)


@handler("matmul")
def _matmul(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.matmul(xs[0], xs[1], dtype=np.float32)


@handler("scale")
def _scale(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return xs[0] * np.float32(ins["value"])


@handler("reshape")
def _reshape(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return xs[0].reshape(xs[0].shape[0], *ins["shape"])


@handler("transpose")
def _transpose(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return xs[0].transpose(ins["perm"])


@handler("concat")
def _concat(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs, axis=ins["axis"])


@handler("slice")
def _slice(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    axis = ins["axis"] % xs[0].ndim
    return xs[0][(slice(None),) * axis + (slice(ins["start"], ins["stop"]),)]


@handler("im2col")
def _im2col(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    """Each output position's receptive field as a row of [B, P, C * prod(kernel)], in the
    (channel, kernel offset) order of a flattened [D, C, *kernel] weight."""
    kernel, stride, dil = ins["kernel"], ins["stride"], ins["dilation"]
    n = len(kernel)
    x = np.pad(xs[0], [(0, 0), (0, 0), *[(p, p) for p in ins["pads"]]])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + n)))
    # [B, C, *positions, *span]: keep every stride-th position and dilation-th tap
    win = win[(slice(None), slice(None), *[slice(None, None, s) for s in stride],
               *[slice(None, None, d) for d in dil])]
    b, c, out = win.shape[0], win.shape[1], win.shape[2:2 + n]
    rows = win.transpose(0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    return np.ascontiguousarray(rows.reshape(b, math.prod(out), c * math.prod(kernel)),
                                dtype=np.float32)


@handler("zeros")
def _zeros(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.zeros((xs[0].shape[0], *ins["shape"]), dtype=np.float32)


@handler("pool")
def _pool(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return pool(xs[0], ins)


@handler("reduce")
def _reduce(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    fn = {"mean": np.mean, "sum": np.sum, "max": np.max}[ins["mode"]]
    axis = tuple(a % xs[0].ndim for a in ins["axes"])
    kw = {} if ins["mode"] == "max" else {"dtype": np.float32}
    return np.asarray(fn(xs[0], axis=axis, keepdims=bool(ins["keepdims"]), **kw),
                      dtype=np.float32)


@handler("log_softmax")
def _log_softmax(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    d = xs[0] - xs[0].max(axis=ins["axis"], keepdims=True)
    return (d - np.log(np.exp(d).sum(axis=ins["axis"], keepdims=True))).astype(np.float32)


@handler("clip")
def _clip(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    return np.minimum(np.maximum(xs[0], np.float32(ins["min"])), np.float32(ins["max"]),
                      dtype=np.float32)


@handler("leaky_relu")
def _leaky_relu(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0]
    return np.where(x >= 0, x, x * np.float32(ins["alpha"])).astype(np.float32)


@handler("pad")
def _pad(emu: Emulator, ins: dict, xs: list[np.ndarray]) -> np.ndarray:
    n, p = xs[0].ndim, ins["pads"]
    return np.pad(xs[0], [(p[k], p[n + k]) for k in range(n)],
                  constant_values=np.float32(ins["value"]))


# ---------------------------------------------------------------- helpers
def pool(x: np.ndarray, ins: dict[str, Any]) -> np.ndarray:
    """Max or average pooling over the last len(kernel) axes (floor mode). Padding is -inf
    for max; for avg it is 0 and the divisor is the window size, or, without
    count_include_pad, the number of real elements in the window (ONNX AveragePool)."""
    n = len(ins["kernel"])
    pads = [(0, 0)] * (x.ndim - n) + [(ins["pads"][i], ins["pads"][n + i]) for i in range(n)]
    fill = -np.inf if ins["mode"] == "max" else 0.0
    xp = np.pad(x, pads, constant_values=np.float32(fill))
    win = _windows(xp, ins)
    axes = tuple(range(-n, 0))
    if ins["mode"] == "max":
        return win.max(axis=axes).astype(np.float32)
    total = win.sum(axis=axes, dtype=np.float32)
    if ins["count_include_pad"]:
        return (total / np.float32(np.prod(ins["kernel"]))).astype(np.float32)
    ones = np.pad(np.ones(x.shape[-n:], np.float32), pads[-n:])
    count = _windows(ones, ins).sum(axis=axes, dtype=np.float32)
    return (total / count).astype(np.float32)


def _windows(xp: np.ndarray, ins: dict[str, Any]) -> np.ndarray:
    """Strided, dilated windows of the last len(kernel) axes: [..., *out, *kernel]."""
    n = len(ins["kernel"])
    span = [ins["dilation"][i] * (ins["kernel"][i] - 1) + 1 for i in range(n)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(-n, 0)))
    lead = (slice(None),) * (xp.ndim - n)
    return win[lead + tuple(slice(None, None, s) for s in ins["stride"]) +
               tuple(slice(None, None, d) for d in ins["dilation"])]


def _live_out(loop: dict[str, Any]) -> set[str]:
    """Registers of a loop body read after the step: carries and scatter sources."""
    return set(loop["carry"]) | {s["src"] for s in loop["scatter"]}


def _move_groups(moves: list[dict[str, Any]], regs: dict[str, np.ndarray],
                 extra_rank: int) -> dict[tuple, list[dict[str, Any]]]:
    """Gathers (extra_rank 0) or scatters (1) keyed by (axis, reverse, source shape)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for m in moves:
        shape = regs[m["src"]].shape
        axis = m["axis"] % (len(shape) + extra_rank)
        groups.setdefault((axis, bool(m.get("reverse")), shape), []).append(m)
    return groups


def _stack(arrays: list[np.ndarray], origin: dict[int, tuple]) -> np.ndarray:
    """np.stack(arrays), built from slices of the stacked arrays they are views of when
    they all are (consecutive members of one stack are one slice, no copy)."""
    runs: list[list] = []
    for a in arrays:
        o = origin.get(id(a))
        if o is None or o[2] is not a:
            return np.stack(arrays)
        if runs and runs[-1][0] is o[0] and runs[-1][2] == o[1]:
            runs[-1][2] += 1
        else:
            runs.append([o[0], o[1], o[1] + 1])
    parts = [base[lo:hi] for base, lo, hi in runs]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32; exp overflowing to inf gives the right limit 0."""
    e = np.exp(-x, dtype=np.float32)
    e += 1
    return np.reciprocal(e, out=e)


def erfc_nonneg(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 (float64) with relative error < 1.2e-7 (Numerical Recipes'
    Chebyshev fit): numpy has no erf, and runtime/ may not import scipy. In place on
    one temporary: Horner's rule for the polynomial, then exp."""
    t = 0.5 * z
    t += 1.0
    np.reciprocal(t, out=t)
    p = np.full_like(t, 0.17087277)
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
              0.37409196, 1.00002368, -1.26551223):
        p *= t
        p += c
    p -= z * z
    np.exp(p, out=p)
    p *= t
    return p


GELU_BLOCK = 2**13
"""Elements of one float64 block of `gelu`: its ~25 passes then run in the L2 cache (the
same operations on every element, so blocks change no value; about 2x faster)."""


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, erf form: 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    for lo in range(0, flat.size, GELU_BLOCK):
        x64 = flat[lo:lo + GELU_BLOCK].astype(np.float64)
        y = x64 * -np.sqrt(0.5)
        r = erfc_nonneg(np.abs(y))
        r = np.where(y >= 0, r, 2.0 - r)
        r *= x64
        r *= 0.5
        out[lo:lo + GELU_BLOCK] = r
    return out.reshape(x.shape)
