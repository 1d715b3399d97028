"""The step plan: a program compiled once into numpy steps for the lossless, noise-free path.

The interpreter (emulator.py) is the readable definition: one handler per opcode, loop
bodies grouped at run time. The plan runs the same arithmetic with less Python and fewer
passes over memory, for ideal devices with `mvm_path` auto or fast:

- a fast-path MVM quantizes into a buffer kept between runs (divide, round, clip in place),
  counts the DAC pulses with one popcount per 64-bit word of the drive values, multiplies
  into a second buffer and rescales it in place;
- `gelu` runs the definition's float64 operations in place on cache-sized blocks, and
  `layernorm` reuses its buffers (same ufuncs, same reductions on the same layouts);
- a loop whose body is one LSTM cell per head and direction (concat [x_t, h], MVM, four
  gate slices, sigmoid / tanh, c = f c + i g, h = o tanh c) runs as one kernel: the x_t
  part of every step is one matmul before the loop (exact: integers below 2**24), each step
  is one batched matmul for all heads and directions of a block, the gate columns are
  reordered so the three sigmoid gates are one slice, and the sigmoid's negation is folded
  into the negated rescale constants (`-(a*s + b)` is `a*(-s) + (-b)` bit for bit:
  round-to-nearest is symmetric);
- everything else (lossy layers on the split path, other loop bodies, data moves) calls
  the interpreter's own handler or loop.

Every integer product is exact in float32 (the layer's `q` is float32 only when
`Qx * max_n sum_k |q[k, n]| < 2**24`, docs/emulator.md), so summation order never matters;
every float operation is the definition's, element for element. Events are those of the
static walk (`counters.static_counts`, the rule the interpreter applies to the same shapes);
the DAC pulses are counted as the run goes. tests/runtime/test_plan.py checks outputs and
counters bit for bit against the interpreter on every program the tests build."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from farc.errors import EmulatorError, ProgramError

from .counters import Counters, static_counts
from .crossbar import PreparedLayer, dac_pulses
from .numerics import encoding_rule, qmax

if TYPE_CHECKING:
    from .emulator import Emulator

Regs = dict[str, np.ndarray]
Step = Callable[[Regs], None]

GELU_BLOCK = 2**14
"""Elements of one float64 block of the plan's gelu (in place: four block temporaries)."""
_ERFC = (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
         0.37409196, 1.00002368, -1.26551223)
"""emulator.erfc_nonneg's Horner coefficients after the leading 0.17087277."""


class Plan:
    """The steps of a program's top-level instructions, built once per Emulator.

    Buffers are kept between runs (keyed by step and shape) and handed out as registers;
    `output` copies, so a returned array never aliases a buffer."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.pulses = 0
        self._bufs: dict[Any, np.ndarray] = {}
        self.steps: list[Step] = [self._compile(i, ins)
                                  for i, ins in enumerate(emu.program.instructions)]

    def run(self, regs: Regs) -> None:
        self.pulses = 0
        for step in self.steps:
            step(regs)

    def buf(self, key: Any, shape: tuple[int, ...], dtype: Any = np.float32,
            zero: bool = False) -> np.ndarray:
        """The buffer `key` with this shape and dtype, made on first use of the shape."""
        b = self._bufs.get(key)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self._bufs[key] = (np.zeros if zero else np.empty)(shape, dtype)
        return b

    # ---- compiling one instruction
    def _compile(self, i: int, ins: dict[str, Any]) -> Step:
        emu, op = self.emu, ins["op"]

        def generic(regs: Regs) -> None:
            emu._exec(i, ins, regs, "")

        if op == "loop":
            cells = match_lstm_loop(ins, emu.layers)
            return LstmLoop(self, i, ins, cells).run if cells else \
                (lambda regs: emu._loop(ins, regs, f"{i}."))
        if op == "output":
            return lambda regs: emu._outputs.__setitem__(
                ins["name"], np.array(regs[ins["in"][0]], dtype=np.float32))
        if op == "mvm" and emu.layers[ins["layer"]].lossless:
            return _mvm_step(self, i, ins, emu.layers[ins["layer"]], generic)
        if op == "gelu":
            return _gelu_step(self, i, ins, generic)
        if op == "layernorm":
            return _layernorm_step(self, i, ins, generic)
        return generic


# ---------------------------------------------------------------- fast-path MVM
def quantize_into(x: np.ndarray, scale: Any, qx: np.float32, out: np.ndarray) -> np.ndarray:
    """numerics.quantize_input (float32) in place: clip(rint(x / s_x), -Qx, Qx)."""
    np.divide(x, scale, out=out)
    np.rint(out, out=out)
    return np.clip(out, -qx, qx, out=out)


class PulseCounter:
    """crossbar.dac_pulses for 1-bit DACs and drive values of at most 8 bits: the drive
    values go into a zero-padded uint8 buffer, whose 64-bit words are popcounted (a word's
    popcount is the sum of its bytes'). Other DACs call dac_pulses."""

    def __init__(self, pl: PreparedLayer) -> None:
        self.pl = pl
        q = pl.params.quant
        rule = encoding_rule(q.input_encoding)
        self.zero = rule.zero(q.input_bits)
        self.words = pl.params.dac.bits == 1 and rule.digit_bits(q.input_bits) <= 8

    def __call__(self, plan: Plan, key: Any, xq: np.ndarray) -> int:
        if not self.words:
            return dac_pulses(self.pl, xq)
        n = xq.size
        u = plan.buf(key, (-(-n // 8) * 8,), np.uint8)
        u[n:] = 0  # the pad of the last word
        view = u[:n].reshape(xq.shape)
        if self.zero:
            np.add(xq, np.float32(self.zero), out=view, casting="unsafe")
        else:
            np.abs(xq, out=view, casting="unsafe")
        return int(np.bitwise_count(u.view(np.uint64)).sum(dtype=np.int64)) * self.pl.col_tiles


def _mvm_step(plan: Plan, i: int, ins: dict[str, Any], pl: PreparedLayer,
              generic: Step) -> Step:
    """crossbar fast path as quantize_input, mvm_fast, dac_pulses, dequantize, in buffers."""
    s_x = np.float32(pl.in_scale)
    qx = np.float32(qmax(pl.params.quant.input_bits))
    pulses = PulseCounter(pl)
    src, dst = ins["in"][0], ins["out"]
    f32 = pl.q.dtype == np.float32

    def step(regs: Regs) -> None:
        x = regs[src]
        if x.dtype != np.float32 or x.ndim < 2 or x.shape[-1] != pl.K:
            generic(regs)  # the interpreter converts or reports
            return
        flat = x.reshape(-1, pl.K)
        xq = quantize_into(flat, s_x, qx, plan.buf((i, "xq"), flat.shape))
        plan.pulses += pulses(plan, (i, "u"), xq)
        y = plan.buf((i, "y"), (len(flat), pl.N))
        if f32:
            np.matmul(xq, pl.q, out=y)  # exact integers
        else:  # float64 integers, rounded to float32 as dequantize does
            np.copyto(y, xq.astype(np.float64) @ pl.q, casting="unsafe")
        np.multiply(y, pl.scale, out=y)
        if pl.bias is not None:
            np.add(y, pl.bias, out=y)
        regs[dst] = y.reshape(*x.shape[:-1], pl.N)

    return step


# ---------------------------------------------------------------- gelu, layernorm
def gelu_into(x: np.ndarray, out: np.ndarray, plan: Plan, key: Any) -> None:
    """emulator.gelu's float64 operations, element for element, in place on blocks:
    0.5 x erfc(-x / sqrt 2) with erfc_nonneg's Horner rule; out is float32 like x.

    The definition's `where(y >= 0, r, 2 - r)` is `|r - w|` with w = 2 where y < 0, else
    0: r lies in [0, 1] (erfc_nonneg of z >= 0), so `r - 0 = r` and `|r - 2| = 2 - r`
    exactly (rounding is symmetric), without a masked pass (numpy's `where=` loops are
    scalar)."""
    flat, res = x.reshape(-1), out.reshape(-1)
    m = min(GELU_BLOCK, flat.size)
    z, t, p, w = (plan.buf((key, k), (m,), np.float64) for k in "ztpw")
    neg = plan.buf((key, "n"), (m,), np.bool_)
    s = -np.sqrt(0.5)
    for lo in range(0, flat.size, GELU_BLOCK):
        xb = flat[lo:lo + GELU_BLOCK]
        n = xb.size
        zb, tb, pb, wb, nb = z[:n], t[:n], p[:n], w[:n], neg[:n]
        np.multiply(xb, s, out=zb, dtype=np.float64)  # y = x * -sqrt(1/2)
        np.less(zb, 0, out=nb)
        np.multiply(nb, 2.0, out=wb)
        np.abs(zb, out=zb)
        np.multiply(zb, 0.5, out=tb)
        tb += 1.0
        np.reciprocal(tb, out=tb)
        np.multiply(tb, 0.17087277, out=pb)  # full(0.17087277) * t
        for c in _ERFC[:-1]:
            pb += c
            pb *= tb
        pb += _ERFC[-1]
        np.multiply(zb, zb, out=zb)
        pb -= zb
        np.exp(pb, out=pb)
        pb *= tb  # erfc(|y|)
        pb -= wb
        np.abs(pb, out=pb)  # erfc(-x / sqrt 2)
        np.multiply(pb, xb, out=pb)
        np.multiply(pb, 0.5, out=res[lo:lo + n], casting="unsafe")


def _gelu_step(plan: Plan, i: int, ins: dict[str, Any], generic: Step) -> Step:
    src, dst = ins["in"][0], ins["out"]

    def step(regs: Regs) -> None:
        x = regs[src]
        if x.dtype != np.float32:
            generic(regs)
            return
        out = plan.buf((i, "y"), x.shape)
        gelu_into(np.ascontiguousarray(x), out, plan, (i, "g"))
        regs[dst] = out

    return step


def _layernorm_step(plan: Plan, i: int, ins: dict[str, Any], generic: Step) -> Step:
    """The layernorm handler's operations into two buffers; taken for C-contiguous float32
    inputs (the handler's temporaries then have the same layout, so the same reductions)."""
    src, g_reg, b_reg = ins["in"]
    eps = np.float32(ins["eps"])

    def step(regs: Regs) -> None:
        x, gamma, beta = regs[src], regs[g_reg], regs[b_reg]
        if any(a.dtype != np.float32 for a in (x, gamma, beta)) or x.ndim < 1 or \
                not x.flags.c_contiguous or \
                np.broadcast_shapes(x.shape, gamma.shape, beta.shape) != x.shape:
            generic(regs)
            return
        mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
        d = plan.buf((i, "d"), x.shape)
        sq = plan.buf((i, "sq"), x.shape)
        np.subtract(x, mean, out=d)
        np.multiply(d, d, out=sq)
        var = sq.mean(axis=-1, keepdims=True, dtype=np.float32)
        den = np.sqrt(var + eps)
        np.divide(d, den, out=d)
        np.multiply(d, gamma, out=d)
        np.add(d, beta, out=d)
        regs[ins["out"]] = d

    return step


# ---------------------------------------------------------------- LSTM loops
@dataclass
class Cell:
    """One LSTM of a loop body: x_t (gathered) and h concatenated, one MVM, four gates."""

    layer: int
    gather: dict[str, Any]
    h: str
    c: str
    x_first: bool
    gates: dict[str, int]
    """Gate role ('f', 'i', 'g', 'o') -> its column block (0..3) of the MVM output."""
    hidden: int


def match_lstm_loop(ins: dict[str, Any], layers: list[PreparedLayer]) -> list[Cell] | None:
    """The loop's cells when its body is exactly one LSTM cell per carried (h, c) pair, each
    on a lossless float32 layer, every scatter writing an h, every gather feeding one cell;
    else None (the interpreter runs the loop)."""
    body = ins["body"]
    writer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for k, b in enumerate(body):
        for r in b.get("in", []):
            readers.setdefault(r, []).append(k)
        if b.get("out"):
            if b["out"] in writer:
                return None
            writer[b["out"]] = k
    gathers = {g["dst"]: g for g in ins["gather"]}
    carries = set(ins["carry"])
    cells, used = [], set()
    for k, b in enumerate(body):
        if b["op"] == "mvm":
            cell = _match_cell(k, body, writer, readers, gathers, carries, layers, used)
            if cell is None:
                return None
            cells.append(cell)
    hs = {c.h for c in cells}
    if not cells or len(used) != len(body) or len(gathers) != len(cells) or \
            carries != hs | {c.c for c in cells} or len(carries) != 2 * len(cells) or \
            {c.gather["dst"] for c in cells} != set(gathers) or \
            any(s["src"] not in hs for s in ins["scatter"]):
        return None
    return cells


def _match_cell(k: int, body: list[dict[str, Any]], writer: dict[str, int],
                readers: dict[str, list[int]], gathers: dict[str, dict], carries: set[str],
                layers: list[PreparedLayer], used: set[int]) -> Cell | None:
    """The cell around the mvm at body index k, or None when anything differs."""
    mvm = body[k]
    pl = layers[mvm["layer"]]
    if not pl.lossless or pl.q.dtype != np.float32 or pl.N % 4:
        return None
    H = pl.N // 4

    def only(reg: str, op: str) -> int | None:
        rd = readers.get(reg, [])
        return rd[0] if len(rd) == 1 and body[rd[0]]["op"] == op and reg not in carries \
            else None

    ci = writer.get(mvm["in"][0])
    if ci is None or only(mvm["in"][0], "mvm") != k:
        return None
    cat = body[ci]
    if cat["op"] != "concat" or len(cat["in"]) != 2 or cat["axis"] not in (1, -1):
        return None
    xs = [n for n, r in enumerate(cat["in"]) if r in gathers]
    if len(xs) != 1 or cat["in"][0] == cat["in"][1]:
        return None
    x_reg, h = cat["in"][xs[0]], cat["in"][1 - xs[0]]
    if h not in carries or x_reg in writer or len(readers[x_reg]) != 1:
        return None
    slices = readers.get(mvm["out"], [])
    if len(slices) != 4 or mvm["out"] in carries:
        return None
    acts, blocks = {}, set()
    for s in slices:
        sl = body[s]
        blk, rem = divmod(sl.get("start", -1), H) if sl["op"] == "slice" else (-1, 1)
        if sl["op"] != "slice" or sl["axis"] not in (1, -1) or rem or \
                sl["stop"] != sl["start"] + H or not 0 <= blk < 4:
            return None
        a = only(sl["out"], "sigmoid")
        a = only(sl["out"], "tanh") if a is None else a
        if a is None:
            return None
        blocks.add(blk)
        acts[a] = blk
    if len(blocks) != 4:
        return None
    sig = {body[a]["out"]: (a, blk) for a, blk in acts.items() if body[a]["op"] == "sigmoid"}
    tanh = [(a, blk) for a, blk in acts.items() if body[a]["op"] == "tanh"]
    if len(sig) != 3 or len(tanh) != 1:
        return None
    g_out = body[tanh[0][0]]["out"]
    mi = only(g_out, "mul")
    if mi is None:
        return None
    i_reg = [r for r in body[mi]["in"] if r != g_out]
    if len(i_reg) != 1 or i_reg[0] not in sig or only(i_reg[0], "mul") != mi:
        return None
    add = only(body[mi]["out"], "add")
    if add is None or body[add]["out"] not in carries or body[add]["out"] == h:
        return None
    c = body[add]["out"]
    mf_reg = [r for r in body[add]["in"] if r != body[mi]["out"]]
    if len(mf_reg) != 1 or mf_reg[0] not in writer:
        return None
    mf = writer[mf_reg[0]]
    if body[mf]["op"] != "mul" or only(mf_reg[0], "add") != add or c not in body[mf]["in"]:
        return None
    f_reg = [r for r in body[mf]["in"] if r != c]
    if len(f_reg) != 1 or f_reg[0] not in sig or f_reg[0] == i_reg[0] or \
            only(f_reg[0], "mul") != mf:
        return None
    if sorted(readers.get(c, [])) != sorted([mf, _after(add, readers.get(c, []))]):
        return None
    tc = _after(add, readers[c])
    if body[tc]["op"] != "tanh" or not (mf < add < tc):
        return None
    mh = only(body[tc]["out"], "mul")
    if mh is None or body[mh]["out"] != h:
        return None
    o_reg = [r for r in body[mh]["in"] if r != body[tc]["out"]]
    if len(o_reg) != 1 or o_reg[0] not in sig or o_reg[0] in (i_reg[0], f_reg[0]) or \
            only(o_reg[0], "mul") != mh:
        return None
    if readers.get(h) != [ci] or not ci < mh:
        return None
    members = {k, ci, mi, add, mf, tc, mh, *slices, *acts}
    if len(members) != 15 or members & used:
        return None
    used |= members
    gates = {"f": sig[f_reg[0]][1], "i": sig[i_reg[0]][1], "o": sig[o_reg[0]][1],
             "g": tanh[0][1]}
    return Cell(layer=mvm["layer"], gather=gathers[x_reg], h=h, c=c, x_first=xs[0] == 0,
                gates=gates, hidden=H)


def _after(k: int, idx: list[int]) -> int:
    later = [j for j in idx if j > k]
    return later[0] if len(later) == 1 else -1


GATE_ORDER = ("f", "i", "o", "g")
"""Column blocks of the plan's gate buffer: the three sigmoid gates, then the tanh one."""


@dataclass
class CellGroup:
    """Cells with equal shapes and quantization, run as one batched kernel. The kernel
    keeps vectors last ([G, H, V] states, [G, N, V] gates): each gate is then one
    contiguous block per cell, so every elementwise pass runs on long rows."""

    cells: list[Cell]
    layers: list[PreparedLayer]
    perm: np.ndarray
    """[G, N] output columns in GATE_ORDER."""
    q_hT: np.ndarray
    """[G, N, H] per-step weights, transposed, rows permuted."""
    scale: np.ndarray
    """[G, N, 1] rescale, permuted, negated on the sigmoid gates."""
    bias: np.ndarray | None
    in_scale: np.ndarray
    """[G, 1, 1] float32."""
    qx: np.float32
    pulses: PulseCounter


def _cell_groups(cells: list[Cell], layers: list[PreparedLayer]) -> list[CellGroup]:
    by: dict[tuple, list[Cell]] = {}
    for c in cells:
        pl = layers[c.layer]
        by.setdefault((pl.K, pl.N, pl.params.quant, pl.params.dac, pl.col_tiles,
                       pl.bias is None, c.x_first), []).append(c)
    groups = []
    for cs in by.values():
        pls = [layers[c.layer] for c in cs]
        H, N = cs[0].hidden, pls[0].N
        perms = [np.concatenate([np.arange(c.gates[g] * H, (c.gates[g] + 1) * H)
                                 for g in GATE_ORDER]) for c in cs]
        sign = np.ones(N, np.float32)
        sign[:3 * H] = -1
        rows = [slice(pl.K - H, pl.K) if c.x_first else slice(0, H) for c, pl in zip(cs, pls)]
        groups.append(CellGroup(
            cells=cs, layers=pls, perm=np.stack(perms),
            q_hT=np.stack([pl.q[r][:, p].T for pl, r, p in zip(pls, rows, perms)]),
            scale=np.stack([pl.scale[p] * sign for pl, p in zip(pls, perms)])[:, :, None],
            bias=None if pls[0].bias is None else
            np.stack([pl.bias[p] * sign for pl, p in zip(pls, perms)])[:, :, None],
            in_scale=np.array([np.float32(pl.in_scale) for pl in pls],
                              np.float32)[:, None, None],
            qx=np.float32(qmax(pls[0].params.quant.input_bits)), pulses=PulseCounter(pls[0])))
    return groups


class LstmLoop:
    """A loop of LSTM cells as one kernel per group of alike cells (see the module doc)."""

    def __init__(self, plan: Plan, index: int, ins: dict[str, Any], cells: list[Cell]) -> None:
        self.plan, self.index, self.ins = plan, index, ins
        self.groups = _cell_groups(cells, plan.emu.layers)

    def run(self, regs: Regs) -> None:
        ins = self.ins
        T = self._trips(regs)
        if T is None:  # shapes the kernel does not cover: the interpreter runs (or reports)
            self.plan.emu._loop(ins, regs, f"{self.index}.")
            return
        outs: dict[str, np.ndarray] = {}
        for n, grp in enumerate(self.groups):
            hist, c = self._group(n, grp, regs, T)
            for m, cell in enumerate(grp.cells):
                outs[cell.h] = hist[:, m].transpose(0, 2, 1)  # [T, V, H], step order
                regs[cell.h] = np.ascontiguousarray(hist[T - 1, m].T)
                regs[cell.c] = np.ascontiguousarray(c[m].T)
        for k, s in enumerate(ins["scatter"]):
            h = outs[s["src"]]
            axis = s["axis"] % h.ndim
            dst = self.plan.buf((self.index, "scatter", k),
                                (*h.shape[1:axis + 1], T, *h.shape[axis + 1:]))
            np.copyto(dst, np.moveaxis(h[::-1] if s.get("reverse") else h, 0, axis))
            regs[s["dst"]] = dst

    def _trips(self, regs: Regs) -> int | None:
        """T, or None unless every gather source is [V, T, D] float32 gathered along axis 1
        and every carry is [V, H] float32 (the shapes the kernel is written for)."""
        ins = self.ins
        cnt = regs[ins["count"]["reg"]]
        T = cnt.shape[ins["count"]["axis"]]
        if T == 0:
            return None
        V = regs[self.groups[0].cells[0].h].shape[0]
        for grp in self.groups:
            for cell, pl in zip(grp.cells, grp.layers):
                src, g = regs[cell.gather["src"]], cell.gather
                if src.dtype != np.float32 or src.ndim != 3 or g["axis"] % 3 != 1 or \
                        src.shape != (V, T, pl.K - cell.hidden):
                    return None
                for r in (cell.h, cell.c):
                    a = regs[r]
                    if a.dtype != np.float32 or a.shape != (V, cell.hidden):
                        return None
        return T

    def _group(self, n: int, grp: CellGroup, regs: Regs, T: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Run one group's cells over all steps: h of every step [T, G, H, V] and the
        final c [G, H, V]."""
        plan, key = self.plan, (self.index, n)
        G, H, N = len(grp.cells), grp.cells[0].hidden, grp.layers[0].N
        V = regs[grp.cells[0].h].shape[0]
        y_x = self._hoist(grp, regs, T, key)
        hist = plan.buf((key, "hist"), (T, G, H, V))
        hqs = plan.buf((key, "hq"), (T, G, H, V))  # every step's quantized h (DAC pulses)
        c = plan.buf((key, "c"), (G, H, V))
        h0 = plan.buf((key, "h0"), (G, H, V))
        for m, cell in enumerate(grp.cells):
            h0[m] = regs[cell.h].T
            c[m] = regs[cell.c].T
        y = plan.buf((key, "y"), (G, N, V))
        tmp = plan.buf((key, "tmp"), (G, H, V))
        sig, gg = y[:, :3 * H], y[:, 3 * H:]
        f, i, o = y[:, :H], y[:, H:2 * H], y[:, 2 * H:3 * H]
        for t in range(T):
            hq = quantize_into(h0 if t == 0 else hist[t - 1], grp.in_scale, grp.qx, hqs[t])
            np.matmul(grp.q_hT, hq, out=y)
            np.add(y, y_x[t], out=y)  # exact integers: y_int of concat([x_t, h])
            np.multiply(y, grp.scale, out=y)  # the sigmoid gates come out negated
            if grp.bias is not None:
                np.add(y, grp.bias, out=y)
            np.exp(sig, out=sig)  # emulator.sigmoid: 1 / (1 + exp(-x))
            sig += 1
            np.reciprocal(sig, out=sig)
            np.tanh(gg, out=gg)
            np.multiply(f, c, out=c)
            np.multiply(i, gg, out=tmp)
            np.add(c, tmp, out=c)
            np.tanh(c, out=tmp)
            np.multiply(o, tmp, out=hist[t])
        plan.pulses += grp.pulses(plan, (key, "u"), hqs)
        return hist, c

    def _hoist(self, grp: CellGroup, regs: Regs, T: int, key: Any) -> np.ndarray:
        """x_int of every step times its rows of q, [T, G, N, V] (rows permuted), as
        lockstep.hoist_inputs; adds the x digits' DAC pulses."""
        plan = self.plan
        G, N, H = len(grp.cells), grp.layers[0].N, grp.cells[0].hidden
        V = regs[grp.cells[0].h].shape[0]
        y_x = plan.buf((key, "yx"), (T, G, N, V))
        for m, (cell, pl) in enumerate(zip(grp.cells, grp.layers)):
            src = regs[cell.gather["src"]]
            D = pl.K - H
            xq = quantize_into(src, grp.in_scale[m], grp.qx, plan.buf((key, "xq"), src.shape))
            plan.pulses += grp.pulses(plan, (key, "ux"), xq)
            rows = slice(0, D) if cell.x_first else slice(H, pl.K)
            xs = xq.transpose(1, 2, 0)  # [T, D, V]: step t reads index t (T-1-t reversed)
            np.matmul(pl.q[rows][:, grp.perm[m]].T, xs[::-1] if cell.gather.get("reverse")
                      else xs, out=y_x[:, m])  # exact integers, any order
        return y_x


# ---------------------------------------------------------------- running, checking
PLAN_CHECK_ENV = "FARC_PLAN_CHECK"
"""Set to 1: every plan run is repeated by the interpreter (a twin Emulator with
step_plan=False) and outputs and counters must agree bit for bit (EmulatorError otherwise)."""


def run_plan(emu: Emulator, shapes: tuple) -> dict[str, np.ndarray] | None:
    """One run through emu's plan, or None where the interpreter must run it: events the
    static walk cannot give, or shapes a numpy call refuses (the interpreter then reports)."""
    known = emu._events.get(shapes)
    if known is None:
        try:
            known = static_counts(emu.program, 1, dict(shapes))
        except ProgramError:
            return None
        known.dac_pulses = 0
        emu._events[shapes] = known
    emu._outputs, emu._pulses, emu._record = {}, 0, False
    try:
        with np.errstate(over="ignore"):  # exp overflow in sigmoid/softmax is handled
            emu._plan.run({})
    except (ValueError, IndexError):
        return None
    pulses = emu._pulses + emu._plan.pulses
    emu.counters.add(known)
    emu.counters.dac_pulses += pulses
    if os.environ.get(PLAN_CHECK_ENV, "") not in ("", "0"):
        check_against_interpreter(emu, known, pulses)
    return emu._outputs


def check_against_interpreter(emu: Emulator, events: Counters, pulses: int) -> None:
    """Run the interpreter on the same inputs; raise unless outputs (bytes) and this run's
    counters are the plan's."""
    from .emulator import Emulator

    twin = Emulator(emu.program, mvm_path=emu.mvm_path, step_plan=False)
    want = twin.run(dict(emu._inputs))
    got = Counters()
    got.add(events)
    got.dac_pulses += pulses
    for name, y in want.items():
        mine = emu._outputs.get(name)
        if mine is None or mine.shape != y.shape or mine.tobytes() != y.tobytes():
            raise EmulatorError(f"step plan: output {name!r} differs from the interpreter")
    if got.to_dict() != twin.counters.to_dict():
        diff = sorted(k for k, v in got.to_dict().items() if twin.counters.to_dict()[k] != v)
        raise EmulatorError(f"step plan: counters {diff} differ from the interpreter")
