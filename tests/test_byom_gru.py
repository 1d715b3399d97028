"""GRUs users bring (issue 24, item 4): ONNX GRU nodes (forward, reverse, bidirectional;
linear_before_reset 0 and 1) against onnxruntime, torch nn.GRU through .pt2 and the dynamo
ONNX exporter against torch, a GRU classifier compiled for every target and verified, one
loop for all directions whose size does not grow with the sequence."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from farc.models.from_onnx import load_onnx
from farc.models.from_torch import load_pt2
from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from test_byom import _cli, _model, _ort, _t, _verify_passes, _vi, _write  # noqa: E402

INPUTS, HIDDEN = 4, 3


def gru_model(direction: str, lbr: int, rng, steps: int = 5, bias: bool = True,
              h0: np.ndarray | None = None, layout: int = 0, **attrs) -> bytes:
    """One ONNX GRU node (x [B, T, I] in, y [B, T, D, H] out; layout 0 between the two
    transposes an exporter writes)."""
    d = 2 if direction == "bidirectional" else 1
    inits = [_t("W", rng.normal(0, 0.5, (d, 3 * HIDDEN, INPUTS))),
             _t("R", rng.normal(0, 0.5, (d, 3 * HIDDEN, HIDDEN)))]
    ins = ["X", "W", "R", "B" if bias else ""]
    if bias:
        inits.append(_t("B", rng.normal(0, 0.5, (d, 6 * HIDDEN))))
    if h0 is not None:
        ins += ["", "h0"]
        inits.append(_t("h0", h0))
    gru = helper.make_node("GRU", ins, ["Y", "Y_h"], name="/rnn/GRU", hidden_size=HIDDEN,
                           direction=direction, linear_before_reset=lbr, **attrs)
    nodes = [helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]), gru,
             helper.make_node("Transpose", ["Y"], ["y"], perm=[2, 0, 1, 3])]
    if layout:
        gru.attribute.append(helper.make_attribute("layout", 1))
        nodes = [helper.make_node("Identity", ["x"], ["X"]), gru,
                 helper.make_node("Identity", ["Y"], ["y"])]
    return _model(nodes, [_vi("x", ["batch", steps, INPUTS])],
                  [_vi("y", ["batch", steps, d, HIDDEN])], inits)


def _compile(path: Path, calib: np.ndarray, target: str = "isaac"):
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    return compile_checkpoint(path, load_target(target), CompileOptions(
        calib_images=torch.from_numpy(calib).float(), calib_samples=len(calib)))


def _emulate(program, x: np.ndarray) -> np.ndarray:
    from farc.runtime.emulator import Emulator

    out = Emulator(program).run({program.inputs[0]["name"]: x})
    return out[program.manifest["outputs"][0]["name"]]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).sum() / np.abs(want).sum())


def _count(block: list) -> int:
    """Instructions of a program, loop bodies included."""
    return sum(1 + (_count(i["body"]) if i["op"] == "loop" else 0) for i in block)


VARIANTS = [(d, lbr) for d in ("forward", "reverse", "bidirectional") for lbr in (0, 1)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-lbr{v[1]}")
def test_onnx_gru_variant(variant, tmp_path) -> None:
    """The rebuilt model equals onnxruntime; compiled on isaac, one loop holds every
    direction (two crossbar layers each), the emulator stays within 8-bit quantization of
    onnxruntime and verify passes: layer integers bit-identical to the reference."""
    direction, lbr = variant
    d = 2 if direction == "bidirectional" else 1
    proto = gru_model(direction, lbr, np.random.default_rng(VARIANTS.index(variant)))
    x = np.random.default_rng(99).normal(size=(3, 5, INPUTS)).astype(np.float32)
    want = _ort(proto, x)[0]
    path = _write(tmp_path, proto)
    graph = load_onnx(path)
    assert sum(n.op == "gru" for n in graph.nodes) == d
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), want, atol=1e-5)
    program = _compile(path, np.random.default_rng(1).normal(size=(16, 5, INPUTS)))
    kinds = sorted(L["kind"] for L in program.layers)
    assert kinds == ["gru_cell"] * d + ["gru_hidden"] * d
    (loop,) = [i for i in program.instructions if i["op"] == "loop"]
    assert len(loop["gather"]) == d and len(loop["carry"]) == d
    assert [g["reverse"] for g in loop["gather"]] == [direction == "reverse", True][:d]
    assert _rel(_emulate(program, x), want) < 5e-3
    _verify_passes(program, torch.from_numpy(x), path)


@pytest.mark.parametrize("lbr", [0, 1])
def test_onnx_gru_layout_1(lbr, tmp_path) -> None:
    """onnxruntime has no layout-1 GRU kernel: a layout-1 model (batch-major X, Y and
    initial_h) is checked against the same weights in the layout-0 form."""
    h0 = np.repeat(np.random.default_rng(4).normal(0, 0.5, (2, 1, HIDDEN)), 3, axis=1)
    x = np.random.default_rng(99).normal(size=(3, 5, INPUTS)).astype(np.float32)
    want = _ort(gru_model("bidirectional", lbr, np.random.default_rng(8), h0=h0), x)[0]
    proto = gru_model("bidirectional", lbr, np.random.default_rng(8),
                      h0=h0.transpose(1, 0, 2), layout=1)
    graph = load_onnx(_write(tmp_path, proto))
    with torch.no_grad():
        np.testing.assert_allclose(graph(torch.from_numpy(x)).numpy(), want, atol=1e-5)


def test_onnx_gru_without_bias(tmp_path) -> None:
    """B absent: zero biases (ONNX default)."""
    proto = gru_model("reverse", 0, np.random.default_rng(6), bias=False)
    x = np.random.default_rng(99).normal(size=(3, 5, INPUTS)).astype(np.float32)
    with torch.no_grad():
        got = load_onnx(_write(tmp_path, proto))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(proto, x)[0], atol=1e-5)


def test_onnx_gru_constant_initial_state(tmp_path) -> None:
    """A constant initial_h (the same for every batch row) starts each direction's loop."""
    h0 = np.repeat(np.random.default_rng(4).normal(0, 0.5, (2, 1, HIDDEN)), 3, axis=1)
    proto = gru_model("bidirectional", 0, np.random.default_rng(2), h0=h0)
    x = np.random.default_rng(99).normal(size=(3, 5, INPUTS)).astype(np.float32)
    want = _ort(proto, x)[0]
    zero = _ort(gru_model("bidirectional", 0, np.random.default_rng(2)), x)[0]
    assert np.abs(want - zero).max() > 1e-2  # the state matters
    path = _write(tmp_path, proto)
    with torch.no_grad():
        np.testing.assert_allclose(load_onnx(path)(torch.from_numpy(x)).numpy(), want,
                                   atol=1e-5)
    program = _compile(path, np.random.default_rng(1).normal(size=(16, 5, INPUTS)))
    assert _rel(_emulate(program, x), want) < 5e-3
    _verify_passes(program, torch.from_numpy(x), path)


@pytest.mark.parametrize(("change", "message"), [
    ({"clip": 1.0}, "GRU with clip or non-default activations"),
    ({"activations": ["Relu", "Tanh"]}, "GRU with clip or non-default activations"),
    ({"h0": np.arange(2 * 3 * HIDDEN).reshape(2, 3, HIDDEN) * 0.1},
     "GRU with a batch-dependent initial_h"),
], ids=["clip", "activations", "batch-dependent-h0"])
def test_onnx_gru_refusals(change, message, tmp_path) -> None:
    h0 = change.pop("h0", None)
    proto = gru_model("bidirectional", 0, np.random.default_rng(0), h0=h0, **change)
    with pytest.raises(UnsupportedModelError, match=f"node /rnn/GRU: {message}"):
        load_onnx(_write(tmp_path, proto))


def test_onnx_gru_computed_weights_refused(tmp_path) -> None:
    m = onnx.load_from_string(gru_model("forward", 0, np.random.default_rng(0)))
    gru = next(n for n in m.graph.node if n.op_type == "GRU")
    m.graph.node.insert(0, helper.make_node("Add", ["x", "x"], ["x2"]))
    gru.input[2] = "x2"  # a recurrence weight computed from the input
    path = tmp_path / "w.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="node /rnn/GRU: GRU with computed weights"):
        load_onnx(path)


def test_reference_needs_both_gru_layers(tmp_path) -> None:
    """verify's reference refuses a program whose GRU lacks its `.hidden` layer."""
    from farc.check.reference import ReferenceError, build_reference

    path = _write(tmp_path, gru_model("forward", 1, np.random.default_rng(0)))
    program = _compile(path, np.random.default_rng(1).normal(size=(8, 5, INPUTS)))
    program.manifest["layers"] = [L for L in program.manifest["layers"]
                                  if not L["name"].endswith(".hidden")]
    with pytest.raises(ReferenceError, match=r"rnn_GRU\.fwd: the program has no "
                                             r"rnn_GRU\.fwd\.hidden layer"):
        build_reference(load_onnx(path), program)


def test_onnx_gru_sequence_lens_refused(tmp_path) -> None:
    m = onnx.load_from_string(gru_model("forward", 1, np.random.default_rng(0)))
    gru = next(n for n in m.graph.node if n.op_type == "GRU")
    gru.input.append("lens")
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.full(3, 5, np.int32), "lens"))
    path = tmp_path / "lens.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="node /rnn/GRU: GRU with sequence_lens"):
        load_onnx(path)


def test_instructions_do_not_grow_with_the_sequence(tmp_path) -> None:
    """T and 2T steps: the same instructions (one loop; never unrolled)."""
    counts = []
    for steps in (4, 8):
        proto = gru_model("bidirectional", 0, np.random.default_rng(0), steps=steps)
        path = _write(tmp_path, proto, f"t{steps}.onnx")
        program = _compile(path, np.random.default_rng(1).normal(size=(8, steps, INPUTS)))
        assert sum(i["op"] == "loop" for i in program.instructions) == 1
        counts.append(_count(program.instructions))
    assert counts[0] == counts[1]


# ---------------------------------------------------------------- torch nn.GRU
class GRUClassifier(nn.Module):
    """A bidirectional-GRU classifier of the 8 rows of a digit (8 steps of 8 pixels); reads
    the last step's output and the final hidden states h_n of both directions."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 8, batch_first=True, bidirectional=True)
        self.cls = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, h = self.rnn(x.reshape(x.shape[0], 8, 8))
        return self.cls(torch.tanh(y[:, -1]) + torch.cat([h[-2], h[-1]], dim=1))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[nn.Module, dict[str, Path]]:
    """The classifier, trained a little on digits (so top-1 means something), saved as
    .pt2 (the dynamo ONNX export, about 9 s, is made only where a test asks for it)."""
    from farc.data import load_split

    root = tmp_path_factory.mktemp("gru")
    torch.manual_seed(0)
    model = GRUClassifier()
    x, y = load_split("digits", "train")
    x = x[:128].reshape(128, 64).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y[:128]).backward()
        opt.step()
    model.eval()
    path = root / "gru.pt2"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (torch.zeros(2, 64),)), str(path))
    return model, {"pt2": path}


def _onnx_of(model: nn.Module, path: Path) -> Path:
    """The model as ONNX by torch's default (dynamo) exporter, dynamic batch."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 64),), str(path), input_names=["x"],
                          output_names=["logits"], verbose=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return path


def _digits(n: int) -> torch.Tensor:
    from farc.data import load_split

    return load_split("digits", "test")[0][:n].reshape(n, 64).float()


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_torch_gru_classifier_compiles_and_verifies(classifier, fmt, tmp_path) -> None:
    """nn.GRU (batch_first, bidirectional) -> .pt2 / dynamo ONNX -> GraphModel equal to
    torch -> compiled on isaac: top-1 agrees with onnxruntime on every sample, relative
    error < 1e-3, verify passes."""
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    model, paths = classifier
    paths = {**paths, "onnx": _onnx_of(model, tmp_path / "gru.onnx")} if fmt == "onnx" \
        else paths
    x = _digits(24)
    graph = load_pt2(paths[fmt]) if fmt == "pt2" else load_onnx(paths[fmt])
    assert [n.op for n in graph.nodes].count("gru") == 2
    with torch.no_grad():
        want = model(x).numpy()
        np.testing.assert_allclose(graph(x).numpy(), want, atol=1e-5)
    if fmt == "onnx":
        want = _ort(paths[fmt], x.numpy())[0]
    program = compile_checkpoint(paths[fmt], load_target("isaac"),
                                 CompileOptions(calib_samples=32))
    kinds = [L["kind"] for L in program.layers]
    assert sorted(kinds) == ["classifier", "gru_cell", "gru_cell", "gru_hidden", "gru_hidden"]
    (loop,) = [i for i in program.instructions if i["op"] == "loop"]
    assert len(loop["gather"]) == 2  # both directions, one loop
    got = _emulate(program, x.numpy())
    assert (got.argmax(1) == want.argmax(1)).all()
    assert _rel(got, want) < 1e-3
    _verify_passes(program, x, paths[fmt])


@pytest.mark.parametrize("target", ["puma", "neurosim_rram"])
def test_torch_gru_classifier_on_other_targets(classifier, target) -> None:
    """The classifier compiles and runs on the other targets (lossy ADCs: close, not
    exact)."""
    from farc.targets import load_target

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    model, paths = classifier
    x = _digits(16)
    program = compile_checkpoint(paths["pt2"], load_target(target),
                                 CompileOptions(calib_samples=32))
    got = _emulate(program, x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape and np.isfinite(got).all()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_cli_verify_report_inspect_gru(classifier, tmp_path, capsys) -> None:
    """The commands a user types on a GRU program: compile (with the float and QDQ ONNX
    references, the QDQ one's Loop running the GRU cell in onnxruntime), verify, inspect,
    report."""
    from farc.runtime.program import Program

    _, paths = classifier
    prog = tmp_path / "gru.farc"
    assert _cli("compile", paths["pt2"], "-o", prog, "--calib-samples", "16",
                "--emit-onnx") == 0
    x = _digits(8).numpy()
    got = _emulate(Program.load(prog), x)
    assert _rel(_ort(tmp_path / "gru.qdq.onnx", x)[0], got) < 1e-4
    assert _cli("verify", prog, "--samples", "8", "--bitlevel-samples", "1") == 0
    capsys.readouterr()
    assert _cli("inspect", prog) == 0
    assert "gru_cell" in capsys.readouterr().out
    html = tmp_path / "r.html"
    assert _cli("report", prog, "--html", html) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "energy per inference" in text and "throughput" in text


class _TwoLayerTimeMajor(nn.Module):
    def __init__(self, h0: bool = False) -> None:
        super().__init__()
        self.rnn = nn.GRU(INPUTS, HIDDEN, num_layers=2)
        self.h0 = nn.Parameter(torch.full((2, 3, HIDDEN), 0.5)) if h0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.transpose(0, 1)
        y, h = self.rnn(t) if self.h0 is None else self.rnn(t, self.h0)
        return y.transpose(0, 1) + h[-1][:, None]


def test_torch_two_layer_time_major_gru(tmp_path) -> None:
    """Two layers of a time-major nn.GRU: one GRU module per layer, equal to torch."""
    torch.manual_seed(3)
    model = _TwoLayerTimeMajor().eval()
    x = torch.randn(3, 5, INPUTS)
    path = tmp_path / "two.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    graph = load_pt2(path)
    assert [n.attrs["module"] for n in graph.nodes if n.op == "gru"] == ["rnn.l0", "rnn.l1"]
    with torch.no_grad():
        np.testing.assert_allclose(graph(x).numpy(), model(x).numpy(), atol=1e-6)


def test_torch_gru_initial_state_refused(tmp_path) -> None:
    model = _TwoLayerTimeMajor(h0=True).eval()
    path = tmp_path / "h0.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(3, 5, INPUTS),)), str(path))
    with pytest.raises(UnsupportedModelError, match="GRU with a non-zero initial state"):
        load_pt2(path)
