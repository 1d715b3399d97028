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
    captured = capsys.readouterr()
    text = captured.out
    assert "reused" in text and "farc demo summary" in text
    lines = text.splitlines()
    assert len(lines) <= 45, text  # one line per stage and the summary; the rest in files
    assert sum(line.startswith(("✓ [", "· [")) for line in lines) == 9
    assert "Tiling" not in text and not captured.err.strip(), captured.err
    for name in ("far_pruned.farc", "far_pruned.float.onnx", "far_pruned.qdq.onnx",
                 "teacher.farc", "emulated.npy", "counters.json", "crossbars.png",
                 "report.html", "report.json", "summary.json", "summary.md",
                 "logs/04-compile.log", "logs/07-inspect.log", "logs/09-verify.log"):
        assert (out / name).exists(), name
    assert "farc demo summary" in (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    pair = next(p for k, p in summary["verify"]["pairs"].items()
                if k.startswith("emulator vs") and not k.endswith("float"))
    assert pair["agreement"] == 1.0
    assert summary["hardware"]["far_pruned"]["crossbars"] > 0
    assert summary["verify"]["ok"], summary["verify"]["failure"]
