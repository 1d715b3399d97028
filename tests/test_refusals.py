"""Issue 28 item 5: a user's model with unsupported ops is refused in one line that names
every unsupported op (its first node and node count) and a wrong input count, read from the
file before torch or onnx is imported (farc.models.onnx_scan, farc.models.pt2_scan)."""

from __future__ import annotations

import re
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
           "unsupported ONNX ops Mod at node /mod/Mod (2 nodes; no supported alternative), "
           "Conv (3-d) at node /conv1/Conv (nearest supported: Conv (1-d or 2-d)), Pow at "
           "node /pow/Pow (nearest supported: Mul (x * x for an exponent of 2)), Sqrt at "
           "node Sqrt_3 (no supported alternative): supported ops are Add, ")


def _vi(name: str, shape: list) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _speech_like(path: Path) -> Path:
    """What a voice-activity model exported to ONNX looked like: Mod, a 3-d Conv, Pow and
    Sqrt (an unnamed node), and initial states as extra inputs (its Pad and 1-d Conv are
    supported now, issue 24)."""
    nodes = [helper.make_node("Mod", ["x", "pads"], ["p"], name="/mod/Mod"),
             helper.make_node("Conv", ["p", "w1"], ["c"], name="/conv1/Conv"),
             helper.make_node("Pow", ["c", "two"], ["q"], name="/pow/Pow"),
             helper.make_node("Sqrt", ["q"], ["r"]),
             helper.make_node("Mod", ["r", "pads"], ["p2"], name="/mod2/Mod"),
             helper.make_node("Add", ["p2", "h0"], ["y"], name="/add/Add")]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(np.zeros((4, 2, 3, 1, 1), np.float32), "w1"),
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
    with pytest.raises(UnsupportedModelError, match="^" + re.escape(SEVERAL)):
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
    assert str(fast.value).startswith(
        "unsupported torch ops selu at module act (node selu) (2 nodes; nearest supported: "
        "relu), pow at node pow_1 (nearest supported: mul (x * x for an exponent of 2)): "
        "supported ")


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


def _named_ops(alternative: str) -> list[str]:
    """The ops an alternative names: "Sigmoid and Mul" -> [Sigmoid, Mul], "LSTM or GRU" ->
    [LSTM, GRU], "Mul (x * x ...)" -> [Mul]."""
    head = alternative.split(" (")[0]
    parts = head.replace(" and ", ", ").replace(" or ", ", ").split(", ")
    return [part.strip() for part in parts]


def test_every_alternative_is_a_supported_op() -> None:
    """A refusal never points to an op that is refused itself."""
    from farc.models import onnx_scan, pt2_scan

    for table, supported in ((onnx_scan.ALTERNATIVES, onnx_scan.SUPPORTED),
                             (pt2_scan.ALTERNATIVES, pt2_scan.SUPPORTED)):
        for op, alt in table.items():
            if alt and not alt.startswith("none"):
                assert set(_named_ops(alt)) <= set(supported), (op, alt)


@pytest.mark.parametrize("op,attrs,want", [
    ("RNN", {"hidden_size": 4}, "RNN at node n (nearest supported: LSTM or GRU)"),
    ("InstanceNormalization", {}, "InstanceNormalization at node n (nearest supported: "
     "LayerNormalization)"),
    ("ConvTranspose", {}, "ConvTranspose at node n (nearest supported: Conv)"),
    ("Sqrt", {}, "Sqrt at node n (no supported alternative)"),
    ("BitShift", {}, "BitShift at node n (no supported alternative)"),
    ("QuantizeLinear", {}, "QuantizeLinear at node n (none: give the float model, farc "
     "quantizes it)"),
])
def test_refusal_names_op_node_and_nearest_alternative(tmp_path, op, attrs, want) -> None:
    from farc.models.from_onnx import load_onnx

    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [_vi("x", ["b", 4])], [_vi("y", ["b", 4])],
                              [numpy_helper.from_array(np.ones(4, np.float32), "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    for check in (check_onnx_file, load_onnx):  # the scan and the full loader
        with pytest.raises(UnsupportedModelError) as err:
            check(path)
        assert str(err.value).startswith(f"unsupported ONNX op {want}: supported ops are ")
        assert "\n" not in str(err.value)
