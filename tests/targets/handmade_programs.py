"""Hand-built tile programs for the cost-model and report tests (built with farc.runtime.builder, as
the compiler would emit them): a FAR-like block (pre_proj, two heads x two directions of
pruned LSTMs in one loop, head_proj, post_proj) and a DeiT-like attention block."""

from __future__ import annotations

import numpy as np
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs

T, D, HEADS, HD = 5, 8, 2, 4
HIDDEN = [(3, 2), (4, 1)]  # (fwd, bwd) hidden units per head after pruning


class _Prog:
    def __init__(self, target):
        self.p = target.xbar
        self.rng = np.random.default_rng(0)
        self.layers: list = []
        self.xbar = 0

    def layer(self, name: str, K: int, N: int, kind: str = "linear", replicas: int = 1) -> int:
        w = self.rng.normal(size=(K, N)).astype(np.float32) / np.sqrt(K)
        lid = len(self.layers)
        lay, arrs = pack_layer(w, np.zeros(N, np.float32), scale_for_inputs(np.ones(1), 8),
                               self.p, layer_id=lid, name=name, kind=kind, replicas=replicas,
                               first_crossbar=self.xbar, adc_pmax=1000.0)
        self.xbar += lay["row_tiles"] * lay["col_tiles"] * replicas
        self.layers.append((lay, arrs))
        return lid


def _lstm_step(b: list, lid: int, xt: str, h: str, c: str, H: int, tag: str) -> None:
    b += [{"op": "concat", "in": [xt, h], "out": f"cat{tag}", "axis": 1},
          {"op": "mvm", "in": [f"cat{tag}"], "out": f"z{tag}", "layer": lid}]
    for gi, g in enumerate("ifgo"):
        b.append({"op": "slice", "in": [f"z{tag}"], "out": f"{g}r{tag}", "axis": 1,
                  "start": gi * H, "stop": (gi + 1) * H})
        b.append({"op": "tanh" if g == "g" else "sigmoid", "in": [f"{g}r{tag}"],
                  "out": f"{g}{tag}"})
    b += [{"op": "mul", "in": [f"f{tag}", c], "out": f"fc{tag}"},
          {"op": "mul", "in": [f"i{tag}", f"g{tag}"], "out": f"ig{tag}"},
          {"op": "add", "in": [f"fc{tag}", f"ig{tag}"], "out": c},
          {"op": "tanh", "in": [c], "out": f"tc{tag}"},
          {"op": "mul", "in": [f"o{tag}", f"tc{tag}"], "out": h}]


def far_program(target, replicas: int = 1, tokens: int = T, dim: int = D,
                hidden: list = HIDDEN, name: str = "far-test"):
    """One FAR block; hidden = [(fwd, bwd) per head], head dim = dim / heads."""
    heads, HD = len(hidden), dim // len(hidden)
    pb = _Prog(target)
    ins = [{"op": "input", "in": [], "out": "x", "name": "x"},
           {"op": "mvm", "in": ["x"], "out": "p", "layer": pb.layer("pre_proj", dim, dim,
                                                                    replicas=replicas)}]
    body, gather, scatter, carry = [], [], [], []
    for h, dims in enumerate(hidden):
        ins.append({"op": "slice", "in": ["p"], "out": f"xs{h}", "axis": 2,
                    "start": h * HD, "stop": (h + 1) * HD})
        for d, H in enumerate(dims):
            tag = f"{h}{'fb'[d]}"
            lid = pb.layer(f"lstm{tag}", HD + H, 4 * H, kind="lstm_cell")
            ins += [{"op": "zeros", "in": ["x"], "out": f"h{tag}", "shape": [H]},
                    {"op": "zeros", "in": ["x"], "out": f"c{tag}", "shape": [H]}]
            carry += [f"h{tag}", f"c{tag}"]
            gather.append({"src": f"xs{h}", "axis": 1, "dst": f"xt{tag}", "reverse": d == 1})
            scatter.append({"src": f"h{tag}", "axis": 1, "dst": f"ys{tag}", "reverse": d == 1})
            _lstm_step(body, lid, f"xt{tag}", f"h{tag}", f"c{tag}", H, tag)
    ins.append({"op": "loop", "count": {"reg": "x", "axis": 1}, "carry": carry,
                "gather": gather, "body": body, "scatter": scatter})
    for h, dims in enumerate(hidden):
        ins += [{"op": "concat", "in": [f"ys{h}f", f"ys{h}b"], "out": f"yc{h}", "axis": 2},
                {"op": "mvm", "in": [f"yc{h}"], "out": f"hp{h}",
                 "layer": pb.layer(f"head_proj{h}", sum(dims), HD)}]
    ins += [{"op": "concat", "in": [f"hp{h}" for h in range(heads)], "out": "hc", "axis": 2},
            {"op": "mvm", "in": ["hc"], "out": "o", "layer": pb.layer("post_proj", dim, dim)},
            {"op": "add", "in": ["x", "o"], "out": "y"},
            {"op": "output", "in": ["y"], "name": "y"}]
    return make_program(ins, {"x": [tokens, dim]}, {"y": [tokens, dim]}, pb.layers,
                        target=target.to_dict(), model={"kind": "far", "name": name,
                                                        "config": {}, "provenance": {}})


def attention_program(target):
    pb = _Prog(target)
    ins = [{"op": "input", "in": [], "out": "x", "name": "x"},
           {"op": "mvm", "in": ["x"], "out": "qkv", "layer": pb.layer("qkv", D, 3 * D)}]
    for i, r in enumerate("qkv"):
        ins += [{"op": "slice", "in": ["qkv"], "out": f"{r}0", "axis": 2,
                 "start": i * D, "stop": (i + 1) * D},
                {"op": "reshape", "in": [f"{r}0"], "out": f"{r}1", "shape": [T, HEADS, HD]},
                {"op": "transpose", "in": [f"{r}1"], "out": r, "perm": [0, 2, 1, 3]}]
    ins += [{"op": "transpose", "in": ["k"], "out": "kt", "perm": [0, 1, 3, 2]},
            {"op": "matmul", "in": ["q", "kt"], "out": "s0"},
            {"op": "scale", "in": ["s0"], "out": "s1", "value": HD ** -0.5},
            {"op": "softmax", "in": ["s1"], "out": "a", "axis": -1},
            {"op": "matmul", "in": ["a", "v"], "out": "av"},
            {"op": "transpose", "in": ["av"], "out": "av1", "perm": [0, 2, 1, 3]},
            {"op": "reshape", "in": ["av1"], "out": "av2", "shape": [T, D]},
            {"op": "mvm", "in": ["av2"], "out": "o", "layer": pb.layer("proj", D, D)},
            {"op": "add", "in": ["x", "o"], "out": "y"},
            {"op": "output", "in": ["y"], "name": "y"}]
    return make_program(ins, {"x": [T, D]}, {"y": [T, D]}, pb.layers,
                        target=target.to_dict(), model={"kind": "deit", "name": "deit-test",
                                                        "config": {}, "provenance": {}})


