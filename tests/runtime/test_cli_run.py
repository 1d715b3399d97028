"""`farc run`: batched emulation, accuracy, and one-line errors with no partial output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _rt_util import linear_program
from farc.runtime.builder import XbarParams
from farc.runtime.emulator import Emulator
from xbar_flat import xp

rng = np.random.default_rng(0)
W, B = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
X = rng.normal(size=(23, 12)).astype(np.float32)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prog = linear_program(W, B, X, xp(rows=8, cols=16))
    paths = {"prog": prog.save(tmp_path / "m.farc"), "x": tmp_path / "x.npy",
             "y": tmp_path / "y.npy"}
    np.save(paths["x"], X)
    np.save(paths["y"], Emulator(prog).run({"x": X})["y"].argmax(axis=1))
    return paths


def farc(*args: object) -> subprocess.CompletedProcess:
    from farc.cli import main  # noqa: F401  (import check: the CLI entry point exists)
    return subprocess.run([sys.executable, "-c", "from farc.cli import main; main()",
                           *map(str, args)], capture_output=True, text=True, check=False)


def test_run_batches_and_accuracy(files, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    res = farc("run", files["prog"], "--input", files["x"], "--labels", files["y"],
               "--batch-size", 5, "-o", out, "--counters", tmp_path / "c.json")
    assert res.returncode == 0, res.stderr
    assert "top-1 accuracy: 100.00% (23 samples)" in res.stdout
    prog_out = Emulator(linear_program(W, B, X, xp(rows=8, cols=16))).run({"x": X})
    np.testing.assert_array_equal(np.load(out), prog_out["y"])
    assert (tmp_path / "c.json").read_text().count("mvms_per_layer") == 1


def test_run_with_noise_is_seeded(files, tmp_path: Path) -> None:
    outs = []
    for name in ("a.npy", "b.npy"):
        res = farc("run", files["prog"], "--input", files["x"], "--noise", "read_sigma=0.05",
                   "--seed", 3, "-o", tmp_path / name)
        assert res.returncode == 0, res.stderr
        outs.append(np.load(tmp_path / name))
    np.testing.assert_array_equal(*outs)


@pytest.mark.parametrize("case,match", [
    ("shape", r"input 'x' has shape \[23, 11\], the program expects \['N', 12\]"),
    ("dtype", "input 'x' has dtype int64, expected float32"),
    ("missing", "no such input file"),
    ("corrupt", "corrupt or truncated program"),
    ("noise", "bad --noise 'bogus=1'"),
    ("outdir", "cannot create it, .* is not a folder"),
    ("suffix", r"out\.txt: outputs are numpy arrays, give a \.npy"),
])
def test_bad_input_one_line_no_output(files, tmp_path: Path, case: str, match: str) -> None:
    args = ["run", files["prog"], "--input", files["x"], "-o", tmp_path / "out.npy"]
    if case == "shape":
        np.save(files["x"], X[:, :11])
    elif case == "dtype":
        np.save(files["x"], X.astype(np.int64))
    elif case == "missing":
        files["x"].unlink()
    elif case == "corrupt":
        files["prog"].write_bytes(files["prog"].read_bytes()[:200])
    elif case == "outdir":  # a missing folder is created (as by every command); a file isn't
        (tmp_path / "file").write_text("")
        args[-1] = tmp_path / "file" / "out.npy"
    elif case == "suffix":  # numpy data under a .txt name would mislead
        args[-1] = tmp_path / "out.txt"
    else:
        args += ["--noise", "bogus=1"]
    res = farc(*args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farc: error:"), res.stderr
    import re
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_run_on_digits_prints_accuracy(tmp_path: Path) -> None:
    """--data feeds the split through farc.data (torch is imported by the command only)."""
    pytest.importorskip("torch")
    from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
    w = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    layer, arrays = pack_layer(w, None, scale_for_inputs(np.ones(1), 8), XbarParams())
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "reshape", "in": ["x"], "shape": [64], "out": "f"},
                         {"op": "mvm", "layer": 0, "in": ["f"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [1, 8, 8]}, {"y": [10]}, [(layer, arrays)])
    res = farc("run", prog.save(tmp_path / "d.farc"), "--data", "digits", "-o",
               tmp_path / "o.npy")
    assert res.returncode == 0, res.stderr
    assert "top-1 accuracy:" in res.stdout and "(360 samples)" in res.stdout
    assert np.load(tmp_path / "o.npy").shape == (360, 10)


@pytest.mark.parametrize("spec", ["digits", "FOLDER"])
def test_data_for_a_non_image_program_is_refused_before_decoding(files, tmp_path: Path,
                                                                 spec: str) -> None:
    """A [N, 12] program cannot take decoded images (digits are 64 values, a folder's images
    any size): one line naming --input, before a single image is read."""
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"not a png")  # never opened
    data = "digits" if spec == "digits" else tmp_path / "imgs"
    res = farc("run", files["prog"], "--data", data, "-o", tmp_path / "o.npy")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "the program's input is ['N', 12] (not [N, C, H, W]); give the samples with " \
        "--input X.npy" in res.stderr
    assert not (tmp_path / "o.npy").exists()
