"""Issue 28 item 5: a user's model with unsupported ops is refused in one line that names
every unsupported op (its first node and node count) and a wrong input count, read from the
file before torch or onnx is imported (farc.models.onnx_scan, farc.models.pt2_scan)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from farc.models.onnx_scan import check_onnx_file
from farc.models.pt2_scan import check_pt2_file
from farc.models.refusal import UnsupportedModelError, refusal_message, unsupported_ops

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SEVERAL = ("the model takes 3 inputs (x, h0, c0), farc compiles models of one tensor input; "
           "unsupported ONNX ops Mod at node /mod/Mod (2 nodes), Conv (1-d) at node "
           "/conv1/Conv, Pow at node /pow/Pow, Sqrt at node Sqrt_3: supported ops are Add, ")


def _vi(name: str, shape: list) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _speech_like(path: Path) -> Path:
    """What a voice-activity model exported to ONNX looked like: Mod, a 1-d Conv, Pow and
    Sqrt (an unnamed node), and initial states as extra inputs (its Pad is supported now,
    issue 24)."""
    nodes = [helper.make_node("Mod", ["x", "pads"], ["p"], name="/mod/Mod"),
             helper.make_node("Conv", ["p", "w1"], ["c"], name="/conv1/Conv"),
             helper.make_node("Pow", ["c", "two"], ["q"], name="/pow/Pow"),
             helper.make_node("Sqrt", ["q"], ["r"]),
             helper.make_node("Mod", ["r", "pads"], ["p2"], name="/mod2/Mod"),
             helper.make_node("Add", ["p2", "h0"], ["y"], name="/add/Add")]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(np.zeros((4, 2, 3), np.float32), "w1"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(nodes, "vad", [_vi("x", ["b", 2, 16]), _vi("h0", [1, 4, 16]),
                                             _vi("c0", [1, 4, 16])],
                              [_vi("y", ["b", 4, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


class TwoBadOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.SELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)).pow(2) + self.act(x)


@pytest.fixture(scope="module")
def bad_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "bad.pt2"
    torch.export.save(torch.export.export(TwoBadOps().eval(), (torch.randn(1, 8),)), path)
    return path


def test_message_lists_first_node_and_count() -> None:
    ops = unsupported_ops([("Pad", "node a"), ("Pow", "node b"), ("Pad", "node c")])
    assert ops == [("Pad", "node a", 2), ("Pow", "node b", 1)]
    assert refusal_message("ONNX", ops, ["Add"]) == \
        "unsupported ONNX ops Pad at node a (2 nodes), Pow at node b: supported ops are Add"
    assert refusal_message("ONNX", [], ["Add"], ["x"]) == ""


def test_onnx_scan_names_every_op_and_the_inputs(tmp_path) -> None:
    path = _speech_like(tmp_path / "vad.onnx")
    with pytest.raises(UnsupportedModelError, match="^" + SEVERAL.replace("(", r"\(")
                       .replace(")", r"\)")):
        check_onnx_file(path)


def test_onnx_loader_gives_the_same_line(tmp_path) -> None:
    from farc.models.from_onnx import load_onnx

    path = _speech_like(tmp_path / "vad.onnx")
    with pytest.raises(UnsupportedModelError) as fast:
        check_onnx_file(path)
    with pytest.raises(UnsupportedModelError) as full:
        load_onnx(path)
    assert str(fast.value) == str(full.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_scan_passes_a_supported_model(tmp_path) -> None:
    """A real exporter's file (packed fields, weights as raw data) scans as supported."""
    from farc.models.graph import load_user_model

    path = tmp_path / "mlp.onnx"
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    torch.onnx.export(model, (torch.randn(1, 8),), str(path), dynamo=False)
    check_onnx_file(path)
    assert load_user_model(path).input_shape == (1, 8)


def test_onnx_scan_leaves_a_garbled_file_to_the_loader(tmp_path) -> None:
    from farc.errors import CheckpointError
    from farc.models.from_onnx import load_onnx

    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not protobuf")
    check_onnx_file(path)  # no verdict: the full loader names the problem
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        load_onnx(path)


def test_pt2_scan_and_loader_agree(bad_pt2) -> None:
    from farc.models.from_torch import load_pt2

    with pytest.raises(UnsupportedModelError) as fast:
        check_pt2_file(bad_pt2)
    with pytest.raises(UnsupportedModelError) as full:
        load_pt2(bad_pt2)
    assert str(fast.value) == str(full.value)
    assert str(fast.value).startswith("unsupported torch ops selu at module act (node "
                                      "selu) (2 nodes), pow at node pow_1: supported ")


def _cli_without_heavy_imports(*args: str) -> subprocess.CompletedProcess:
    """`farc ARGS` in a fresh interpreter that reports at exit which heavy modules loaded."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('heavy:', sorted(m for m in ('torch', 'onnx', 'tvm')"
            " if m in sys.modules), file=sys.stderr))\n"
            "from farc.cli import main\n"
            f"main({list(args)!r})\n")
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_compile_refuses_in_one_line_before_torch(tmp_path, bad_pt2, kind) -> None:
    path = _speech_like(tmp_path / "vad.onnx") if kind == "onnx" else bad_pt2
    out = tmp_path / "m.farc"
    res = _cli_without_heavy_imports("compile", str(path), "-o", str(out))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "heavy: []"
    want = "farc: error: " + (SEVERAL if kind == "onnx" else "unsupported torch ops selu")
    assert lines[0].startswith(want)
    assert not out.exists()


def test_help_imports_nothing_heavy() -> None:
    res = _cli_without_heavy_imports("--help")
    assert res.returncode == 0 and res.stderr.strip() == "heavy: []"
