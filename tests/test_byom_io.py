"""Issue 24 items 3 and 5: models users bring with a time-major input or several outputs,
and hostile model files, each refused in one line (exit 1), never an internal error or a
traceback."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from farc_cli import farc_cli as _cli

from farc.errors import CheckpointError, ConfigError, FarcError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _vi(name: str, shape: list) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _declared(name: str, dims: list[int]) -> object:
    """A float initializer that declares `dims` and holds no data."""
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.FLOAT
    t.dims.extend(dims)
    return t


def _matmul_model(path: Path, weight: object, k: int, n: int) -> Path:
    node = helper.make_node("MatMul", ["x", weight.name], ["y"], name="mm")
    return _save(path, [node], [_vi("x", ["b", k])], [_vi("y", ["b", n])], [weight])


# ---------------------------------------------------------------- hostile ONNX files
def test_initializer_declaring_data_it_does_not_hold(tmp_path, capsys) -> None:
    """Was "internal error: cannot reshape array of size 0 into shape (4,3)", exit 2."""
    from farc.models.from_onnx import load_onnx

    path = _matmul_model(tmp_path / "empty.onnx", _declared("W", [4, 3]), 4, 3)
    with pytest.raises(CheckpointError, match=r"^initializer W: declares shape \[4, 3\] "
                       r"\(12 float32 values\) and holds 0; the file is truncated"):
        load_onnx(path)
    assert _cli("compile", path, "-o", tmp_path / "m.farc") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("farc: error: initializer W: declares")
    assert not (tmp_path / "m.farc").exists()


def test_raw_data_shorter_than_the_shape_is_refused(tmp_path) -> None:
    from farc.models.from_onnx import load_onnx

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    w.raw_data = w.raw_data[:20]  # 5 of 12 values
    path = _matmul_model(tmp_path / "short.onnx", w, 4, 3)
    with pytest.raises(CheckpointError, match=r"declares shape \[4, 3\] .* holds 5"):
        load_onnx(path)


def test_initializer_size_checked_against_max_memory_before_allocation(tmp_path) -> None:
    """A [100000, 100000] float initializer (37 GiB declared, nothing stored) fails on the
    budget, and one with real data over a lowered --max-memory as well."""
    from farc.models.from_onnx import load_onnx

    path = _matmul_model(tmp_path / "huge.onnx", _declared("W", [100000, 100000]), 100000,
                         100000)
    with pytest.raises(ConfigError, match=r"^initializer W needs 37.3 GiB, over the memory "
                       "budget"):
        load_onnx(path)
    real = _matmul_model(tmp_path / "real.onnx", numpy_helper.from_array(
        np.ones((512, 512), np.float32), "W"), 512, 512)
    assert _cli("--max-memory", "512K", "compile", real, "-o", tmp_path / "m.farc") == 1


def test_string_initializer_is_refused_in_one_line(tmp_path) -> None:
    from farc.models.from_onnx import load_onnx

    t = helper.make_tensor("W", TensorProto.STRING, [1], [b"x"])
    path = _matmul_model(tmp_path / "str.onnx", t, 4, 3)
    with pytest.raises(FarcError, match="initializer W: a tensor of type STRING"):
        load_onnx(path)


# ---------------------------------------------------------------- hostile .pt2 files
def _genuine_pt2(path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 4),)), path)
    return path


def _rewritten(src: Path, dst: Path, change) -> Path:
    """A copy of the archive `src` with each member's bytes passed through change(name,
    data) (None drops the member)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for name in z.namelist():
            data = change(name, z.read(name))
            if data is not None:
                out.writestr(name, data)
    return dst


@pytest.mark.parametrize("case,want", [
    ("not-a-zip", r"not a torch\.export program \(\.pt2 files are zip archives"),
    ("empty-zip", r"not a torch\.export program \(the archive holds no serialized model"),
    ("no-model-json", r"not a torch\.export program \(the archive holds no serialized"),
    ("garbled-model-json", r"not a loadable torch\.export program"),
    ("truncated-weights", r"not a loadable torch\.export program"),
])
def test_pt2_that_is_not_what_it_claims(tmp_path, capsys, case, want) -> None:
    """Was a 19-line warning with torch's traceback before farc's line."""
    path = tmp_path / f"{case}.pt2"
    if case == "not-a-zip":
        path.write_bytes(b"not a zip at all")
    elif case == "empty-zip":
        zipfile.ZipFile(path, "w").close()
    else:
        good = _genuine_pt2(tmp_path / "good.pt2")
        change = {"no-model-json": lambda n, d: None if n.endswith(".json") else d,
                  "garbled-model-json": lambda n, d: b'{"graph_module": 5}'
                  if n.endswith("models/model.json") else d,
                  "truncated-weights": lambda n, d: d[:3] if "/weights/weight_" in n
                  else d}[case]
        _rewritten(good, path, change)
    assert _cli("compile", path, "-o", tmp_path / "m.farc") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"farc: error: {path}: ")
    import re
    assert re.search(want, err[0]), err[0]


# ---------------------------------------------------------------- layouts and outputs
T, B, F, H = 5, 2, 3, 4


def _lstm_layout0(path: Path, batch: object = B, outputs: tuple[str, ...] = ("Y",),
                  seed: int = 0) -> Path:
    """One LSTM node of layout 0 reading the model input [T, B, F], as ONNX's own LSTM node
    tests and speech models are written."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)), ("Bias", (1, 8 * H)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "Bias"], ["Y", "Y_h"], hidden_size=H,
                            name="lstm")
    shapes = {"Y": [T, 1, batch, H], "Y_h": [1, batch, H]}
    return _save(path, [node], [_vi("x", [T, batch, F])],
                 [_vi(o, shapes[o]) for o in outputs], inits)


def _ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def test_time_major_input_is_found_from_the_lstm_layout(tmp_path) -> None:
    """Was "LSTM input must be [batch, time, features] or [time, batch, features]"."""
    from farc.models.from_onnx import load_onnx

    path = _lstm_layout0(tmp_path / "tm.onnx", outputs=("Y", "Y_h"))
    model = load_onnx(path)
    assert model.input_shape == (1, T, F)  # stored batch-first
    assert model.batch_axes == {"x": 1, "Y": 2, "Y_h": 1}
    x = np.random.default_rng(1).normal(size=(T, B, F)).astype(np.float32)
    want = _ort(path, x)
    with torch.no_grad():
        got = model(torch.from_numpy(np.moveaxis(x, 1, 0).copy()))
    np.testing.assert_allclose(np.moveaxis(got[0].numpy(), 0, 2), want[0], atol=1e-6)
    np.testing.assert_allclose(np.moveaxis(got[1].numpy(), 0, 1), want[1], atol=1e-6)


def test_time_major_symbolic_batch_only_on_the_batch_axis(tmp_path) -> None:
    from farc.models.from_onnx import load_onnx

    assert load_onnx(_lstm_layout0(tmp_path / "dyn.onnx", "batch")).batch_axes["x"] == 1
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H, name="lstm")
    path = _save(tmp_path / "t.onnx", [node], [_vi("x", ["T", 2, F])],
                 [_vi("Y", ["T", 1, 2, H])], inits)
    with pytest.raises(FarcError, match=r"dimension 0 \(T\) is symbolic; only the batch "
                       r"axis \(1\) may be"):
        load_onnx(path)


def test_time_major_compile_run_verify(tmp_path, capsys) -> None:
    """`farc run` takes the user's [T, B, F] and writes Y [T, 1, B, H] as onnxruntime does;
    the program records the batch axes; verify feeds the file its own layout."""
    import json

    from farc.runtime.program import Program

    path = _lstm_layout0(tmp_path / "tm.onnx", "batch")
    rng = np.random.default_rng(2)
    np.save(tmp_path / "calib.npy", rng.normal(size=(16, T, F)).astype(np.float32))
    x = rng.normal(size=(T, 3, F)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    prog = tmp_path / "tm.farc"
    assert _cli("compile", path, "-o", prog, "--calib-npy", tmp_path / "calib.npy") == 0
    program = Program.load(prog)
    assert program.inputs[0]["shape"] == [None, T, F] and program.inputs[0]["batch_axis"] == 1
    assert program.outputs[0]["batch_axis"] == 2
    assert _cli("run", prog, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy") == 0
    y, want = np.load(tmp_path / "y.npy"), _ort(path, x)[0]
    assert y.shape == want.shape == (T, 1, 3, H)
    np.testing.assert_allclose(y, want, atol=2e-3)  # isaac's 8-bit path
    np.save(tmp_path / "bad.npy", np.moveaxis(x, 1, 0))  # batch-first: not the model's
    capsys.readouterr()
    assert _cli("run", prog, "--input", tmp_path / "bad.npy", "-o", tmp_path / "z.npy") == 1
    assert "the program expects [5, 'N', 3]" in capsys.readouterr().err
    assert _cli("verify", prog, "--inputs-npy", tmp_path / "x.npy") == 0
    assert "emulator vs reference logits   │ pass" in capsys.readouterr().out
    assert json.loads(json.dumps(program.manifest["inputs"]))[0]["batch_axis"] == 1


def test_programs_without_batch_axis_are_batch_first() -> None:
    from farc.runtime.program import batch_axis, from_batch_first, to_batch_first, user_shape

    old = {"name": "x", "shape": [None, 5, 3]}
    x = np.arange(30, dtype=np.float32).reshape(2, 5, 3)
    assert batch_axis(old) == 0 and user_shape(old) == [None, 5, 3]
    assert to_batch_first(x, old) is x and from_batch_first(x, old) is x
    tm = {**old, "batch_axis": 1}
    assert user_shape(tm) == [5, None, 3]
    np.testing.assert_array_equal(from_batch_first(x, tm), x.transpose(1, 0, 2))
    np.testing.assert_array_equal(to_batch_first(x.transpose(1, 0, 2), tm), x)


@pytest.mark.parametrize("axis", [3, -1, "1"])
def test_bad_batch_axis_in_a_manifest_is_refused(axis) -> None:
    from farc.runtime.validate import _check_specs

    from farc.errors import ProgramError

    with pytest.raises(ProgramError, match=r"inputs\[0\] 'x': batch_axis .* is not an axis"):
        _check_specs([{"name": "x", "shape": [None, 5, 3], "batch_axis": axis}], "inputs")


def test_several_outputs_go_to_an_npz_only_when_named(tmp_path, capsys) -> None:
    """Was: an .npz archive written into the `-o y.npy` the user named."""
    path = _lstm_layout0(tmp_path / "two.onnx", "batch", outputs=("Y", "Y_h"))
    rng = np.random.default_rng(3)
    np.save(tmp_path / "calib.npy", rng.normal(size=(8, T, F)).astype(np.float32))
    x = rng.normal(size=(T, 2, F)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    prog = tmp_path / "two.farc"
    assert _cli("compile", path, "-o", prog, "--calib-npy", tmp_path / "calib.npy") == 0
    capsys.readouterr()
    assert _cli("run", prog, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"farc: error: -o {tmp_path / 'y.npy'}: the program has 2 outputs (Y, "
                   "Y_h); give an .npz path to get one array per output"]
    assert not (tmp_path / "y.npy").exists()
    assert _cli("run", prog, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz") == 0
    got, want = np.load(tmp_path / "y.npz"), _ort(path, x)
    assert sorted(got.files) == ["Y", "Y_h"]
    np.testing.assert_allclose(got["Y"], want[0], atol=2e-3)
    np.testing.assert_allclose(got["Y_h"], want[1], atol=2e-3)


# ---------------------------------------------------------------- onnx's own node tests
ISSUE_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum",
             "ReduceMax", "Softmax", "LogSoftmax", "Clip", "HardSigmoid", "HardSwish",
             "LeakyRelu", "Pad", "Gemm", "Squeeze", "Unsqueeze", "Expand", "Where", "LSTM",
             "GRU", "RNN", "BatchNormalization", "MatMul", "InstanceNormalization",
             "ConvTranspose", "LayerNormalization", "Reshape", "Transpose", "Concat", "Slice",
             "Split", "Flatten", "Gelu", "Relu", "Sigmoid", "Tanh", "Add", "Mul", "Div",
             "Sub", "Pow", "Sqrt"}
"""Issue 24's ops and their neighbours: node tests using any of them are walked."""


def _with_constant_operands(case: object) -> object | None:
    """The node test's model with every input but the first made an initializer holding
    the test's own data (a Conv's W, an LSTM's W/R/B), so the full loader, not only the
    one-input rule, reads it; None when there is nothing to turn."""
    model = case.model
    if not case.data_sets or len(model.graph.input) < 2:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi, arr in list(zip(out.graph.input, case.data_sets[0][0]))[1:]:
        if isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf":
            out.graph.initializer.append(numpy_helper.from_array(arr, vi.name))
    return out


def test_onnx_node_test_suite_loads_or_refuses_in_one_line(tmp_path) -> None:
    """Every model of onnx's node test suite that uses the issue's ops, as given and with
    its other inputs as constants, goes through what `farc compile` runs before compiling
    (the scan, then load_user_model): it loads or raises a FarcError of one line, never
    another exception. Not compiled: loading is where tracebacks came from."""
    import warnings

    from farc.models.graph import load_user_model
    from farc.models.refusal import check_model_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the suite's own numpy overflow warnings
        from onnx.backend.test.case.node import collect_testcases

        cases = [c for c in collect_testcases() if c.model is not None and
                 ISSUE_OPS & {n.op_type for n in c.model.graph.node}]
    assert len(cases) > 500
    counts, failures = {"loaded": 0, "refused": 0}, []
    for i, case in enumerate(cases):
        for k, model in enumerate((case.model, _with_constant_operands(case))):
            if model is None:
                continue
            path = tmp_path / f"{i}_{k}.onnx"
            onnx.save(model, path)
            try:
                check_model_file(str(path))
                load_user_model(path)
                counts["loaded"] += 1
            except FarcError as exc:
                counts["refused"] += 1
                if "\n" in str(exc) or not str(exc):
                    failures.append(f"{case.name}[{k}]: not one line: {exc!r}")
            except Exception as exc:  # what the test looks for
                failures.append(f"{case.name}[{k}]: {type(exc).__name__}: {exc}")
            path.unlink()
    assert not failures, "\n".join(failures[:20])
    assert counts["loaded"] > 20 and counts["refused"] > 500, counts


class TimeMajor(torch.nn.Module):
    """torch's default LSTM layout (batch_first=False) reading the model input [T, B, F]."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(F, H)
        self.fc = torch.nn.Linear(H, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0])


def test_time_major_pt2_input(tmp_path) -> None:
    """A .pt2 of a batch_first=False nn.LSTM on the input, dynamic batch on axis 1: rebuilt,
    its float ONNX (what verify runs) and its program all take [T, B, F] and give the
    module's [T, B, 2]."""
    import onnxruntime as ort

    from farc.models.from_torch import load_pt2

    torch.manual_seed(0)
    module = TimeMajor().eval()
    path = tmp_path / "tm.pt2"
    ep = torch.export.export(module, (torch.randn(T, 2, F),),
                             dynamic_shapes=({1: torch.export.Dim("batch")},))
    torch.export.save(ep, path)
    model = load_pt2(path)
    assert model.batch_axes == {"x": 1, "output": 1}
    x = torch.randn(T, 3, F)
    with torch.no_grad():
        want = module(x).numpy()
        got = model(x.transpose(0, 1)).transpose(0, 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    sess = ort.InferenceSession(str(model.export_onnx(tmp_path / "f.onnx")),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, atol=1e-5)
    np.save(tmp_path / "calib.npy", x.transpose(0, 1).numpy())  # calibrated on x: no clip
    np.save(tmp_path / "x.npy", x.numpy())
    prog = tmp_path / "tm.farc"
    assert _cli("compile", path, "-o", prog, "--calib-npy", tmp_path / "calib.npy") == 0
    assert _cli("run", prog, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy") == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=2e-3)


def test_pt2_members_checked_against_max_memory_before_reading(tmp_path, capsys) -> None:
    """A .pt2's members are unpacked by torch: their declared sizes are checked against
    --max-memory first (a deflated member declaring 64 MiB from a few KiB)."""
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/models/model.json", b"{}")
        z.writestr("bomb/data/weights/weight_0", bytes(64 << 20))
    assert bomb.stat().st_size < 1 << 20
    assert _cli("--max-memory", "16M", "compile", bomb, "-o", tmp_path / "m.farc") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the archive's members (as declared, unpacked) needs 64.0 " \
        "MiB, over the memory budget" in err[0], err


def test_fixed_batch_float_model_at_another_batch_is_one_line(tmp_path, capsys) -> None:
    """A file exported with a fixed batch (2) runs in onnxruntime only at that batch:
    verify on 3 inputs was "internal error: InvalidArgument"."""
    path = _lstm_layout0(tmp_path / "fixed.onnx")
    rng = np.random.default_rng(4)
    np.save(tmp_path / "calib.npy", rng.normal(size=(8, T, F)).astype(np.float32))
    np.save(tmp_path / "x.npy", rng.normal(size=(T, 3, F)).astype(np.float32))
    prog = tmp_path / "fixed.farc"
    assert _cli("compile", path, "-o", prog, "--calib-npy", tmp_path / "calib.npy") == 0
    capsys.readouterr()
    assert _cli("verify", prog, "--inputs-npy", tmp_path / "x.npy") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("farc: error: onnxruntime cannot run the "
                                               "float model on 3 inputs at a time"), err
    assert _cli("verify", prog, "--inputs-npy", tmp_path / "x.npy", "--samples", "2") == 0


def test_rank_one_input_to_a_time_major_lstm_is_refused(tmp_path) -> None:
    from farc.models.from_onnx import load_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H, name="lstm")
    path = _save(tmp_path / "r1.onnx", [node], [_vi("x", [F])], [_vi("Y", [1, 1, 1, H])],
                 inits)
    with pytest.raises(FarcError, match=r"^input x of rank 1 feeds a recurrent layer that "
                       "reads its axis 1 as the batch"):
        load_onnx(path)
