"""farc.check.qdq: tile program -> QDQ ONNX, checked per opcode against independent numpy
references.

The programs here are hand-built: weights are quantized and packed into conductance codes
by this file's own packer (docs/numerics.md, docs/tile-program.md), so the translator's
weight reconstruction is checked against an implementation it does not share."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from farc.runtime import builder
from farc.runtime.emulator import Emulator
from xbar_flat import xp

from farc.check.qdq import build_qdq_onnx, integer_weights, reference_paths
from farc.errors import ProgramError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- packing
def quantize_weight(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, symmetric; rounds w / float32(s_w) in float64 like the compiler does."""
    qw = 2 ** (bits - 1) - 1
    s = np.abs(w.astype(np.float64)).max(axis=0) / qw
    s = np.where(s == 0, 1.0, s).astype(np.float32)
    return np.clip(np.rint(w / s.astype(np.float64)), -qw, qw).astype(np.int64), s


def pack(q: np.ndarray, *, weight_bits: int, cell_bits: int, mapping: str, rows: int,
         cols: int) -> dict:
    """Dense packing per docs/tile-program.md: column j = (n*signs + sign)*slices + s."""
    K, N = q.shape
    qw = 2 ** (weight_bits - 1) - 1
    signs = 2 if mapping == "differential" else 1
    slices = math.ceil(((weight_bits - 1) if signs == 2 else weight_bits) / cell_bits)
    mags = [np.maximum(q, 0), np.maximum(-q, 0)] if signs == 2 else [q + qw]
    E = N * slices * signs
    rt, ct = math.ceil(K / rows), math.ceil(E / cols)
    codes = np.zeros((rt, ct, rows, cols), np.uint8)
    col_out, col_slice, col_sign = (np.zeros(E, np.int32) for _ in range(3))
    for n in range(N):
        for sign in range(signs):
            for s in range(slices):
                j = (n * signs + sign) * slices + s
                level = (mags[sign][:, n] >> (s * cell_bits)) & (2**cell_bits - 1)
                for k in range(K):
                    codes[k // rows, j // cols, k % rows, j % cols] = level[k]
                col_out[j], col_slice[j], col_sign[j] = n, s, sign
    return dict(codes=codes, col_out=col_out, col_slice=col_slice, col_sign=col_sign,
                slices=slices, signs=signs, row_tiles=rt, col_tiles=ct)


class Builder:
    """A minimal program under construction: layers, constants, instructions."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.layers: list[dict] = []
        self.constants: dict[str, str] = {}
        self.refs: dict[int, dict] = {}  # layer id -> float reference data

    def layer(self, w: np.ndarray, b: np.ndarray | None, s_x: float, *, weight_bits: int = 8,
              input_bits: int = 8, cell_bits: int = 2, mapping: str = "differential",
              rows: int = 16, cols: int = 16) -> int:
        lid = len(self.layers)
        q, s_w = quantize_weight(w, weight_bits)
        p = pack(q, weight_bits=weight_bits, cell_bits=cell_bits, mapping=mapping, rows=rows,
                 cols=cols)
        names = {}
        for role in ("codes", "col_out", "col_slice", "col_sign"):
            names[role] = self._array(f"layer{lid}.{role}", p[role])
        names["w_scale"] = self._array(f"layer{lid}.w_scale", s_w)
        if b is not None:
            names["bias"] = self._array(f"layer{lid}.bias", b.astype(np.float32))
        K, N = w.shape
        self.layers.append(dict(
            id=lid, name=f"fc{lid}", kind="linear", K=K, N=N,
            crossbar={"rows": rows, "cols": cols, "cell_bits": cell_bits}, dac={"bits": 1},
            adc={"bits": 16, "range": "full", "columns_per_adc": 128, "flip": False,
                 "granularity": "tile", "step_rule": "pow2", "statistic": "max",
                 "percentile": 99.0},
            quant={"weight_bits": weight_bits, "input_bits": input_bits, "mapping": mapping,
                   "calibration": "max", "input_encoding": "offset", "percentile": 99.0},
            row_tiles=p["row_tiles"], col_tiles=p["col_tiles"], in_scale=float(s_x),
            adc_step=[1] * p["row_tiles"], arrays=names))
        self.refs[lid] = dict(q=q, s_w=s_w, b=b, s_x=np.float32(s_x), input_bits=input_bits,
                              w=w, params=dict(weight_bits=weight_bits, input_bits=input_bits,
                                               cell_bits=cell_bits, mapping=mapping,
                                               rows=rows, cols=cols))
        return lid

    def validated(self, instructions: list[dict], in_shape: list, out_shape: list):
        """The same program, packed by farc.runtime.builder and validated, for the emulator."""
        layers = []
        for lid, r in self.refs.items():
            p = xp(dac_bits=1, adc_bits=16, **r["params"])
            layers.append(builder.pack_layer(r["w"], r["b"], float(r["s_x"]), p, layer_id=lid,
                                             first_crossbar=100 * lid))
        consts = {k: self.arrays[v] for k, v in self.constants.items()}
        return builder.make_program(instructions, {"x": in_shape}, {"y": out_shape}, layers,
                                    consts)

    def const(self, name: str, value: np.ndarray) -> None:
        self.constants[name] = self._array(f"const.{name}", value.astype(np.float32))

    def _array(self, name: str, value: np.ndarray) -> str:
        self.arrays[name] = value
        return name

    def program(self, instructions: list[dict], in_shape: list, out_shape: list):
        manifest = dict(format="farc-tile-program", version=1,
                        model=dict(kind="test", name="test"),
                        inputs=[dict(name="x", shape=[None, *in_shape], dtype="float32")],
                        outputs=[dict(name="y", shape=[None, *out_shape], dtype="float32")],
                        constants=self.constants, layers=self.layers,
                        instructions=instructions)
        return SimpleNamespace(manifest=manifest, arrays=self.arrays)

    # numpy reference of one crossbar layer, straight from docs/numerics.md
    def mvm_ref(self, lid: int, x: np.ndarray) -> np.ndarray:
        r = self.refs[lid]
        qx = 2 ** (r["input_bits"] - 1) - 1
        x_int = np.clip(np.rint(x / r["s_x"]), -qx, qx)
        y = (x_int.astype(np.float64) @ r["q"]) * (np.float64(r["s_x"]) * r["s_w"])
        return (y if r["b"] is None else y + r["b"]).astype(np.float32)


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x.astype(np.float32)})[0]


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> None:
    assert got.shape == want.shape
    assert got.dtype == np.float32
    scale = max(float(np.abs(want).max()), 1e-12)
    assert float(np.abs(got - want).max()) <= rel * scale


def wrap(body: list[dict], out_reg: str = "y") -> list[dict]:
    return [dict(op="input", name="x", out="x"), *body,
            dict(op="output", name="y", **{"in": [out_reg]})]


def prog1(b: Builder, body: list[dict], in_shape: list, out_shape: list, out_reg: str = "y"):
    return b.program(wrap(body, out_reg), in_shape, out_shape)


def assert_emulator_equals_qdq(b: Builder, body: list[dict], in_shape: list, out_shape: list,
                               x: np.ndarray, rel: float = 1e-5) -> None:
    """The lossless emulator and ORT(QDQ) agree on the same (builder-packed) program, and
    the QDQ of the builder's packing equals the QDQ of this file's packing."""
    prog = b.validated(wrap(body), in_shape, out_shape)
    want = Emulator(prog).run({"x": x})["y"]
    got = run_onnx(build_qdq_onnx(prog), x)
    assert_close(got, want, rel)
    assert_close(run_onnx(build_qdq_onnx(prog1(b, body, in_shape, out_shape)), x), got, 0)


# ----------------------------------------------------------------------------- mvm
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize(("weight_bits", "input_bits", "cell_bits"),
                         [(8, 8, 2), (4, 6, 1), (12, 10, 3), (16, 16, 4)])
def test_mvm_matches_quantized_matmul(mapping, weight_bits, input_bits, cell_bits):
    b = Builder()
    w = RNG.normal(size=(37, 11)).astype(np.float32)   # 3 row tiles of 16, odd column count
    bias = RNG.normal(size=11).astype(np.float32)
    lid = b.layer(w, bias, s_x=0.013, weight_bits=weight_bits, input_bits=input_bits,
                  cell_bits=cell_bits, mapping=mapping)
    x = RNG.normal(size=(5, 3, 37)).astype(np.float32)
    body = [dict(op="mvm", layer=lid, **{"in": ["x"]}, out="y")]
    assert_close(run_onnx(build_qdq_onnx(prog1(b, body, [3, 37], [3, 11])), x),
                 b.mvm_ref(lid, x))
    assert_emulator_equals_qdq(b, body, [3, 37], [3, 11], x)


def test_rebuilt_weights_equal_packed_integers():
    b = Builder()
    w = RNG.normal(size=(20, 9)).astype(np.float32)
    for mapping in ("differential", "offset"):
        lid = b.layer(w, None, 0.1, weight_bits=7, cell_bits=2, mapping=mapping, rows=8, cols=8)
        p = b.program([], [20], [9])
        np.testing.assert_equal(integer_weights(p, b.layers[lid]), b.refs[lid]["q"])


def test_mvm_input_clips_to_symmetric_range_and_rounds_half_even():
    b = Builder()
    lid = b.layer(np.eye(4, dtype=np.float32), None, s_x=1.0, weight_bits=8, input_bits=4)
    # 0.5 -> 0 and 2.5 -> 2 (half to even), 9 and -9 clip to +-7 (not -8)
    x = np.array([[0.5, 2.5, 9.0, -9.0]], np.float32)
    p = prog1(b, [dict(op="mvm", layer=lid, **{"in": ["x"]}, out="y")], [4], [4])
    np.testing.assert_array_equal(run_onnx(build_qdq_onnx(p), x), [[0.0, 2.0, 7.0, -7.0]])


def test_weights_are_stored_as_integers():
    b = Builder()
    lid = b.layer(RNG.normal(size=(8, 4)).astype(np.float32), None, 0.1, weight_bits=12)
    p = prog1(b, [dict(op="mvm", layer=lid, **{"in": ["x"]}, out="y")], [8], [4])
    model = build_qdq_onnx(p)
    cast = [n for n in model.graph.node if n.op_type == "Cast"]
    inits = {i.name: i for i in model.graph.initializer}
    assert len(cast) == 1
    assert inits[cast[0].input[0]].data_type == onnx.TensorProto.INT16


# ----------------------------------------------------------------------------- digital ops
X = RNG.normal(size=(3, 5, 6)).astype(np.float32)


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(v.astype(np.float64))


def _ln(v: np.ndarray, g: np.ndarray, bb: np.ndarray, eps: float) -> np.ndarray:
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + eps) * g + bb


def _softmax(v: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(v - v.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


C6 = RNG.normal(size=6).astype(np.float32)
G6 = RNG.normal(size=6).astype(np.float32)


DIGITAL_CASES = {
    "add": ([dict(op="const", name="c", out="c"), dict(op="add", **{"in": ["x", "c"]}, out="y")],
            [5, 6], lambda x: x + C6),
    "sub": ([dict(op="const", name="c", out="c"), dict(op="sub", **{"in": ["x", "c"]}, out="y")],
            [5, 6], lambda x: x - C6),
    "mul": ([dict(op="mul", **{"in": ["x", "x"]}, out="y")], [5, 6], lambda x: x * x),
    "sigmoid": ([dict(op="sigmoid", **{"in": ["x"]}, out="y")], [5, 6],
                lambda x: 1 / (1 + np.exp(-x))),
    "tanh": ([dict(op="tanh", **{"in": ["x"]}, out="y")], [5, 6], np.tanh),
    "gelu": ([dict(op="gelu", **{"in": ["x"]}, out="y")], [5, 6],
             lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    "layernorm": ([dict(op="const", name="c", out="g"), dict(op="const", name="g", out="b"),
                   dict(op="layernorm", eps=1e-6, **{"in": ["x", "g", "b"]}, out="y")],
                  [5, 6], lambda x: _ln(x, C6, G6, 1e-6)),
    "softmax": ([dict(op="softmax", axis=1, **{"in": ["x"]}, out="y")], [5, 6],
                lambda x: _softmax(x, 1)),
    "matmul": ([dict(op="transpose", perm=[0, 2, 1], **{"in": ["x"]}, out="t"),
                dict(op="matmul", **{"in": ["x", "t"]}, out="y")], [5, 5],
               lambda x: x @ x.transpose(0, 2, 1)),
    "scale": ([dict(op="scale", value=0.125, **{"in": ["x"]}, out="y")], [5, 6],
              lambda x: x * 0.125),
    "reshape": ([dict(op="reshape", shape=[30], **{"in": ["x"]}, out="y")], [30],
                lambda x: x.reshape(len(x), 30)),
    "transpose": ([dict(op="transpose", perm=[0, 2, 1], **{"in": ["x"]}, out="y")], [6, 5],
                  lambda x: x.transpose(0, 2, 1)),
    "concat": ([dict(op="concat", axis=2, **{"in": ["x", "x"]}, out="y")], [5, 12],
               lambda x: np.concatenate([x, x], 2)),
    "slice": ([dict(op="slice", axis=1, start=1, stop=4, **{"in": ["x"]}, out="y")], [3, 6],
              lambda x: x[:, 1:4]),
    "slice_last_axis": ([dict(op="slice", axis=-1, start=4, stop=6, **{"in": ["x"]}, out="y")],
                        [5, 2], lambda x: x[..., 4:6]),
    "zeros": ([dict(op="zeros", shape=[2, 3], **{"in": ["x"]}, out="y")], [2, 3],
              lambda x: np.zeros((len(x), 2, 3))),
}


@pytest.mark.parametrize("case", list(DIGITAL_CASES))
def test_digital_op_matches_numpy(case):
    body, out_shape, ref = DIGITAL_CASES[case]
    b = Builder()
    b.const("c", C6)
    b.const("g", G6)
    p = prog1(b, body, [5, 6], out_shape)
    got = run_onnx(build_qdq_onnx(p), X)
    assert_close(got, np.asarray(ref(X.astype(np.float64)), np.float32), rel=2e-6)
    assert_emulator_equals_qdq(b, body, [5, 6], out_shape, X, rel=2e-6)


@pytest.mark.parametrize("batch", [1, 7])
def test_batch_axis_is_dynamic(batch):
    b = Builder()
    p = prog1(b, [dict(op="reshape", shape=[30], **{"in": ["x"]}, out="y")], [5, 6], [30])
    x = RNG.normal(size=(batch, 5, 6)).astype(np.float32)
    assert run_onnx(build_qdq_onnx(p), x).shape == (batch, 30)


# ----------------------------------------------------------------------------- loop: LSTM
def lstm_program(b: Builder, d: int, hidden: dict[str, int], s_x: float, seed: int = 1):
    """One loop running a forward and a backward LSTM over x [B, T, d] in lockstep, the way
    the compiler emits a FAR head; output [B, T, fwd + bwd]."""
    rng = np.random.default_rng(seed)
    body: list[dict] = []
    carry, scatter, zeros = [], [], []
    for name, H in hidden.items():
        w = (rng.normal(size=(d + H, 4 * H)) / np.sqrt(d + H)).astype(np.float32)
        lid = b.layer(w, rng.normal(size=4 * H).astype(np.float32) * 0.1, s_x, rows=8, cols=32)
        zeros += [dict(op="zeros", shape=[H], **{"in": ["x"]}, out=f"h_{name}"),
                  dict(op="zeros", shape=[H], **{"in": ["x"]}, out=f"c_{name}")]
        carry += [f"h_{name}", f"c_{name}"]
        h, c, z = f"h_{name}", f"c_{name}", f"{name}/"
        gate = [dict(op="slice", axis=-1, start=k * H, stop=(k + 1) * H, **{"in": [z + "z"]},
                     out=z + g) for k, g in enumerate("ifgo")]
        body += [dict(op="concat", axis=-1, **{"in": ["x_t_" + name, h]}, out=z + "xh"),
                 dict(op="mvm", layer=lid, **{"in": [z + "xh"]}, out=z + "z"), *gate,
                 dict(op="sigmoid", **{"in": [z + "i"]}, out=z + "i"),
                 dict(op="sigmoid", **{"in": [z + "f"]}, out=z + "f"),
                 dict(op="tanh", **{"in": [z + "g"]}, out=z + "g"),
                 dict(op="sigmoid", **{"in": [z + "o"]}, out=z + "o"),
                 dict(op="mul", **{"in": [z + "f", c]}, out=z + "fc"),
                 dict(op="mul", **{"in": [z + "i", z + "g"]}, out=z + "ig"),
                 dict(op="add", **{"in": [z + "fc", z + "ig"]}, out=c),
                 dict(op="tanh", **{"in": [c]}, out=z + "tc"),
                 dict(op="mul", **{"in": [z + "o", z + "tc"]}, out=h)]
        scatter.append(dict(src=h, axis=1, dst=f"seq_{name}", reverse=name == "bwd"))
    gather = [dict(src="x", axis=1, dst="x_t_" + n, reverse=n == "bwd") for n in hidden]
    loop = dict(op="loop", count=dict(reg="x", axis=1), carry=carry, gather=gather, body=body,
                scatter=scatter)
    cat = dict(op="concat", axis=2, **{"in": [f"seq_{n}" for n in hidden]}, out="y")
    return [*zeros, loop, cat], [None, d], [None, sum(hidden.values())]


def lstm_ref(b: Builder, x: np.ndarray, hidden: dict[str, int]) -> np.ndarray:
    """Numpy LSTM with every cell matmul quantized as docs/numerics.md says."""
    outs = []
    for lid, (name, H) in enumerate(hidden.items()):
        B, T, _ = x.shape
        h, c = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
        seq = np.zeros((B, T, H), np.float32)
        steps = range(T - 1, -1, -1) if name == "bwd" else range(T)
        for t in steps:
            z = b.mvm_ref(lid, np.concatenate([x[:, t], h], -1))
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
            c = (sig(f) * c + sig(i) * np.tanh(g)).astype(np.float32)
            h = (sig(o) * np.tanh(c)).astype(np.float32)
            seq[:, t] = h
        outs.append(seq)
    return np.concatenate(outs, -1)


@pytest.mark.parametrize("hidden", [{"fwd": 5}, {"bwd": 4}, {"fwd": 6, "bwd": 3}])
def test_lstm_loop_matches_numpy(hidden):
    b = Builder()
    body, in_shape, out_shape = lstm_program(b, d=4, hidden=hidden, s_x=0.02)
    x = RNG.normal(size=(3, 7, 4)).astype(np.float32)
    model = build_qdq_onnx(prog1(b, body, in_shape, out_shape))
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    assert_close(run_onnx(model, x), lstm_ref(b, x, hidden), rel=1e-5)
    assert_emulator_equals_qdq(b, body, in_shape, out_shape, x, rel=1e-5)


def test_far_block_emulator_equals_qdq():
    """runtime.handmade's FAR block: pre_proj, per-head BiLSTMs of unequal sizes in one loop,
    head_proj, post_proj, residual. Lossless 8-bit: ORT(QDQ) equals the emulator."""
    from farc.runtime.handmade import FarBlockWeights, far_block_program

    w = FarBlockWeights.random(D=16, heads=2, hidden=[(5, 3), (4, 4)], seed=3)
    x = RNG.normal(size=(3, 9, 16)).astype(np.float32)
    p = xp(rows=32, cols=32, adc_bits=12)
    prog = far_block_program(w, T=9, p=p, calib=x)
    assert all(pl.lossless for pl in Emulator(prog).layers)
    assert_close(run_onnx(build_qdq_onnx(prog), x), Emulator(prog).run({"x": x})["y"], 1e-5)


def test_loop_size_does_not_grow_with_sequence_length():
    b = Builder()
    model = build_qdq_onnx(prog1(b, *lstm_program(b, d=4, hidden={"fwd": 3, "bwd": 3},
                                                  s_x=0.02)))
    for t in (1, 17):
        x = RNG.normal(size=(2, t, 4)).astype(np.float32)
        assert run_onnx(model, x).shape == (2, t, 6)


# ----------------------------------------------------------------------------- errors
def test_unknown_opcode_is_refused():
    p = prog1(Builder(), [dict(op="fft", **{"in": ["x"]}, out="y")], [4], [4])
    with pytest.raises(ProgramError, match=r"instructions\[1\]: opcode 'fft' has no ONNX"):
        build_qdq_onnx(p)


def test_read_before_write_is_refused():
    p = prog1(Builder(), [dict(op="tanh", **{"in": ["nope"]}, out="y")], [4], [4])
    with pytest.raises(ProgramError, match="register 'nope' is read before it is written"):
        build_qdq_onnx(p)


def test_body_value_read_after_loop_is_refused():
    b = Builder()
    body, in_shape, out_shape = lstm_program(b, d=4, hidden={"fwd": 3}, s_x=0.02)
    body[-1] = dict(op="tanh", **{"in": ["fwd/z"]}, out="y")  # a body temporary
    with pytest.raises(ProgramError, match=r"register 'fwd/z' was last written inside the "
                                           r"loop at instructions\[3\] loop without being"):
        build_qdq_onnx(prog1(b, body, in_shape, out_shape))


def test_missing_layer_is_refused():
    p = prog1(Builder(), [dict(op="mvm", layer=3, **{"in": ["x"]}, out="y")], [4], [4])
    with pytest.raises(ProgramError, match="layer 3 is not in the program"):
        build_qdq_onnx(p)


def test_corrupt_codes_are_refused():
    b = Builder()
    lid = b.layer(RNG.normal(size=(8, 4)).astype(np.float32), None, 0.1, weight_bits=4,
                  cell_bits=2, mapping="offset")
    b.arrays[b.layers[lid]["arrays"]["codes"]][...] = 3  # m = 15 > 2 Qw, so q = 8 > Qw
    p = prog1(b, [dict(op="mvm", layer=lid, **{"in": ["x"]}, out="y")], [8], [4])
    with pytest.raises(ProgramError, match="exceeds Qw=7"):
        build_qdq_onnx(p)


def test_reference_paths_sit_beside_the_program(tmp_path):
    f, q = reference_paths(tmp_path / "model.farc")
    assert (f.name, q.name) == ("model.float.onnx", "model.qdq.onnx")
    assert f.parent == tmp_path
