"""Bad input, found by an audit of every command: one line on stderr, a non-zero exit, no
traceback and no output (or temp) file left behind; the API raises a FarcError that says why."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from xbar_flat import xp

from farc.atomic import check_writable
from farc.errors import CheckpointError, ConfigError, PassError
from farc.far.distill import DistillOptions, TrainOptions
from farc.far.prune import PruneOptions
from farc.models.checkpoint import load_checkpoint


def farc(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from farc.cli import main; main()",
                           *map(str, args)], capture_output=True, text=True, check=False)


def one_line_error(res: subprocess.CompletedProcess, match: str, rc: int = 1) -> None:
    assert res.returncode == rc, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farc: error:"), res.stderr
    assert match in lines[0], lines[0]


def tiny_program(tmp_path: Path) -> tuple[Path, Path]:
    """A one-layer tile program (no compiler) and a matching float32 input batch."""
    from farc.runtime.builder import make_program, pack_layer, scale_for_inputs

    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(5, 12))
    layer, arrays = pack_layer(w, None, scale_for_inputs(x, 8), xp(rows=8, cols=16))
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [12]}, {"y": [None]}, [(layer, arrays)])
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    return prog.save(tmp_path / "m.farc"), tmp_path / "x.npy"


# ----------------------------------------------------------------- option values (API)
@pytest.mark.parametrize("opts,match", [
    (DistillOptions(train=TrainOptions(batch_size=0)), "--batch-size must be >= 1, got 0"),
    (DistillOptions(lr=math.nan), "--lr must be finite and > 0, got nan"),
    (DistillOptions(ft_lr=-1.0), "--ft-lr must be finite and > 0"),
    (DistillOptions(sim_weight=-1.0), "--sim-weight must be finite and >= 0"),
    (PruneOptions(train=TrainOptions(batch_size=-1)), "--batch-size must be >= 1, got -1"),
    (PruneOptions(lr=-1.0), "--lr must be finite and > 0"),
    (PruneOptions(target_sparsity=None, threshold=math.nan), "threshold nan must be >= 0"),
])
def test_training_options_are_checked(opts, match: str) -> None:
    with pytest.raises(ConfigError, match=match.replace("+", r"\+")):
        opts.validate()


@pytest.mark.parametrize("item,match", [
    ("read_sigma=inf", "read_sigma = inf must be finite and >= 0"),
    ("prog_sigma=inf", "prog_sigma = inf must be finite"),
    ("drift_t=inf", "drift_t = inf must be >= drift_t0"),
])
def test_noise_must_be_finite(item: str, match: str) -> None:
    from farc.runtime.schema import DeviceSection

    with pytest.raises(ConfigError, match=match):
        DeviceSection.parse([item])


@pytest.mark.parametrize("opset,error,match", [
    (3, ConfigError, "ONNX opset 3 is not supported"),
    (999, ConfigError, "ONNX opset 999 is not supported"),
    (9, PassError, "ONNX export at opset 9 failed"),  # in range, but flip needs opset 10
])
def test_export_bad_opset(far_digits, tmp_path: Path, opset: int, error, match: str) -> None:
    from farc.check.onnx_export import export_onnx

    with pytest.raises(error, match=match):
        export_onnx(far_digits, tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- wrong kind of file
def test_tile_program_given_as_checkpoint(tmp_path: Path) -> None:
    prog, _ = tiny_program(tmp_path)
    with pytest.raises(CheckpointError, match=r"is a farc tile program \(.farc\), not a "
                                              "checkpoint"):
        load_checkpoint(prog)


def test_farc_checkpoint_given_as_timm_weights(far_checkpoint) -> None:
    from farc.models.loading import load_deit_state_dict

    with pytest.raises(CheckpointError, match="is a farc checkpoint, not a timm"):
        load_deit_state_dict(far_checkpoint)


# ----------------------------------------------------------------- output paths
def test_check_writable(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a folder, not a file name"):
        check_writable(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        check_writable(tmp_path / "f" / "sub" / "m.pt")
    check_writable(tmp_path / "new" / "m.pt")  # created later by atomic_write: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("farc.atomic.tempfile.mkstemp", denied)
    with pytest.raises(ConfigError, match=r"cannot write in .* \(Permission denied\)"):
        check_writable(tmp_path / "m.pt")


@pytest.mark.parametrize("cmd", ["teacher", "distill", "prune"])
def test_training_checks_output_before_training(cmd, deit_checkpoint, far_checkpoint,
                                                tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "m.pt"
    args = {"teacher": ["teacher", "--epochs", 1],
            "distill": ["distill", deit_checkpoint, "--epochs", 0, "--ft-epochs", 0],
            "prune": ["prune", far_checkpoint, "--epochs", 0, "--ft-epochs", 0]}[cmd]
    one_line_error(farc(*args, "-o", out), "is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("cmd", ["teacher", "distill", "prune"])
def test_threads_must_be_positive(cmd, deit_checkpoint, far_checkpoint, tmp_path) -> None:
    args = {"teacher": ["teacher"], "distill": ["distill", deit_checkpoint],
            "prune": ["prune", far_checkpoint]}[cmd]
    res = farc(*args, "-o", tmp_path / "m.pt", "--threads", 0)
    assert res.returncode == 2 and "Invalid value for '--threads'" in res.stderr
    assert "Traceback" not in res.stderr and list(tmp_path.iterdir()) == []


def test_demo_checks_target_first(tmp_path: Path) -> None:
    one_line_error(farc("demo", "--out", tmp_path / "d", "--target", "nosuch"),
                   "unknown target 'nosuch'")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- farc run
def test_run_refuses_float_labels(tmp_path: Path) -> None:
    prog, x = tiny_program(tmp_path)
    np.save(tmp_path / "y.npy", np.zeros(5, np.float32))
    one_line_error(farc("run", prog, "--input", x, "--labels", tmp_path / "y.npy",
                        "-o", tmp_path / "o.npy"),
                   "labels must be one integer .npy array, got dtype float32")
    assert not (tmp_path / "o.npy").exists()


def test_run_writes_no_output_when_counters_fail(tmp_path: Path, monkeypatch, capsys) -> None:
    """A --counters file that cannot be written must not leave the -o file behind."""
    from farc.cli import main

    prog, x = tiny_program(tmp_path)
    real = Path.write_text

    def failing(self, *a, **k):  # the counters' temp file; the -o temp is written before
        if self.name.startswith(".c.json."):
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(SystemExit) as exc:
        main(["run", str(prog), "--input", str(x), "-o", str(tmp_path / "o.npy"),
              "--counters", str(tmp_path / "c.json")])
    assert exc.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Permission denied" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.farc", "x.npy"]


@pytest.mark.parametrize("name,match", [("empty", "has no samples"),
                                        ("nan", "holds NaN or infinite values")])
def test_run_refuses_empty_or_nonfinite_input(tmp_path: Path, name: str, match: str) -> None:
    prog, x = tiny_program(tmp_path)
    bad = np.zeros((0, 12), np.float32) if name == "empty" else np.full((3, 12), np.nan,
                                                                        np.float32)
    np.save(x, bad)
    one_line_error(farc("run", prog, "--input", x, "-o", tmp_path / "o.npy"), match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.farc", "x.npy"]


# ----------------------------------------------------------------- report and inspect outputs
@pytest.fixture
def far_farc(tmp_path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent / "targets"))
    from farc.targets import load_target
    from handmade_programs import far_program

    return far_program(load_target("isaac")).save(tmp_path / "far.farc")


def test_report_writes_json_and_html_together(far_farc: Path, monkeypatch, capsys) -> None:
    """--json failing (here: its writer raises) must not leave the --html file behind."""
    import farc.report.build as build
    from farc.cli import main

    def broken(reports):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "to_json", broken)
    with pytest.raises(SystemExit) as exc:
        main(["report", str(far_farc), "--html", str(far_farc.parent / "r.html"),
              "--json", str(far_farc.parent / "r.json")])
    assert exc.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left" in lines[0], lines
    assert sorted(p.name for p in far_farc.parent.iterdir()) == ["far.farc"]


def test_inspect_plot_is_png_whatever_the_suffix(far_farc: Path) -> None:
    """matplotlib picks a format from the suffix and fails on '.txt' (was an internal error);
    the map is a PNG, written atomically with the usual file mode."""
    from farc.atomic import file_mode

    out = far_farc.parent / "map.txt"
    res = farc("inspect", far_farc, "--plot", out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_mode & 0o777 == file_mode()
    assert sorted(p.name for p in far_farc.parent.iterdir()) == ["far.farc", "map.txt"]


def test_compile_checks_output_before_compiling(pruned_far_checkpoint, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    one_line_error(farc("compile", pruned_far_checkpoint, "-o", tmp_path / "f" / "m.farc",
                        "--calib-samples", 8), "is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_program_save_makes_its_folder(tmp_path: Path) -> None:
    """Like every other farc output (atomic_write), a program's missing folder is created
    (it used to fail after compiling, naming a temp file)."""
    from farc.runtime.program import Program

    prog, _ = tiny_program(tmp_path)
    out = Program.load(prog).save(tmp_path / "new" / "sub" / "m.farc")
    assert [p.name for p in out.parent.iterdir()] == ["m.farc"]


def test_demo_summary_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    from farc.commands.demo import _write_json

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        _write_json(tmp_path / "summary.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
