"""General convolutions on crossbars (issue 24, item 1): 1-d and 2-d Conv with any kernel,
stride, padding and dilation, the kernel unrolled into crossbar rows by one `im2col`
instruction, BatchNorm folded into the convolution before it.

Expected values never come from farc: patches from torch's own unfold, outputs from
onnxruntime on the user's ONNX file or from the user's torch module."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from farc.runtime.builder import make_program
from farc.runtime.emulator import Emulator
from torch import nn

from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(24)


def _ort(proto: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _run(program, x: np.ndarray) -> np.ndarray:
    out = Emulator(program).run({program.inputs[0]["name"]: x})
    return out[program.manifest["outputs"][0]["name"]]


def _compile(path: Path, calib: np.ndarray, target: str = "isaac"):
    """Compiled on the very inputs the test runs (so no input is clipped by calibration)."""
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    return compile_checkpoint(path, load_target(target),
                              CompileOptions(calib_images=torch.from_numpy(calib),
                                             calib_samples=len(calib)))


# ---------------------------------------------------------------- the im2col instruction
@pytest.mark.parametrize("kernel,stride,pads,dilation", [
    ([3, 3], [1, 1], [1, 1], [1, 1]), ([2, 3], [2, 1], [0, 1], [1, 2]),
    ([3], [2], [2], [1]), ([2], [1], [0], [3])])
def test_im2col_rows_are_torch_unfold(kernel, stride, pads, dilation) -> None:
    """Each row of the instruction's output is one position's receptive field, in the
    (channel, kernel offset) order of a flattened [D, C, *kernel] weight: torch's unfold."""
    size = [7, 6][:len(kernel)]
    x = RNG.normal(size=(2, 3, *size)).astype(np.float32)
    ins = [{"op": "input", "name": "x", "out": "x"},
           {"op": "im2col", "in": ["x"], "out": "y", "kernel": kernel, "stride": stride,
            "pads": pads, "dilation": dilation},
           {"op": "output", "name": "y", "in": ["y"]}]
    got = Emulator(make_program(ins, {"x": [3, *size]}, {"y": [None]})).run({"x": x})["y"]
    two = len(kernel) == 2
    lift = (lambda v, one: v) if two else (lambda v, one: [one, *v])
    t = torch.from_numpy(x if two else x[:, :, None])
    want = torch.nn.functional.unfold(t, lift(kernel, 1), lift(dilation, 1), lift(pads, 0),
                                      lift(stride, 1)).transpose(1, 2).numpy()
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- ONNX Conv variants
def _conv_model(spatial: int, kernel, attrs: dict, bias: bool, bn: str | None) -> bytes:
    c_in, c_out = 3, 5
    size = [9, 8][:spatial]
    w = RNG.normal(size=(c_out, c_in, *kernel)).astype(np.float32) * 0.4
    inits = [numpy_helper.from_array(w, "conv.weight")]
    ins = ["x", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=c_out).astype(np.float32),
                                             "conv.bias"))
        ins.append("conv.bias")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", **attrs)]
    last = "c"
    if bn is not None:
        stats = [RNG.uniform(0.5, 1.5, c_out), RNG.normal(size=c_out), RNG.normal(size=c_out),
                 RNG.uniform(0.5, 2.0, c_out)]
        names = ["bn.scale", "bn.bias", "bn.mean", "bn.var"]
        inits += [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
                  zip(stats, names)]
        if bn == "after_relu":  # not foldable: a digital multiply and add
            nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
            last = "r"
        nodes.append(helper.make_node("BatchNormalization", [last, *names], ["bn"],
                                      name="bn", epsilon=1e-3))
        last = "bn"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="out_relu"))
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["batch", c_in, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


CONV_VARIANTS = {
    "2d-k3-pad1": (2, [3, 3], {"pads": [1, 1, 1, 1]}, True, None),
    "2d-k3-s2-d2": (2, [3, 3], {"strides": [2, 2], "dilations": [2, 2]}, True, None),
    "2d-k2x3-s1x2-pad": (2, [2, 3], {"strides": [1, 2], "pads": [1, 0, 1, 0]}, False, None),
    "2d-same-upper": (2, [3, 3], {"auto_pad": "SAME_UPPER"}, True, None),
    "2d-same-lower-s2": (2, [3, 3], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, True,
                         None),  # asymmetric: a zero pad first
    "2d-pads-0101": (2, [2, 2], {"pads": [0, 1, 1, 0]}, True, None),
    "2d-bn-folded": (2, [3, 3], {"pads": [1, 1, 1, 1]}, True, "folded"),
    "2d-bn-after-relu": (2, [3, 3], {}, False, "after_relu"),
    "1d-k5-s2-pad2": (1, [5], {"strides": [2], "pads": [2, 2]}, True, None),
    "1d-k3-d2-bn": (1, [3], {"dilations": [2]}, False, "folded"),
}


@pytest.mark.parametrize("name", list(CONV_VARIANTS))
def test_onnx_conv_variant_against_onnxruntime(name: str, tmp_path: Path) -> None:
    """The rebuilt model equals onnxruntime on the file, and the compiled program (isaac,
    lossless ADC) stays within 1e-3 of it; BatchNorm after a conv costs no instruction."""
    from farc.models.from_onnx import load_onnx

    spatial, kernel, attrs, bias, bn = CONV_VARIANTS[name]
    proto = _conv_model(spatial, kernel, attrs, bias, bn)
    path = tmp_path / "conv.onnx"
    path.write_bytes(proto)
    x = RNG.normal(size=(4, 3, *[9, 8][:spatial])).astype(np.float32)
    want = _ort(proto, x)
    with torch.no_grad():
        np.testing.assert_allclose(load_onnx(path)(torch.from_numpy(x)).numpy(), want,
                                   atol=1e-5)
    program = _compile(path, x)
    got = _run(program, x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-3
    ops = [i["op"] for i in program.instructions]
    assert ops.count("im2col") == 1 and ops.count("mvm") == 1
    pads = attrs.get("pads", [])
    assert ("pad" in ops) == (pads[:spatial] != pads[spatial:] or "SAME_LOWER" in str(attrs))
    assert [L["kind"] for L in program.layers] == ["conv"]
    assert ("mul" in ops) == (bn == "after_relu")  # folded: no digital BatchNorm


@pytest.mark.parametrize("change,match", [
    ({"group": 3}, "grouped or depthwise convolution"),
])
def test_unsupported_conv_forms_are_one_line(change, match, tmp_path: Path) -> None:
    from farc.models.from_onnx import load_onnx

    attrs = {"pads": [1, 1, 1, 1], **change}
    kernel = [3, 3]
    proto = _conv_model(2, kernel, attrs, False, None)
    if "group" in change:  # a depthwise weight [C, 1, k, k]
        m = onnx.load_from_string(proto)
        w = RNG.normal(size=(3, 1, 3, 3)).astype(np.float32)
        m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "conv.weight"))
        proto = m.SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(proto)
    with pytest.raises(UnsupportedModelError, match=match) as e:
        load_onnx(path)
    assert "\n" not in str(e.value)


def test_three_d_conv_is_refused_by_the_scan(tmp_path: Path) -> None:
    from farc.models.onnx_scan import check_onnx_file

    w = numpy_helper.from_array(np.zeros((2, 1, 2, 2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c3d")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "c3d.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UnsupportedModelError, match=r"Conv \(3-d\) at node c3d"):
        check_onnx_file(path)


# ---------------------------------------------------------------- a CNN end to end
class SmallCNN(nn.Module):
    """A padded 3x3 convolution and a strided dilated one, each with BatchNorm, a 1x1 one
    (a patch embedding's form) and a classifier, on a small image."""

    def __init__(self, size: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 4, 1)
        out = (size + 4 - 4 - 1) // 2 + 1
        self.fc = nn.Linear(4 * out * out, 10)
        for bn in (self.bn1, self.bn2):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        return self.fc(torch.tanh(self.c3(x)).flatten(1))


def _export(module: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    example = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".pt2":
            batch = ({0: torch.export.Dim("batch")},)
            torch.export.save(torch.export.export(module, (example,), dynamic_shapes=batch),
                              str(path))
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=False,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_cnn_compiles_runs_and_verifies(fmt: str, tmp_path: Path) -> None:
    """The CNN from .pt2 and ONNX: equals the torch module, compiles lossless on isaac with
    BatchNorm folded (four crossbar layers, no digital multiply), runs within 1e-3 of the
    module, and passes verify (layer integers bit-identical to the reference)."""
    from farc.check.verify import resolve_references, verify

    torch.manual_seed(3)
    module = SmallCNN().eval()
    path = _export(module, (1, 10, 10), tmp_path / f"cnn.{fmt}")
    x = torch.from_numpy(RNG.normal(size=(8, 1, 10, 10)).astype(np.float32))
    program = _compile(path, x.numpy())
    # the 1x1 convolution (stride = kernel, no padding) is a patch embedding: reshapes, no
    # gather
    assert [L["kind"] for L in program.layers] == ["conv", "conv", "patch_embed",
                                                   "classifier"]
    assert sum(i["op"] == "im2col" for i in program.instructions) == 2
    assert not any(i["op"] == "mul" for i in program.instructions)
    with torch.no_grad():
        want = module(x).numpy()
    got = _run(program, x.numpy())
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-3
    report = verify(program, x.numpy(), None, resolve_references(program, None),
                    bitlevel_samples=2)
    assert report.ok, report.failure_line()
    names = {c.name for c in report.checks if c.passed}
    assert {"layer integers (fast path)", "layer integers (bitlevel path)"} <= names


def test_program_size_does_not_grow_with_the_image(tmp_path: Path) -> None:
    """The positions are one instruction's rows: the same model at 10x10 and 20x20 has the
    same Relax bindings and the same instructions, only the shapes differ."""
    from farc.compiler.importer import import_model
    from farc.models.from_torch import load_pt2

    counts = []
    for size in (10, 20):
        torch.manual_seed(3)
        path = _export(SmallCNN(size).eval(), (1, size, size), tmp_path / f"cnn{size}.pt2")
        mod = import_model(load_pt2(path)).mod
        bindings = sum(len(b.bindings) for b in mod["main"].body.blocks)
        program = _compile(path, RNG.normal(size=(4, 1, size, size)).astype(np.float32))
        counts.append((bindings, [i["op"] for i in program.instructions]))
    assert counts[0] == counts[1]


def test_inspect_shows_how_each_conv_unrolls(tmp_path: Path) -> None:
    """`farc inspect`'s rows: K as C_in x kernel and the MVMs per image (output positions),
    computed here from the convolution arithmetic."""
    from farc.report.tiling import tiling_rows

    torch.manual_seed(3)
    program = _compile(_export(SmallCNN().eval(), (1, 10, 10), tmp_path / "cnn.pt2"),
                       RNG.normal(size=(4, 1, 10, 10)).astype(np.float32))
    rows = {r["layer"]: r for r in tiling_rows(program)}
    assert rows["c1"]["unrolled"] == [1, 3, 3] and rows["c1"]["K"] == 9
    assert rows["c1"]["vectors"] == 10 * 10  # padded 3x3: one position per pixel
    c2 = (10 + 2 * 2 - 2 * (3 - 1) - 1) // 2 + 1
    assert rows["c2"]["unrolled"] == [6, 3, 3] and rows["c2"]["vectors"] == c2 * c2
    assert rows["c3"]["K"] == 8 and rows["c3"]["vectors"] == c2 * c2
    assert rows["fc"]["unrolled"] is None and rows["fc"]["vectors"] == 1
