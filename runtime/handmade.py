"""A hand-built FAR block as a tile program, for tests and benchmarks while no compiled
model is at hand: pre_proj -> per-head bidirectional LSTMs (all heads and directions in one
lockstep loop, one stacked [W_ih | W_hh] crossbar cell each) -> per-head head_proj ->
post_proj -> residual add. Weights are random; `FarBlockWeights` keeps the float weights
so tests and benchmarks can build independent references (numpy, ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .builder import XbarParams, make_program, pack_layer
from .program import Program


@dataclass
class FarBlockWeights:
    """Float weights of one FAR block, PyTorch layouts (gates i, f, g, o)."""

    D: int
    heads: int
    hidden: list[tuple[int, int]]
    """(forward, backward) hidden size per head (pruned heads may differ)."""
    pre: tuple[np.ndarray, np.ndarray]
    """(W [D, D] as x @ W, b [D])."""
    lstm: list[list[dict[str, np.ndarray]]]
    """[head][direction] -> {w_ih [4H, d], w_hh [4H, H], b [4H] (b_ih + b_hh)}."""
    head_proj: list[tuple[np.ndarray, np.ndarray]]
    """Per head (W [Hf + Hb, d], b [d])."""
    post: tuple[np.ndarray, np.ndarray]

    @property
    def d(self) -> int:
        return self.D // self.heads

    @classmethod
    def random(cls, D: int, heads: int, hidden: int | list[tuple[int, int]],
               seed: int = 0) -> FarBlockWeights:
        rng = np.random.default_rng(seed)
        d = D // heads
        hid = [(hidden, hidden)] * heads if isinstance(hidden, int) else list(hidden)

        def lin(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
            bound = 1 / np.sqrt(k)
            return (rng.uniform(-bound, bound, (k, n)).astype(np.float32),
                    rng.uniform(-bound, bound, n).astype(np.float32))

        def cell(H: int) -> dict[str, np.ndarray]:
            bound = 1 / np.sqrt(H)
            u = lambda *s: rng.uniform(-bound, bound, s).astype(np.float32)  # noqa: E731
            return {"w_ih": u(4 * H, d), "w_hh": u(4 * H, H), "b": u(4 * H) + u(4 * H)}

        return cls(D=D, heads=heads, hidden=hid, pre=lin(D, D),
                   lstm=[[cell(hf), cell(hb)] for hf, hb in hid],
                   head_proj=[lin(hf + hb, d) for hf, hb in hid], post=lin(D, D))


def far_block_program(w: FarBlockWeights, T: int, p: XbarParams,
                      calib: np.ndarray | None = None) -> Program:
    """The block as a tile program for inputs [batch, T, D]. Input scales: `calib`'s max for
    pre_proj, max(|x|, 1) for LSTM cells (h is in [-1, 1]), 1.0 for the projections
    (a rough calibration is enough for tests and benchmarks)."""
    layers: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []
    qx = p.qx
    x_peak = float(np.abs(calib).max()) if calib is not None else 4.0

    def add_layer(W: np.ndarray, b: np.ndarray, peak: float, name: str, kind: str) -> int:
        first = sum(len(L["crossbars"][0]) for L, _ in layers)
        layers.append(pack_layer(W, b, peak / qx, p, layer_id=len(layers), name=name,
                                 kind=kind, first_crossbar=first))
        return len(layers) - 1

    ins: list[dict[str, Any]] = [{"op": "input", "name": "x", "out": "x"}]
    pre = add_layer(*w.pre, x_peak, "pre_proj", "linear")
    ins.append({"op": "mvm", "layer": pre, "in": ["x"], "out": "p"})
    gather, body, scatter, carry = [], [], [], []
    for h in range(w.heads):
        ins.append({"op": "slice", "in": ["p"], "axis": 2, "start": h * w.d,
                    "stop": (h + 1) * w.d, "out": f"p{h}"})
        for di, rev in ((0, False), (1, True)):
            H = w.hidden[h][di]
            tag = f"{h}{'fb'[di]}"
            c = w.lstm[h][di]
            cell = add_layer(np.concatenate([c["w_ih"].T, c["w_hh"].T]), c["b"],
                             max(x_peak, 1.0), f"lstm{tag}", "lstm_cell")
            ins += [{"op": "zeros", "in": ["x"], "shape": [H], "out": f"h{tag}"},
                    {"op": "zeros", "in": ["x"], "shape": [H], "out": f"c{tag}"}]
            carry += [f"h{tag}", f"c{tag}"]
            gather.append({"src": f"p{h}", "axis": 1, "dst": f"x{tag}", "reverse": rev})
            body += _lstm_step(tag, cell, H)
            scatter.append({"src": f"h{tag}", "axis": 1, "dst": f"o{tag}", "reverse": rev})
    ins.append({"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": carry,
                "gather": gather, "body": body, "scatter": scatter})
    for h in range(w.heads):
        hp = add_layer(*w.head_proj[h], 1.0, f"head_proj{h}", "linear")
        ins += [{"op": "concat", "in": [f"o{h}f", f"o{h}b"], "axis": -1, "out": f"hc{h}"},
                {"op": "mvm", "layer": hp, "in": [f"hc{h}"], "out": f"hp{h}"}]
    post = add_layer(*w.post, 1.0, "post_proj", "linear")
    ins += [{"op": "concat", "in": [f"hp{h}" for h in range(w.heads)], "axis": -1,
             "out": "heads"},
            {"op": "mvm", "layer": post, "in": ["heads"], "out": "proj"},
            {"op": "add", "in": ["x", "proj"], "out": "y"},
            {"op": "output", "name": "y", "in": ["y"]}]
    return make_program(ins, {"x": [T, w.D]}, {"y": [T, w.D]}, layers)


def _lstm_step(tag: str, layer: int, H: int) -> list[dict[str, Any]]:
    """One LSTM step: z = [x_t, h]; gates = cell(z); c = f*c + i*g; h = o*tanh(c)."""
    r = lambda name: f"{name}{tag}"  # noqa: E731
    step = [{"op": "concat", "in": [r("x"), r("h")], "axis": -1, "out": r("z")},
            {"op": "mvm", "layer": layer, "in": [r("z")], "out": r("g")}]
    for k, (gate, fn) in enumerate((("i", "sigmoid"), ("f", "sigmoid"), ("u", "tanh"),
                                    ("o", "sigmoid"))):
        step += [{"op": "slice", "in": [r("g")], "axis": -1, "start": k * H,
                  "stop": (k + 1) * H, "out": r(gate + "_")},
                 {"op": fn, "in": [r(gate + "_")], "out": r(gate)}]
    return [
        *step,
        {"op": "mul", "in": [r("f"), r("c")], "out": r("fc")},
        {"op": "mul", "in": [r("i"), r("u")], "out": r("iu")},
        {"op": "add", "in": [r("fc"), r("iu")], "out": r("c")},
        {"op": "tanh", "in": [r("c")], "out": r("tc")},
        {"op": "mul", "in": [r("o"), r("tc")], "out": r("h")},
    ]
