"""The ONNX golden path: export keeps LSTMs as LSTM nodes and onnxruntime matches PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from farc.check.onnx_export import INPUT_NAME, OUTPUT_NAME, expected_lstm_nodes, export_onnx
from farc.check.ort import OrtRunner
from farc.errors import CheckpointError, DataError, PassError

MODELS = ["deit_digits", "far_digits", "pruned_far_digits"]


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    """model fixture name -> (model, onnx path), exported once per module."""
    d = tmp_path_factory.mktemp("onnx")
    return {name: (request.getfixturevalue(name), export_onnx(request.getfixturevalue(name),
                                                              d / f"{name}.onnx"))
            for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_ort_matches_torch(name, exported):
    model, path = exported[name]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    got = OrtRunner(path, intra_op_threads=1).run(x.numpy())
    assert got.shape == ref.shape == (5, 10)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_lstms_are_lstm_nodes(name, exported):
    model, path = exported[name]
    g = onnx.load(str(path))
    lstms = [n for n in g.graph.node if n.op_type == "LSTM"]
    assert len(lstms) == expected_lstm_nodes(model) == (32 if "far" in name else 0)
    assert not any(n.op_type == "Loop" or n.op_type == "Scan" for n in g.graph.node)
    if name == "pruned_far_digits":
        sizes = sorted(a.i for n in lstms for a in n.attribute if a.name == "hidden_size")
        want = sorted(s for blk in model.cfg.hidden for pair in blk for s in pair)
        assert sizes == want


def test_io_names_and_dynamic_batch(exported):
    _, path = exported["far_digits"]
    runner = OrtRunner(path)
    assert (runner.input_name, runner.output_name) == (INPUT_NAME, OUTPUT_NAME)
    assert runner.input_shape == ["batch", 1, 8, 8]
    x = np.random.default_rng(0).standard_normal((7, 1, 8, 8)).astype(np.float32)
    whole = runner.run(x)
    assert runner.run(x[:1]).shape == (1, 10)
    np.testing.assert_allclose(runner.run(x, batch_size=3), whole, rtol=0, atol=1e-6)


def test_runner_errors(exported, tmp_path):
    _, path = exported["deit_digits"]
    with pytest.raises(DataError, match=r"input of shape \(2, 3, 8, 8\) does not fit"):
        OrtRunner(path).run(np.zeros((2, 3, 8, 8)))
    with pytest.raises(CheckpointError, match="no such ONNX file"):
        OrtRunner(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        OrtRunner(tmp_path / "junk.onnx")


def test_export_refuses_other_modules(tmp_path):
    with pytest.raises(PassError, match="cannot export a Linear to ONNX"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    assert not any(tmp_path.iterdir())
