"""`farc demo` wiring: with the three checkpoints already in --out (random weights, so the
training stages are reused), the demo compiles, emulates, inspects, reports and verifies,
and writes its summary. The training stages themselves are tested in their own files."""

import json
import shutil

import pytest

from farc.cli import main

pytest.importorskip("tvm")


def test_demo_reuses_checkpoints_and_writes_every_artifact(
        tmp_path, deit_checkpoint, far_checkpoint, pruned_far_checkpoint, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copy(deit_checkpoint, out / "teacher.pt")
    shutil.copy(far_checkpoint, out / "far.pt")
    shutil.copy(pruned_far_checkpoint, out / "far_pruned.pt")
    main(["demo", "--out", str(out)])  # returns normally; a failure would sys.exit(1)
    text = capsys.readouterr().out
    assert "reusing" in text and "farc demo summary" in text
    for name in ("far_pruned.farc", "far_pruned.float.onnx", "far_pruned.qdq.onnx",
                 "teacher.farc", "emulated.npy", "counters.json", "crossbars.png",
                 "report.html", "report.json", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    pair = summary["verify"]["pairs"]["emulator vs qdq"]
    assert pair["agreement"] == 1.0
    assert summary["hardware"]["far_pruned"]["crossbars"] > 0
    assert summary["verify"]["ok"], summary["verify"]["failure"]
