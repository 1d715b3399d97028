"""`farc run` and `farc verify` split a dataset across torchrun processes (one contiguous
shard each, gathered once on rank 0) and give what the single-process run gives."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tvm")
pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _farc(*args: str, procs: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={procs}", "-m", "farc"] if procs > 1
                else [sys.executable, "-m", "farc"])
    return subprocess.run([*launcher, *args], check=False, capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.fixture(scope="module")
def program(tmp_path_factory, far_checkpoint):
    out = tmp_path_factory.mktemp("dist") / "far.farc"
    done = _farc("compile", str(far_checkpoint), "--input-bits", "8", "--weight-bits", "8",
                 "--calib-samples", "16", "--emit-onnx", "-o", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_two_process_run_equals_one_process(program, tmp_path):
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    c1, c2 = tmp_path / "c1.json", tmp_path / "c2.json"
    a = _farc("run", str(program), "--data", "digits", "-o", str(one), "--counters", str(c1))
    b = _farc("run", str(program), "--data", "digits", "-o", str(two), "--counters", str(c2),
              procs=2)
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    np.testing.assert_array_equal(np.load(one), np.load(two))
    assert json.loads(c1.read_text()) == json.loads(c2.read_text())
    acc = [line for line in a.stdout.splitlines() if "accuracy" in line]
    assert acc and acc == [line for line in b.stdout.splitlines() if "accuracy" in line]


def test_two_process_verify_reports_the_same_accuracy(program):
    a = _farc("verify", str(program), "--samples", "0", "--min-agreement", "0")
    b = _farc("verify", str(program), "--samples", "0", "--min-agreement", "0", procs=2)
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr

    def accuracy_rows(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.startswith("│ ") and "%" in ln
                and ("emulator  " in ln or "float  " in ln or "reference  " in ln)]

    rows = accuracy_rows(a.stdout)
    assert rows and rows == accuracy_rows(b.stdout)
    assert "360 images" in a.stdout and "360 images" in b.stdout
