"""Bring your own model (issue 14, items 2-5): plain torch modules saved with torch.export
(.pt2) and ONNX files -> farc's GraphModel -> compile -> verify; one-node ONNX variants
against onnxruntime; the one-line refusals; the .pt2 trust model.

Expected values never come from farc: the rebuilt model is compared with the user's own
torch module or with onnxruntime running the user's file."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from farc_cli import farc_cli as _cli
from torch import nn

from farc.errors import CheckpointError
from farc.models.from_onnx import load_onnx
from farc.models.from_torch import load_pt2
from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


class SeqClassifier(nn.Module):
    """A bidirectional-LSTM classifier of the 8 rows of a digit (8 steps of 8 pixels); reads
    the last step's output and the final hidden states h_n of both directions."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(12)
        self.cls = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, (h, _) = self.rnn(x.reshape(x.shape[0], 8, 8))
        return self.cls(self.norm(torch.tanh(y[:, -1]) + torch.cat([h[-2], h[-1]], dim=1)))


def mlp() -> nn.Module:
    """A 3-layer MLP on the flattened 8x8 digit."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32),
                         nn.GELU(), nn.Linear(32, 10))


class PatchAttention(nn.Module):
    """A patch embedding (conv, kernel = stride), one softmax self-attention head (a split
    of qkv, activation x activation matmuls) and a classifier not called `head`."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 2, stride=2)
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).split(16, dim=-1)
        t = t + self.proj(torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v)
        return self.out(torch.sigmoid(t).reshape(t.shape[0], -1))


class TimeMajor(nn.Module):
    """Time-major LSTMs (batch_first=False): two bidirectional layers, then a
    unidirectional one whose first output step and h_n feed two classifiers."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 5, num_layers=2, bidirectional=True)
        self.uni = nn.LSTM(10, 4)
        self.fc = nn.Linear(4, 10)
        self.fc2 = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x.transpose(0, 1))
        z, (h, _) = self.uni(torch.relu(y))
        return self.fc(z[0]) + self.fc2(h[0])


MODELS = {"mlp": (mlp, (1, 8, 8)), "bilstm": (SeqClassifier, (8, 8)),
          "patch": (PatchAttention, (1, 8, 8)), "timemajor": (TimeMajor, (8, 8))}


def _export(module: nn.Module, shape: tuple[int, ...], path: Path, fmt: str) -> Path:
    example = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.LSTM's flat-weights note; the exporter's notice
        if fmt == "pt2":
            torch.export.save(torch.export.export(module, (example,)), str(path))
            return path
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def user_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("byom")
    out = {}
    for name, (make, shape) in MODELS.items():
        torch.manual_seed(len(name))
        module = make().eval()
        for fmt in ("pt2", "onnx"):
            out[name, fmt] = (module, shape, _export(module, shape, root / f"{name}.{fmt}", fmt))
    return out


def _ort(path: Path | bytes, x: np.ndarray) -> list[np.ndarray]:
    src = path if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_compile_verify(user_models, name: str, fmt: str) -> None:
    """Module -> .pt2 / .onnx -> GraphModel (same outputs as the module / onnxruntime) ->
    compile -> verify passes, exact against the reference on a lossless target."""
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.data import load_split

    module, shape, path = user_models[name, fmt]
    x = load_split("digits", "test")[0][:24].reshape(24, *shape)
    graph = load_pt2(path) if fmt == "pt2" else load_onnx(path)
    with torch.no_grad():
        if fmt == "pt2":
            assert torch.equal(graph(x), module(x))
        else:
            np.testing.assert_allclose(graph(x).numpy(), _ort(path, x.numpy())[0], atol=1e-5)
    program = compile_checkpoint(path, load_target("isaac"), CompileOptions(calib_samples=32))
    assert program_is_lossless(program)
    assert program.manifest["model"]["provenance"]["model_sha256"] == graph.source["sha256"]
    if fmt == "onnx":  # named from the model
        assert [s["name"] for s in program.inputs] == ["x"]
        assert [s["name"] for s in program.manifest["outputs"]] == ["logits"]
    layers = {L["name"]: L["kind"] for L in program.layers}
    if name == "bilstm":
        lstm = "rnn.l0" if fmt == "pt2" else "rnn_LSTM.fwd"
        assert layers[lstm] == "lstm_cell" and len(layers) == 3
        loops = [i for i in program.instructions if i["op"] == "loop"]
        assert len(loops) == 1 and len(loops[0]["gather"]) == 2  # both directions, one loop
    if name == "patch":
        assert layers["patch"] == "patch_embed"
        assert sum(i["op"] == "matmul" for i in program.instructions) == 2
    if name == "timemajor":
        assert list(layers.values()).count("lstm_cell") == 5
        assert list(layers.values()).count("classifier") == 0  # two linears, then an add
        return _verify_passes(program, x, path)
    assert list(layers.values()).count("classifier") == 1
    _verify_passes(program, x, path)


def _verify_passes(program, x: torch.Tensor, path: Path) -> None:
    from farc.check.verify import resolve_references, verify

    refs = resolve_references(program, None)  # the model file from the provenance
    assert refs.notes["reference"] == f"built from {path.resolve()}"
    report = verify(program, x.numpy(), None, refs, bitlevel_samples=2)
    assert report.ok, report.failure_line()
    (calib,) = [c for c in report.checks if c.name == "calibration"]
    # recomputed from the model file too, unless compiled from images given in memory
    assert calib.passed is True or (calib.passed is None and "in memory" in calib.detail), calib
    pair = report.pairs["emulator", "reference"]
    assert pair.rel <= 1e-3 and pair.agreement in (None, 1.0)  # None: not a classifier output


def test_verify_refuses_a_changed_model_file(user_models, tmp_path) -> None:
    from farc.targets import load_target

    from farc.check.verify import resolve_references
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.errors import ConfigError

    module, shape, _ = user_models["mlp", "onnx"]
    path = _export(module, shape, tmp_path / "m.onnx", "onnx")
    program = compile_checkpoint(path, load_target("isaac"),
                                 CompileOptions(calib_samples=8, data=None))
    with torch.no_grad():
        module[1].weight.mul_(2)
    _export(module, shape, path, "onnx")
    with torch.no_grad():
        module[1].weight.div_(2)
    with pytest.raises(ConfigError, match="is not the file the program was compiled from"):
        resolve_references(program, None)


# ---------------------------------------------------------------- one-node ONNX models
def _model(nodes, inputs, outputs, inits, opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto.SerializeToString()


def _vi(name: str, shape: list) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _t(name: str, a: np.ndarray) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def lstm_model(direction: str, layout: int, bias: bool, init: str, rng) -> bytes:
    """One ONNX LSTM node (x [B, T, I] in; layout 0 needs the two transposes an exporter
    writes around it, since farc's inputs and outputs are batch-first)."""
    d = 2 if direction == "bidirectional" else 1
    t, i, h, b = 5, 4, 3, 3  # b: the batch of a constant initial state
    inits = [_t("W", rng.normal(0, 0.5, (d, 4 * h, i))),
             _t("R", rng.normal(0, 0.5, (d, 4 * h, h)))]
    ins = ["X", "W", "R"]
    if bias:
        inits.append(_t("B", rng.normal(0, 0.5, (d, 8 * h))))
    ins.append("B" if bias else "")
    if init != "absent":
        ins += ["", "h0", "c0"]
        state = (d, b, h) if layout == 0 else (b, d, h)
        inits += [_t("h0", np.zeros(state)), _t("c0", np.zeros(state))]
    nodes = []
    ins[0] = "x"
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]))
        ins[0] = "X"
    nodes.append(helper.make_node("LSTM", ins, ["Y", "Y_h"], name="/rnn/LSTM", hidden_size=h,
                                  direction=direction, layout=layout))
    if layout == 0:  # [T, D, B, H] -> [B, T, D, H]
        nodes.append(helper.make_node("Transpose", ["Y"], ["y"], perm=[2, 0, 1, 3]))
    else:
        nodes.append(helper.make_node("Identity", ["Y"], ["y"]))
    return _model(nodes, [_vi("x", ["batch", t, i])], [_vi("y", ["batch", t, d, h])], inits)


def gemm_model(trans_b: int, alpha: float, beta: float, with_c: bool, rng) -> bytes:
    w = rng.normal(0, 0.3, (6, 10) if trans_b else (10, 6))
    inits = [_t("W", w)] + ([_t("C", rng.normal(0, 0.3, (6,)))] if with_c else [])
    node = helper.make_node("Gemm", ["x", "W"] + (["C"] if with_c else []), ["y"],
                            name="/fc/Gemm", transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], [_vi("x", ["batch", 10])], [_vi("y", ["batch", 6])], inits)


def matmul_model(rng) -> bytes:
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="/proj/MatMul")
    return _model([node], [_vi("x", ["batch", 7, 10])], [_vi("y", ["batch", 7, 6])],
                  [_t("W", rng.normal(0, 0.3, (10, 6)))])


LSTM_VARIANTS = [(d, lay, b, init) for d in ("forward", "reverse", "bidirectional")
                 for lay in (0, 1) for b in (True, False) for init in ("absent", "zero")]
LINEAR_VARIANTS = [("gemm", tb, al, be, c) for tb in (0, 1) for (al, be) in ((1.0, 1.0),
                   (0.5, 2.0)) for c in (True, False)] + [("matmul",)]


def _compile_and_check(tmp_path: Path, proto: bytes, x: np.ndarray,
                       ort_proto: bytes | None = None) -> None:
    """The rebuilt model equals onnxruntime on the file (float), and the compiled program
    on the emulator stays within 8-bit quantization error of it."""
    from farc.runtime.emulator import Emulator
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    path = tmp_path / "one.onnx"
    path.write_bytes(proto)
    want = _ort(ort_proto or proto, x)[0]
    graph = load_onnx(path)
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), want, atol=1e-5)
    calib = torch.from_numpy(np.random.default_rng(1).normal(size=(32, *x.shape[1:])))
    program = compile_checkpoint(path, load_target("isaac"),
                                 CompileOptions(calib_images=calib.float(), calib_samples=32))
    got = Emulator(program).run({program.inputs[0]["name"]: x})[program.manifest["outputs"][0]
                                                               ["name"]]
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 0.05, err


@pytest.mark.parametrize("variant", LSTM_VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_onnx_lstm_variant(variant, tmp_path) -> None:
    """Each variant against onnxruntime. onnxruntime has no layout-1 LSTM kernel, so a
    layout-1 model is checked against the same weights in the layout-0 form the ONNX spec
    defines it by (the batch-major tensors transposed)."""
    seed = LSTM_VARIANTS.index(variant)
    proto = lstm_model(*variant, rng=np.random.default_rng(seed))
    direction, layout, bias, init = variant
    ort_proto = proto if layout == 0 else lstm_model(direction, 0, bias, init,
                                                     rng=np.random.default_rng(seed))
    x = np.random.default_rng(99).normal(size=(3, 5, 4)).astype(np.float32)
    graph = load_onnx(_write(tmp_path, proto))
    assert sum(n.op == "lstm" for n in graph.nodes) == (2 if direction == "bidirectional"
                                                        else 1)
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), _ort(ort_proto, x)[0],
                                   atol=1e-5)
    if (bias, init) == (True, "zero"):  # compiled too: every direction and layout once
        _compile_and_check(tmp_path, proto, x, ort_proto)


def test_onnx_lstm_batch_dependent_initial_state_refused(tmp_path) -> None:
    """An initial state whose batch rows differ cannot be one constant broadcast over the
    batch; refused with the node named (constant states: tests/test_byom_init_state.py)."""
    rng = np.random.default_rng(0)
    proto = onnx.load_from_string(lstm_model("forward", 1, True, "zero", rng))
    for init in proto.graph.initializer:
        if init.name == "h0":  # layout 1: [B, D, H]
            init.CopyFrom(_t("h0", np.arange(9).reshape(3, 1, 3) * 0.1))
    path = tmp_path / "h0.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="node /rnn/LSTM: LSTM with a batch-"
                                                    "dependent initial_h"):
        load_onnx(path)


@pytest.mark.parametrize("variant", LINEAR_VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_onnx_gemm_matmul_variant(variant, tmp_path) -> None:
    rng = np.random.default_rng(7)
    if variant[0] == "gemm":
        proto, x = gemm_model(*variant[1:], rng=rng), rng.normal(size=(4, 10))
    else:
        proto, x = matmul_model(rng), rng.normal(size=(4, 7, 10))
    _compile_and_check(tmp_path, proto, x.astype(np.float32))


def _write(tmp_path: Path, proto: bytes, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(proto)
    return path


def test_onnx_erf_gelu_pattern_and_lone_erf(tmp_path) -> None:
    """0.5 * x * (1 + erf(x / sqrt 2)), as exporters write GELU, becomes one gelu; an Erf
    used any other way is refused."""
    def graph(tail: list) -> bytes:
        nodes = [helper.make_node("Div", ["x", "s2"], ["d"]),
                 helper.make_node("Erf", ["d"], ["e"], name="/act/Erf"), *tail]
        inits = [_t("s2", np.array(np.sqrt(2.0))), _t("one", np.array(1.0)),
                 _t("half", np.array(0.5))]
        return _model(nodes, [_vi("x", ["batch", 6])], [_vi("y", ["batch", 6])], inits)

    gelu = graph([helper.make_node("Add", ["e", "one"], ["a"]),
                  helper.make_node("Mul", ["x", "a"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["y"])])
    g = load_onnx(_write(tmp_path, gelu))
    assert [n.op for n in g.nodes if n.op in ("gelu", "mul", "add")] == ["gelu"]
    x = np.linspace(-4, 4, 12, dtype=np.float32).reshape(2, 6)
    with torch.no_grad():
        np.testing.assert_allclose(g(torch.from_numpy(x)).numpy(), _ort(gelu, x)[0], atol=1e-6)
    lone = graph([helper.make_node("Mul", ["e", "half"], ["y"])])
    with pytest.raises(UnsupportedModelError, match="node /act/Erf: Erf is supported only as "
                                                    "part of GELU"):
        load_onnx(_write(tmp_path, lone, "lone.onnx"))


# ---------------------------------------------------------------- refusals
def test_unsupported_onnx_op_one_line_and_no_output(tmp_path, capsys) -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="/up/Resize")
    proto = _model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 1, 8, 8])],
                   [_t("scales", np.array([1, 1, 2, 2]))])
    path = _write(tmp_path, proto)
    with pytest.raises(UnsupportedModelError) as exc:
        load_onnx(path)
    assert str(exc.value).startswith("unsupported ONNX op Resize at node /up/Resize (no "
                                     "supported alternative): supported ops are Add, ")
    out = tmp_path / "m.farc"
    assert _cli("compile", path, "-o", out) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farc: error: unsupported ONNX op Resize "
                                                   "at node /up/Resize (no supported "
                                                   "alternative): supported ops are")
    assert not out.exists()


class WithSelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.SELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def test_unsupported_torch_op_names_the_module(tmp_path) -> None:
    path = _export(WithSelu().eval(), (8,), tmp_path / "selu.pt2", "pt2")
    with pytest.raises(UnsupportedModelError, match=r"^unsupported torch op selu at "
                                                    r"module act \(node selu\) "
                                                    r"\(nearest supported: relu\): "
                                                    "supported ops are "):
        load_pt2(path)


def test_plain_module_without_cfg_is_a_one_line_error() -> None:
    from farc.targets import load_target

    from farc.compiler.driver import compile_checkpoint
    from farc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"save it with torch\.export\.save"):
        compile_checkpoint(mlp(), load_target("isaac"))


def test_pt2_with_pickled_objects_is_refused_without_running_them(tmp_path) -> None:
    """torch.export.load would unpickle a weight stored in pickle form with
    weights_only=False; farc forces weights_only, so the payload never runs."""
    path = _export(nn.Sequential(nn.Linear(4, 2)).eval(), (4,), tmp_path / "ok.pt2", "pt2")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import io
    import pickle

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        cfg_name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
        cfg = json.loads(src.read(cfg_name))
        first = next(iter(cfg["config"].values()))
        first["use_pickle"] = True
        buf = io.BytesIO()
        torch.save({"x": Payload()}, buf, pickle_module=pickle)
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == cfg_name:
                data = json.dumps(cfg).encode()
            elif info.filename.endswith("/" + first["path_name"]):
                data = buf.getvalue()
            dst.writestr(info, data)
    with pytest.raises(CheckpointError, match=r"not a loadable torch\.export program"):
        load_pt2(evil)
    assert not marker.exists()
    assert load_pt2(path).source["format"] == "pt2"  # the genuine file still loads




def test_cli_compile_verify_run_onnx(user_models, tmp_path, capsys) -> None:
    """The commands a user types: compile the ONNX file (calibrated on digits reshaped to
    the model's input), verify it (the reference rebuilt from the recorded file), run it."""
    _, _, path = user_models["bilstm", "onnx"]
    prog = tmp_path / "seq.farc"
    assert _cli("compile", path, "-o", prog, "--calib-samples", "16") == 0
    assert _cli("verify", prog, "--samples", "16", "--bitlevel-samples", "1") == 0
    assert f"reference: built from {path}" in " ".join(capsys.readouterr().out.split())
    x = np.random.default_rng(0).normal(size=(12, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    prog2 = tmp_path / "seq2.farc"
    assert _cli("compile", path, "-o", prog2, "--calib-npy", tmp_path / "x.npy") == 0
    assert _cli("verify", prog2, "--inputs-npy", tmp_path / "x.npy", "--bitlevel-samples",
                "1") == 0
    assert "12 inputs from" in capsys.readouterr().out  # not "images of digits"
    out = tmp_path / "y.npy"
    assert _cli("run", prog, "--data", "digits", "-o", out) == 0
    assert np.load(out).shape == (360, 10)
    capsys.readouterr()
    assert _cli("inspect", prog) == 0
    assert "onnx-bilstm on isaac" in capsys.readouterr().out  # named from the model
    html = tmp_path / "r.html"
    assert _cli("report", prog, "--html", html) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "energy per inference" in text and "throughput" in text
    assert html.stat().st_size > 0


def test_calibration_data_of_another_shape_is_a_one_line_error(tmp_path) -> None:
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.errors import DataError

    path = _write(tmp_path, gemm_model(1, 1.0, 1.0, True, np.random.default_rng(0)))
    with pytest.raises(DataError, match=r"the model takes inputs \[10\] and digits holds "
                                        r"\[1, 8, 8\] images; .*--calib-npy"):
        compile_checkpoint(path, load_target("isaac"), CompileOptions(calib_samples=4))


def test_onnx_constant_of_shape_within_the_memory_budget(tmp_path) -> None:
    """Shape arithmetic is folded here, so a hostile ConstantOfShape must not allocate."""
    from farc.errors import ConfigError

    nodes = [helper.make_node("ConstantOfShape", ["s"], ["z"], name="/big"),
             helper.make_node("Add", ["x", "z"], ["y"])]
    shape = np.array([2**20, 2**20, 4], np.int64)
    from onnx import numpy_helper

    proto = _model(nodes, [_vi("x", ["batch", 4])], [_vi("y", ["batch", 4])],
                   [numpy_helper.from_array(shape, "s")])
    with pytest.raises(ConfigError, match=r"node /big needs 16\.0 TiB, over the memory"):
        load_onnx(_write(tmp_path, proto))
