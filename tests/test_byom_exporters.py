"""Today's exporters (issue 28, item 4): the same user models as tests/test_byom.py, saved
with torch 2.13's default ONNX exporter (dynamo=True: an Expand of a constant for an LSTM's
zero state, weights in an external `<model>.onnx.data` file, nodes named node_*, module
paths in metadata) and as .pt2 programs with a dynamic batch; rebuilt, compiled and
verified. External data is read only from files inside the model's folder: everything else
is refused in one line.

Expected values never come from farc: the rebuilt model is compared with onnxruntime on
the user's file or with the user's own torch module."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

from farc.errors import CheckpointError
from farc.models.from_onnx import load_onnx
from farc.models.from_torch import load_pt2
from farc.models.graph import UnsupportedModelError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch's default (dynamo) ONNX exporter needs it
from test_byom import MODELS, _cli, _ort, _verify_passes  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def export_today(module: torch.nn.Module, shape: tuple[int, ...], path: Path,
                 fmt: str) -> Path:
    """Save `module` as a user of torch 2.13 would: .onnx with the default exporter and a
    dynamic batch, "static.onnx" with every option left at its default (batch 2), .pt2 with
    a dynamic batch."""
    example = torch.randn(2, *shape)
    batch = ({0: Dim("batch")},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "pt2":
            ep = torch.export.export(module, (example,), dynamic_shapes=batch)
            torch.export.save(ep, str(path))
        elif fmt == "static.onnx":
            torch.onnx.export(module, (example,), str(path), verbose=False)
        else:
            torch.onnx.export(module, (example,), str(path), input_names=["x"],
                              output_names=["logits"], dynamic_shapes=batch, verbose=False)
    return path


@pytest.fixture(scope="module")
def today(tmp_path_factory) -> dict:
    """(name, fmt) -> (module, shape, path), each ONNX file in a folder of its own (its
    external data file beside it)."""
    root = tmp_path_factory.mktemp("today")
    out = {}
    for name, (make, shape) in MODELS.items():
        torch.manual_seed(len(name))
        module = make().eval()
        for fmt in ("onnx", "pt2") + (("static.onnx",) if name == "bilstm" else ()):
            folder = root / f"{name}-{fmt}"
            folder.mkdir()
            out[name, fmt] = (module, shape,
                              export_today(module, shape, folder / f"{name}.{fmt}", fmt))
    return out


def _digits(shape: tuple[int, ...], n: int) -> torch.Tensor:
    from farc.data import load_split

    return load_split("digits", "test")[0][:n].reshape(n, *shape)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_today_exporters_rebuild_like_the_file(today, name: str, fmt: str) -> None:
    """Every model of test_byom, as written by today's exporters, rebuilds to the same
    outputs as onnxruntime on the file / the module, at a batch other than the exported."""
    module, shape, path = today[name, fmt]
    x = _digits(shape, 5)
    graph = load_pt2(path) if fmt == "pt2" else load_onnx(path)
    with torch.no_grad():
        if fmt == "pt2":
            torch.testing.assert_close(graph(x), module(x), rtol=0, atol=1e-6)
        else:
            np.testing.assert_allclose(graph(x).numpy(), _ort(path, x.numpy())[0],
                                       atol=1e-5)


def test_default_exporter_writes_what_farc_used_to_refuse(today) -> None:
    """The file really holds the constructs this module is about (else the tests below
    would pass vacuously): Expand, external data, node_* names, a symbolic batch."""
    _, _, path = today["bilstm", "onnx"]
    m = onnx.load(str(path), load_external_data=False)
    assert "Expand" in {n.op_type for n in m.graph.node}
    assert any(t.data_location == 1 for t in m.graph.initializer)
    assert (path.parent / f"{path.name}.data").is_file()
    assert all(n.name.startswith("node_") for n in m.graph.node)
    _, _, pt2 = today["bilstm", "pt2"]
    assert "sym_size" in {n.target.__name__.split(".")[0] for n in
                          torch.export.load(str(pt2)).graph.nodes if n.op == "call_function"
                          and hasattr(n.target, "__name__")}


@pytest.mark.parametrize("fmt", ["onnx", "static.onnx", "pt2"])
def test_bilstm_today_compiles_runs_and_verifies(today, fmt: str) -> None:
    """Must show: a plain BiLSTM classifier from the default ONNX exporter (dynamic and
    static batch 2) and as a dynamic-batch .pt2 compiles to a lossless program on isaac, runs
    in the emulator like the float model, and verify passes exactly. Its layers are named
    after the modules (rnn, cls), not the exporter's node_* names."""
    from farc.runtime.emulator import Emulator
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    module, shape, path = today["bilstm", fmt]
    x = _digits(shape, 12)
    program = compile_checkpoint(path, load_target("isaac"), CompileOptions(calib_samples=32))
    assert program_is_lossless(program)
    layers = {L["name"]: L["kind"] for L in program.layers}
    lstm = "rnn.l0" if fmt == "pt2" else "rnn.fwd"
    assert layers[lstm] == "lstm_cell" and layers["cls"] == "classifier" and len(layers) == 3
    loops = [i for i in program.instructions if i["op"] == "loop"]
    assert len(loops) == 1 and len(loops[0]["gather"]) == 2  # both directions, one loop
    (out,) = Emulator(program).run({program.inputs[0]["name"]: x.numpy()}).values()
    with torch.no_grad():
        want = module(x).numpy()
    assert (out.argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(out, want, atol=0.05 * np.abs(want).max())
    # verify's float reference is onnxruntime on the file, which takes a static-batch file
    # only at its own batch (2); the program itself runs any batch (above)
    _verify_passes(program, x[:2] if fmt == "static.onnx" else x, path)


def test_cli_compile_run_verify_default_onnx(today, tmp_path, capsys) -> None:
    """The commands a user types, on the default exporter's file and its data file."""
    _, shape, path = today["bilstm", "onnx"]
    prog = tmp_path / "seq.farc"
    assert _cli("compile", path, "-o", prog, "--calib-samples", "16") == 0
    assert _cli("verify", prog, "--samples", "12", "--bitlevel-samples", "1") == 0
    x = _digits(shape, 6).numpy()
    np.save(tmp_path / "x.npy", x)
    assert _cli("run", prog, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy") == 0
    assert np.load(tmp_path / "y.npy").shape == (6, 10)
    capsys.readouterr()


def test_verify_notices_a_changed_external_data_file(today, tmp_path) -> None:
    """The recorded sha256 covers the external data file: new weights in it, same .onnx."""
    import shutil

    from farc.targets import load_target

    from farc.check.verify import resolve_references
    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.errors import ConfigError

    _, _, src = today["mlp", "onnx"]
    path = Path(shutil.copytree(src.parent, tmp_path / "m")) / src.name
    program = compile_checkpoint(path, load_target("isaac"), CompileOptions(calib_samples=8))
    data = path.parent / f"{path.name}.data"
    raw = bytearray(data.read_bytes())
    raw[:4] = np.float32(3.0).tobytes()
    data.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="is not the file the program was compiled from"):
        resolve_references(program, None)


# ---------------------------------------------------------------- external data refusals
def _with_location(today, tmp_path: Path, **entries: str) -> Path:
    """The default-exported mlp copied to tmp_path, its first external tensor's
    external_data entries (location, offset, length) replaced."""
    import shutil

    _, _, src = today["mlp", "onnx"]
    folder = Path(shutil.copytree(src.parent, tmp_path / "model"))
    m = onnx.load(str(folder / src.name), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.data_location == 1)
    info = {e.key: e.value for e in t.external_data} | entries
    del t.external_data[:]
    for k, v in info.items():
        t.external_data.add(key=k, value=v)
    path = folder / "edited.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("entries, match", [
    ({"location": "/etc/passwd"}, r"external data location '/etc/passwd' is not a file "
                                  r"inside the model's folder"),
    ({"location": "../secret.bin"}, r"external data location '\.\./secret\.bin' is not a "
                                    "file inside"),
    ({"location": "C:\\weights.bin"}, r"external data location '.*weights\.bin' is not a "
                                       "file inside the model's folder"),
    ({"location": "missing.data"}, r"external data file 'missing\.data' not found in "),
    ({"length": "12"}, r"external data length 12 bytes, its shape \[32, 64\] of float32 "
                       r"needs 8192"),
    ({"offset": "999999999"}, r"external data bytes 999999999\.\.1000008191 out of range, "
                              r"mlp\.onnx\.data holds \d+ bytes"),
    ({"offset": "x"}, r"external data of an unreadable type or offset"),
    ({"location": ""}, r"external data location '' is not a file inside"),
])
def test_unsafe_external_data_refused_in_one_line(today, tmp_path, entries, match) -> None:
    path = _with_location(today, tmp_path, **entries)
    with pytest.raises(CheckpointError, match=r"^initializer \S+: " + match) as err:
        load_onnx(path)
    assert "\n" not in str(err.value)


def test_external_data_symlink_out_of_the_folder_refused(today, tmp_path) -> None:
    """A location inside the folder that is a symlink to a file outside it."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(1 << 16))
    path = _with_location(today, tmp_path, location="link.data")
    (path.parent / "link.data").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"external data 'link\.data' resolves to .*"
                                              r"outside\.bin, outside the model's folder"):
        load_onnx(path)


def test_external_data_over_the_memory_budget_refused_before_reading(today, tmp_path,
                                                                     monkeypatch) -> None:
    from farc.errors import ConfigError
    from farc.limits import MEMORY_ENV

    monkeypatch.setenv(MEMORY_ENV, "4K")
    path = _with_location(today, tmp_path)
    with pytest.raises(ConfigError, match=r"^initializer \S+ needs 8\.0 KiB, over the "
                                          "memory budget"):
        load_onnx(path)


def test_cli_unsafe_external_data_one_line_exit_1(today, tmp_path, capsys) -> None:
    path = _with_location(today, tmp_path, location="../../x.data")
    assert _cli("compile", path, "-o", tmp_path / "m.farc") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is not a file inside the model's folder" in lines[0]
    assert not (tmp_path / "m.farc").exists()


# ---------------------------------------------------------------- what stays refused
def test_expand_of_a_computed_tensor_refused(tmp_path) -> None:
    """Only constants are folded; broadcasting a tensor computed from the input would copy
    the batch row, which the tile program does not do."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Expand", ["x", "s"], ["y"], name="/grow")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 1, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["batch", 3, 4])],
        [numpy_helper.from_array(np.array([1, 3, 4], np.int64), "s")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "e.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(UnsupportedModelError, match=r"^node /grow: Expand of a computed "
                                                    r"tensor of shape \[1, 1, 4\] to "
                                                    r"\[1, 3, 4\]; only constants"):
        load_onnx(path)


class PerStep(torch.nn.Module):
    """A linear layer over every step of a sequence, then the first step (nn.LSTM would
    pin the time axis to the example's length itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)[:, 0]


def test_pt2_dynamic_sequence_length_refused(tmp_path) -> None:
    """Only the batch may be dynamic: a symbolic time axis is named in one line."""
    path = tmp_path / "seq.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(PerStep().eval(), (torch.randn(2, 5, 4),),
                                 dynamic_shapes=({0: Dim("batch"), 1: Dim("time")},))
        torch.export.save(ep, str(path))
    with pytest.raises(UnsupportedModelError, match=r"^input x: dimension 1 \(\w+\) is "
                                                    r"symbolic; only the batch axis \(0\) "
                                                    "may be dynamic"):
        load_pt2(path)


def test_external_tensor_of_negative_shape_refused(today, tmp_path) -> None:
    path = _with_location(today, tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.data_location == 1)
    t.dims[0] = -32
    path.write_bytes(m.SerializeToString())
    with pytest.raises(CheckpointError, match=r"^initializer \S+: external tensor of shape "
                                              r"\[-32, 64\]"):
        load_onnx(path)
