"""The digital ops users' models need around their crossbar layers (issue 24, item 2):
pooling, reductions, log_softmax, clip and its kin, pad; Gemm's transA; Where of constants.

Three levels, each against references written independently of the code under test:
- each new opcode: the emulator against torch's own function and against onnxruntime on
  the QDQ reference's translation of the same instruction;
- each ONNX op in a tiny onnx.helper model (a crossbar MatMul, then the op): the rebuilt
  GraphModel against onnxruntime on the file, then the compiled program (isaac, lossless
  ADC) against it too: relative error < 1e-3;
- torch modules as `.pt2` and ONNX (a mean-pooled BiLSTM classifier, a pooling model):
  compiled, run, top-1 identical to the module, `farc verify` passes."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from farc.errors import ProgramError
from farc.models.from_onnx import load_onnx
from farc.models.from_torch import load_pt2
from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402
from test_byom import _export, _model, _ort, _t, _verify_passes, _vi, _write  # noqa: E402

RNG = np.random.default_rng(24)


# ---------------------------------------------------------------- opcodes vs torch
def _pool_ref(x: torch.Tensor, mode: str, k, s, p, d, inc: bool) -> torch.Tensor:
    """torch's pooling with symmetric pads p (torch's own argument form)."""
    if mode == "max":
        fn = F.max_pool1d if len(k) == 1 else F.max_pool2d
        return fn(x, k, s, p, d)
    fn = F.avg_pool1d if len(k) == 1 else F.avg_pool2d
    return fn(x, k, s, p, count_include_pad=inc)


OPCODES = {  # name -> (instruction attrs, input shape without batch, torch reference)
    "maxpool2d-pad-dilation": (
        {"op": "pool", "mode": "max", "kernel": [3, 2], "stride": [2, 1], "pads": [1, 1, 1, 1],
         "dilation": [2, 1], "count_include_pad": False}, [3, 9, 6],
        lambda x: _pool_ref(x, "max", [3, 2], [2, 1], [1, 1], [2, 1], False)),
    "maxpool1d": ({"op": "pool", "mode": "max", "kernel": [3], "stride": [3], "pads": [0, 0],
                   "dilation": [1], "count_include_pad": False}, [4, 10],
                  lambda x: F.max_pool1d(x, 3, 3)),
    "avgpool1d-exclude-pad": (
        {"op": "pool", "mode": "avg", "kernel": [3], "stride": [1], "pads": [1, 1],
         "dilation": [1], "count_include_pad": False}, [4, 7],
        lambda x: _pool_ref(x, "avg", [3], [1], [1], [1], False)),
    "avgpool2d-include-pad": (
        {"op": "pool", "mode": "avg", "kernel": [2, 2], "stride": [2, 2], "pads": [1, 1, 1, 1],
         "dilation": [1, 1], "count_include_pad": True}, [2, 5, 6],
        lambda x: _pool_ref(x, "avg", [2, 2], [2, 2], [1, 1], [1, 1], True)),
    "reduce-mean": ({"op": "reduce", "mode": "mean", "axes": [1], "keepdims": False}, [7, 5],
                    lambda x: x.mean(1)),
    "reduce-sum-keep": ({"op": "reduce", "mode": "sum", "axes": [-1, 1], "keepdims": True},
                        [3, 4, 5], lambda x: x.sum((1, 3), keepdim=True)),
    "reduce-max": ({"op": "reduce", "mode": "max", "axes": [2], "keepdims": False}, [3, 6],
                   lambda x: x.amax(2)),
    "log_softmax": ({"op": "log_softmax", "axis": 1}, [5, 3],
                    lambda x: F.log_softmax(x, 1)),
    "clip": ({"op": "clip", "min": -0.5, "max": 0.75}, [3, 5], lambda x: x.clamp(-0.5, 0.75)),
    "leaky_relu": ({"op": "leaky_relu", "alpha": 0.2}, [3, 5], lambda x: F.leaky_relu(x, 0.2)),
    "pad": ({"op": "pad", "pads": [0, 1, 0, 0, 2, 3], "value": -0.5}, [3, 5],
            lambda x: F.pad(x, (0, 3, 1, 2), value=-0.5)),
}


def _one_op_program(attrs: dict, shape: list[int], out_shape: list[int]):
    from farc.runtime.builder import make_program

    ins = [{"op": "input", "name": "x", "out": "x"}, dict(attrs, **{"in": ["x"], "out": "y"}),
           {"op": "output", "name": "y", "in": ["y"]}]
    return make_program(ins, {"x": shape}, {"y": out_shape})


@pytest.mark.parametrize("case", OPCODES)
def test_opcode_matches_torch_and_the_qdq_reference(case: str) -> None:
    from farc.runtime.emulator import Emulator

    from farc.check.qdq import build_qdq_onnx

    attrs, shape, ref = OPCODES[case]
    x = RNG.normal(size=(3, *shape)).astype(np.float32)
    want = ref(torch.from_numpy(x)).numpy()
    program = _one_op_program(attrs, shape, list(want.shape[1:]))
    emu = Emulator(program)
    got = emu.run({"x": x})["y"]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    counted = {"pool": want.size * int(np.prod(attrs.get("kernel", 1))), "reduce": x.size,
               "pad": None}.get(attrs["op"], want.size)  # window elements, inputs, outputs
    assert emu.counters.digital_ops.get(attrs["op"]) == counted
    qdq = _ort(build_qdq_onnx(program).SerializeToString(), x)[0]
    np.testing.assert_allclose(got, qdq, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("attrs", "shape", "match"), [
    ({"op": "reduce", "mode": "mean", "axes": [0], "keepdims": False}, [3],
     "never 0 \\(batch\\)"),
    ({"op": "reduce", "mode": "mean", "axes": [-2], "keepdims": False}, [3],
     "out of range or the batch axis"),
    ({"op": "reduce", "mode": "median", "axes": [1], "keepdims": False}, [3], "mode 'median'"),
    ({"op": "pool", "mode": "max", "kernel": [2], "stride": [1], "pads": [2, 0],
      "dilation": [1], "count_include_pad": False}, [2, 5], "not below the window"),
    ({"op": "pool", "mode": "max", "kernel": [2, 2], "stride": [1, 1], "pads": [0, 0, 0, 0],
      "dilation": [1, 1], "count_include_pad": False}, [5], "needs \\[B, C, \\*spatial\\]"),
    ({"op": "pool", "mode": "avg", "kernel": [10**12], "stride": [1], "pads": [0, 0],
      "dilation": [1], "count_include_pad": True}, [2, 5], "larger than the padded input"),
    ({"op": "pool", "mode": "avg", "kernel": ["2"], "stride": [1], "pads": [0, 0],
      "dilation": [1], "count_include_pad": True}, [2, 5], "kernel \\['2'\\] must be a list"),
    ({"op": "pad", "pads": [1, 0, 1, 0], "value": 0.0}, [3], "0 on the batch axis"),
    ({"op": "pad", "pads": [0, 10**12, 0, 0], "value": 0.0}, [3], "memory|budget|exceeds"),
    ({"op": "clip", "min": 1.0, "max": 0.0}, [3], "min 1.0 above max 0.0"),
])
def test_bad_attributes_are_one_line_program_errors(attrs, shape, match) -> None:
    with pytest.raises(ProgramError, match=match):
        _one_op_program(attrs, shape, [None])


# ---------------------------------------------------------------- ONNX ops, one at a time
def _onnx_case(op_nodes, x_shape: list[int], y_rank: int, inits=(), opset: int = 17) -> bytes:
    """x -> MatMul(W) (the crossbar layer, same width) -> op_nodes (reading 'h', writing 'y')."""
    k = x_shape[-1]
    w = RNG.normal(size=(k, k)).astype(np.float32) / np.sqrt(k)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="/fc/MatMul"), *op_nodes]
    return _model(nodes, [_vi("x", ["batch", *x_shape[1:]])], [_vi("y", [None] * y_rank)],
                  [_t("W", w), *inits], opset)


def _ints(name: str, values: list[int]) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _node(op: str, ins: list[str], **attrs) -> object:
    return helper.make_node(op, ins, ["y"], name=f"/op/{op}", **attrs)


ONNX_CASES = {  # name -> (nodes, x shape, output rank, initializers, opset)
    "MaxPool2d-asym-pads": ([_node("MaxPool", ["h"], kernel_shape=[3, 2], strides=[1, 2],
                                   pads=[1, 0, 0, 1])], [1, 2, 6, 8], 4, [], 17),
    "AveragePool1d": ([_node("AveragePool", ["h"], kernel_shape=[3], strides=[2],
                             pads=[1, 1])], [1, 3, 8], 3, [], 17),
    "AveragePool2d-count-pad": ([_node("AveragePool", ["h"], kernel_shape=[2, 3],
                                       pads=[0, 1, 1, 2], count_include_pad=1)],
                                [1, 2, 5, 8], 4, [], 17),
    "GlobalAveragePool": ([_node("GlobalAveragePool", ["h"])], [1, 3, 4, 8], 4, [], 17),
    "GlobalMaxPool1d": ([_node("GlobalMaxPool", ["h"])], [1, 3, 8], 3, [], 17),
    "ReduceMean-attr": ([_node("ReduceMean", ["h"], axes=[1], keepdims=0)], [1, 5, 8], 2, [],
                        17),
    "ReduceSum-input": ([_node("ReduceSum", ["h", "ax"], keepdims=1)], [1, 3, 4, 8], 4,
                        [_ints("ax", [1, -2])], 17),
    "ReduceMax-input-opset18": ([_node("ReduceMax", ["h", "ax"], keepdims=0)], [1, 5, 8], 2,
                                [_ints("ax", [-1])], 18),
    "LogSoftmax": ([_node("LogSoftmax", ["h"], axis=1)], [1, 4, 8], 3, [], 17),
    "Clip-min-only": ([_node("Clip", ["h", "lo"])], [1, 8], 2,
                      [_t("lo", np.array(-0.25))], 17),
    "Clip-attrs-opset6": ([_node("Clip", ["h"], min=-0.3, max=0.2)], [1, 8], 2, [], 6),
    "LogSoftmax-opset11": ([_node("LogSoftmax", ["h"], axis=2)], [1, 4, 8], 3, [], 11),
    "Clip-both": ([_node("Clip", ["h", "lo", "hi"])], [1, 8], 2,
                  [_t("lo", np.array(-0.25)), _t("hi", np.array(0.5))], 17),
    "HardSigmoid": ([_node("HardSigmoid", ["h"], alpha=0.4, beta=0.3)], [1, 8], 2, [], 17),
    "HardSwish": ([_node("HardSwish", ["h"])], [1, 8], 2, [], 17),
    "LeakyRelu": ([_node("LeakyRelu", ["h"], alpha=0.3)], [1, 8], 2, [], 17),
    "Pad": ([_node("Pad", ["h", "pads", "v"])], [1, 3, 8], 3,
            [_ints("pads", [0, 1, 2, 0, 0, 1]), _t("v", np.array(0.5))], 17),
    "Pad-axes-opset18": ([_node("Pad", ["h", "pads", "", "axes"])], [1, 3, 8], 3,
                         [_ints("pads", [2, 1]), _ints("axes", [-1])], 18),
    "Gemm-transA": ([helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
                     _node("Gemm", ["ht", "B", "C"], transA=1, transB=1, alpha=0.5)],
                    [1, 8], 2, [_t("B", RNG.normal(size=(5, 8))), _t("C", RNG.normal(size=5))],
                    17),
    "Where-of-constants": ([helper.make_node("Where", ["cond", "a", "b"], ["w"]),
                            _node("Add", ["h", "w"])], [1, 8], 2,
                           [helper.make_tensor("cond", onnx.TensorProto.BOOL, [8],
                                               [True, False] * 4),
                            _t("a", np.arange(8)), _t("b", -np.ones(8))], 17),
}


def _compiled_equals(path: Path, x: np.ndarray, want: np.ndarray) -> object:
    """Compile on isaac (calibrated on x), run: lossless ADC, relative error < 1e-3."""
    from farc.runtime.emulator import Emulator
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    program = compile_checkpoint(path, load_target("isaac"),
                                 CompileOptions(calib_images=torch.from_numpy(x),
                                                calib_samples=len(x)))
    assert program_is_lossless(program)
    out = Emulator(program).run({program.inputs[0]["name"]: x})
    got = out[program.manifest["outputs"][0]["name"]]
    assert got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-3, rel
    return program


@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_op_rebuilt_and_compiled_equal_onnxruntime(case: str, tmp_path) -> None:
    nodes, shape, rank, inits, opset = ONNX_CASES[case]
    proto = _onnx_case(nodes, shape, rank, inits, opset)
    path = _write(tmp_path, proto)
    x = RNG.normal(size=(4, *shape[1:])).astype(np.float32)
    want = _ort(proto, x)[0]
    with torch.no_grad():
        np.testing.assert_allclose(load_onnx(path)(torch.from_numpy(x)).numpy(), want,
                                   rtol=1e-5, atol=1e-5)
    _compiled_equals(path, x, want)


ONNX_REFUSALS = {
    "ReduceMean over the batch": ([_node("ReduceMean", ["h"], axes=[0, 1])], [1, 5, 8], 1,
                                  "node /op/ReduceMean: reduceMean over axes \\[0, 1\\] "
                                  "includes the batch axis"),
    "ReduceSum of everything": ([_node("ReduceSum", ["h"], keepdims=0)], [1, 8], 0,
                                "includes the batch axis"),
    "MaxPool ceil_mode": ([_node("MaxPool", ["h"], kernel_shape=[2], ceil_mode=1)],
                          [1, 2, 8], 3, "node /op/MaxPool: pooling with ceil_mode = 1"),
    "MaxPool SAME": ([_node("MaxPool", ["h"], kernel_shape=[2], auto_pad="SAME_UPPER")],
                     [1, 2, 8], 3, "auto_pad SAME_UPPER"),
    "Pad reflect": ([_node("Pad", ["h", "p"], mode="reflect")], [1, 8], 2,
                    "Pad with mode reflect; only constant"),
    "Gemm transA, batch first": ([_node("Gemm", ["h", "B"], transA=1)], [1, 8], 2,
                                 "node /op/Gemm: Gemm with transA = 1 on an A whose batch is "
                                 "not its second axis"),
    "Where of a tensor": ([_node("Where", ["c", "h", "h"])], [1, 8], 2,
                          "node /op/Where: Where of a computed tensor"),
}


@pytest.mark.parametrize("case", ONNX_REFUSALS)
def test_onnx_op_refusals_are_one_line(case: str, tmp_path) -> None:
    nodes, shape, rank, match = ONNX_REFUSALS[case]
    inits = [_ints("p", [0, 1, 0, 1]), _t("B", np.ones((8, 3))),
             helper.make_tensor("c", onnx.TensorProto.BOOL, [8], [True] * 8)]
    path = _write(tmp_path, _onnx_case(nodes, shape, rank, inits))
    with pytest.raises(UnsupportedModelError, match=match) as exc:
        load_onnx(path)
    assert "\n" not in str(exc.value)


def test_three_d_pooling_is_refused_by_the_scan(tmp_path) -> None:
    from farc.models.onnx_scan import check_onnx_file

    nodes = [_node("MaxPool", ["h"], kernel_shape=[2, 2, 2])]
    path = _write(tmp_path, _onnx_case(nodes, [1, 2, 4, 4, 8], 5))
    with pytest.raises(UnsupportedModelError, match="unsupported ONNX op MaxPool \\(3-d\\) at "
                                                    "node /op/MaxPool"):
        check_onnx_file(path)


# ---------------------------------------------------------------- torch modules
class MeanBiLSTM(nn.Module):
    """A BiLSTM classifier of the 8 rows of a digit, mean-pooled over time: `y.mean(1)`."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.cls = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.cls(y.mean(1))


class PoolNet(nn.Module):
    """A digit as [1, 8, 8]: a per-row linear layer, then pooling (max 2-d, average 1-d,
    global average), a max reduction, pad + log_softmax + sum, clamp, hardswish, leaky_relu,
    hardsigmoid, and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.cls = nn.Linear(16 + 8 + 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc(x), 0.1)                                   # [B, 1, 8, 8]
        a = F.max_pool2d(h, 2).flatten(1)                                   # [B, 16]
        b = F.avg_pool1d(F.hardswish(h[:, 0]), 3, 1, 1,
                         count_include_pad=False).amax(1)                   # [B, 8]
        c = F.log_softmax(F.pad(h[:, 0].clamp(-1, 1), (1, 1)), -1).sum(1)   # [B, 10]
        g = F.adaptive_avg_pool2d(F.hardsigmoid(h), 1).flatten(1)           # [B, 1]
        return self.cls(torch.cat([a, b, c[:, 1:-1]], 1)) + g


TORCH_MODELS = {"mean-bilstm": (MeanBiLSTM, (8, 8)), "poolnet": (PoolNet, (1, 8, 8))}


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_torch_module_compiles_runs_and_verifies(name: str, fmt: str, tmp_path) -> None:
    """Module -> .pt2 / ONNX (TorchScript exporter) -> GraphModel equal to it -> compiled on
    isaac: lossless, relative error < 1e-3 and top-1 identical to the module; verify
    passes (reference built from the file)."""
    from farc.data import load_split

    make, shape = TORCH_MODELS[name]
    torch.manual_seed(3)
    module = make().eval()
    path = _export(module, shape, tmp_path / f"{name}.{fmt}", fmt)
    x = load_split("digits", "test")[0][:16].reshape(16, *shape).float()
    with torch.no_grad():
        want = module(x).numpy()
        graph = load_pt2(path) if fmt == "pt2" else load_onnx(path)
        np.testing.assert_allclose(graph(x).numpy(), want, rtol=1e-5, atol=1e-5)
    program = _compiled_equals(path, x.numpy(), want)
    from farc.runtime.emulator import Emulator

    got = Emulator(program).run({program.inputs[0]["name"]: x.numpy()})
    top1 = next(iter(got.values())).argmax(1)
    assert (top1 == want.argmax(1)).all()
    ops = {i["op"] for i in program.instructions}
    assert "reduce" in ops and (name != "poolnet" or {"pool", "pad", "clip", "leaky_relu",
                                                      "log_softmax"} <= ops)
    _verify_passes(program, x, path)


def test_mean_bilstm_from_the_default_onnx_exporter(tmp_path) -> None:
    """torch 2.13's default (dynamo) exporter writes the mean as ReduceMean with an axes
    input; the program equals the module."""
    torch.manual_seed(4)
    module = MeanBiLSTM().eval()
    x = torch.randn(6, 8, 8)
    path = tmp_path / "mean.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamic_shapes=({0: torch.export.Dim(
            "batch")},), input_names=["x"], output_names=["logits"])
    with torch.no_grad():
        want = module(x).numpy()
    _compiled_equals(path, x.numpy(), want)


def test_pooling_the_batch_axis_and_ceil_mode_are_refused(tmp_path) -> None:
    class BatchMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).mean(0, keepdim=True)

    class Ceil(BatchMean):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool1d(self.fc(x), 3, ceil_mode=True)

    path = _export(BatchMean().eval(), (8,), tmp_path / "bm.pt2", "pt2")
    with pytest.raises(UnsupportedModelError, match="reduceMean over axes \\[0\\] includes "
                                                    "the batch axis"):
        load_pt2(path)
    path = _export(Ceil().eval(), (4, 8), tmp_path / "ceil.pt2", "pt2")
    with pytest.raises(UnsupportedModelError, match="pooling with ceil_mode=True"):
        load_pt2(path)


# ---------------------------------------------------------------- the emitter's Relax forms
def _emit(body) -> list[dict]:
    """Instructions emitted for main(x [1, 2, 6, 6]) = body(bb, x)."""
    from farc.passes.emit_tile_program import emit_tile_program
    from farc.targets import load_target
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, 2, 6, 6), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([body(bb, x)]))
        bb.emit_func_output(out)
    return emit_tile_program(bb.get(), load_target("isaac"), {"kind": "graph"}).instructions


def test_emitter_maps_relax_pooling_reduction_clip_and_pad() -> None:
    from tvm import relax

    def body(bb, x):
        p = bb.emit(relax.op.nn.max_pool2d(x, (3, 2), (2, 2), padding=(1, 0, 0, 1)))
        r = bb.emit(relax.op.mean(p, axis=[-1], keepdims=False))
        c = bb.emit(relax.op.clip(r, 0.0, float("inf")))
        return bb.emit(relax.op.nn.pad(c, [0, 0, 1, 2, 0, 3], pad_value=-1.5))

    code = {i["op"]: i for i in _emit(body)}
    assert {k: code["pool"][k] for k in ("mode", "kernel", "stride", "pads", "dilation")} == \
        {"mode": "max", "kernel": [3, 2], "stride": [2, 2], "pads": [1, 0, 0, 1],
         "dilation": [1, 1]}
    assert (code["reduce"]["axes"], code["reduce"]["keepdims"]) == ([3], False)
    assert code["clip"]["min"] == 0.0 and code["clip"]["max"] == float(np.finfo(np.float32).max)
    assert (code["pad"]["pads"], code["pad"]["value"]) == ([0, 1, 0, 0, 2, 3], -1.5)


@pytest.mark.parametrize(("body", "match"), [
    (lambda bb, x, r: r.op.mean(x, axis=[0, 1]), "reduces the batch axis \\(0\\)"),
    (lambda bb, x, r: r.op.sum(x), "over every axis would reduce the batch axis"),
    (lambda bb, x, r: r.op.nn.avg_pool2d(x, (2, 2), ceil_mode=True), "with ceil_mode"),
    (lambda bb, x, r: r.op.nn.pad(x, [1, 0, 0, 0, 0, 0, 0, 0]), "padding the batch axis"),
    (lambda bb, x, r: r.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 0, 0], pad_mode="reflect"),
     "pad mode reflect"),
], ids=["mean-batch", "sum-all", "ceil", "pad-batch", "reflect"])
def test_emitter_refuses_what_would_touch_the_batch(body, match) -> None:
    from tvm import relax

    from farc.errors import PassError

    with pytest.raises(PassError, match=match):
        _emit(lambda bb, x: bb.emit(body(bb, x, relax)))


# ---------------------------------------------------------------- planted faults
def _fault_reduce_mean_as_sum(monkeypatch) -> None:
    from farc.runtime import emulator

    right = emulator.HANDLERS["reduce"]
    monkeypatch.setitem(emulator.HANDLERS, "reduce", lambda emu, ins, xs: right(
        emu, dict(ins, mode="sum" if ins["mode"] == "mean" else ins["mode"]), xs))


def _fault_pool_counts_the_pads(monkeypatch) -> None:
    from farc.passes.emit_tile_program import _Emitter

    right = _Emitter._pool

    def wrong(self, call, args, mode):
        reg = right(self, call, args, mode)
        self.code[-1]["count_include_pad"] = not self.code[-1]["count_include_pad"]
        return reg

    monkeypatch.setattr(_Emitter, "_pool", wrong)


@pytest.mark.parametrize("plant", [_fault_reduce_mean_as_sum, _fault_pool_counts_the_pads],
                         ids=["emulator-mean-as-sum", "emitter-avg-counts-pads"])
def test_planted_fault_in_a_new_op_fails_verify(plant, monkeypatch, tmp_path) -> None:
    """The reference is built from the model, not from the program or the emulator: a
    wrong handler or a wrong emitted attribute of the new ops fails verify."""
    from farc.targets import load_target

    from farc.check.verify import resolve_references, verify
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.data import load_split

    torch.manual_seed(3)
    path = _export(PoolNet().eval(), (1, 8, 8), tmp_path / "pool.pt2", "pt2")
    x = load_split("digits", "test")[0][:8].reshape(8, 1, 8, 8).numpy()
    plant(monkeypatch)
    program = compile_checkpoint(path, load_target("isaac"), CompileOptions(calib_samples=16))
    report = verify(program, x, None, resolve_references(program, None), bitlevel_samples=2)
    assert not report.ok
    assert report.pairs["emulator", "reference"].rel > 1e-3


# ---------------------------------------------------------------- the builder's refusals
def _builder_refusal(call) -> str:
    from farc.models.graph import GraphBuilder

    b = GraphBuilder({})
    v = b.input("x", [1, 2, 6])
    with pytest.raises(UnsupportedModelError) as exc:
        call(b, v)
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize(("call", "match"), [
    (lambda b, v: b.pool(v, "avg", [2], [1], [0, 0], [2], True, "n"),
     "average pooling with dilations \\[2\\]"),
    (lambda b, v: b.pool(v, "avg", [3], [1], [0, 1], None, False, "n"),
     "asymmetric or above half the kernel\\) and count_include_pad = 0"),
    (lambda b, v: b.pool(v, "max", [2], [1], [2, 0], None, False, "n"),
     "pads \\[2, 0\\] as large as the window"),
    (lambda b, v: b.pool(v, "max", [2, 2], [1, 1], None, None, False, "n"),
     "pooling over 2 axes of a rank-3 tensor"),
    (lambda b, v: b.pool(v, "max", [8], [1], None, None, False, "n"), "leaves no output"),
    (lambda b, v: b.reduce(b.transpose(v, [2, 0, 1], "t"), "max", [1], False, "n"),
     "reduceMax over axes \\[1\\] includes the batch axis \\(1\\)"),
    (lambda b, v: b.pad(v, [1, 0, 0, 0, 0, 0], 0.0, "n"), "padding the batch axis"),
    (lambda b, v: b.pad(v, [0, 0, -1, 0, 0, 0], 0.0, "n"), "none negative"),
], ids=["avg-dilation", "avg-asym-exclude", "pad-window", "rank", "no-output",
        "permuted-batch", "pad-batch", "pad-negative"])
def test_builder_refuses_in_one_line(call, match) -> None:
    assert re.search(match, _builder_refusal(call))


def test_reduce_axes_follow_the_value_permutation() -> None:
    """A time-major value ([T, B, F] logically, stored [B, T, F]): a mean over logical
    axis 0 (time) reduces stored axis 1, and the result keeps the batch first."""
    from farc.models.graph import GraphBuilder

    b = GraphBuilder({})
    v = b.transpose(b.input("x", [1, 5, 3]), [1, 0, 2], "t")  # logical [T, B, F]
    out = b.reduce(v, "mean", [0], False, "n")
    node = b.nodes[-1]
    assert node.op == "reduce" and node.attrs["dims"] == [1]
    assert out.shape == (1, 3) and out.batch_axis == 0
    model = b.finish([(out, "y")])
    x = torch.randn(4, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x.mean(1))


class _After(nn.Module):
    """fc over the last axis, then `fn`."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.fc(x))


@pytest.mark.parametrize(("fn", "match"), [
    (lambda h: F.adaptive_avg_pool2d(h, 2), "adaptive_avg_pool2d to \\[2, 2\\]; only to size 1"),
    (lambda h: F.pad(h, (1, 1, 1, 1), mode="reflect"), "node pad: pad mode 'reflect'; only "
                                                         "constant"),
    (lambda h: F.avg_pool2d(h, 2, divisor_override=3), "avg_pool2d with divisor_override"),
    (lambda h: h.clamp(min=h[:, :1]), "node clamp: clamp with tensor bounds"),
], ids=["adaptive-2", "reflect", "divisor", "tensor-bound"])
def test_pt2_digital_op_refusals(fn, match, tmp_path) -> None:
    path = _export(_After(fn).eval(), (3, 4, 8), tmp_path / "r.pt2", "pt2")
    with pytest.raises(UnsupportedModelError, match=match) as exc:
        load_pt2(path)
    assert "\n" not in str(exc.value)
