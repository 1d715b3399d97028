"""The CLI front door: --version, --help on every command, `farc export` and `farc teacher`,
and every bad checkpoint giving exit code 1, one line on stderr and no output file."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from farc import __version__
from farc.check.onnx_export import INPUT_NAME
from farc.cli import COMMANDS, cli, main
from farc.models.checkpoint import load_checkpoint, weights_digest


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_version(capsys):
    assert _main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_version():
    out = subprocess.run([sys.executable, "-c", "from farc.cli import main; main()", "--version"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"farc, version {__version__}" in out.stdout


def _available() -> list[str]:
    import click

    return cli.list_commands(click.Context(cli))


def test_help_lists_every_available_command(capsys):
    assert _main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in _available():
        assert name in out
    assert {"teacher", "export"} <= set(_available())


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name, capsys):
    if name not in _available():
        pytest.skip(f"farc {name} is not built yet")
    assert _main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: farc {name}" in out and "--help" in out


# ----------------------------------------------------------------------------- farc export
@pytest.mark.parametrize("fixture", ["deit_checkpoint", "pruned_far_checkpoint"])
def test_export_writes_a_checked_onnx(fixture, request, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert _main(["export", str(request.getfixturevalue(fixture)), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and INPUT_NAME in text and "max |ORT - torch|" in text


CASES = ["truncated", "garbage", "empty", "bitflip", "version", "foreign", "config_vs_shape",
         "extra_tensor", "missing", "torch_save"]


@pytest.mark.parametrize("case", CASES)
def test_export_of_a_bad_checkpoint_fails_cleanly(case, bad_checkpoints, tmp_path, capsys):
    path, pattern = bad_checkpoints[case]
    out = tmp_path / "x.onnx"
    assert _main(["export", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("farc: error: ")
    assert re.search(pattern, err)
    assert not out.exists() and not any(tmp_path.iterdir())


def test_bad_checkpoint_in_a_real_process(bad_checkpoints, tmp_path):
    """The installed entry point: exit 1, exactly one stderr line, nothing on stdout."""
    path, _ = bad_checkpoints["truncated"]
    out = tmp_path / "x.onnx"
    r = subprocess.run([sys.executable, "-c", "from farc.cli import main; main()",
                        "export", str(path), "-o", str(out)],
                       check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "truncated or corrupt" in r.stderr
    assert r.stdout == "" and not out.exists()


def test_wrong_kind_for_distill(far_checkpoint, tmp_path, capsys):
    if "distill" not in _available():
        pytest.skip("farc distill is not built yet")
    out = tmp_path / "student.pt"
    assert _main(["distill", str(far_checkpoint), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "holds a far model, expected deit" in err and err.count("\n") == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- farc teacher
def test_teacher_one_epoch_is_saved_with_provenance_and_repeatable(tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        assert _main(["teacher", "-o", str(path), "--epochs", "1", "--seed", "3"]) == 0
    assert "test acc" in capsys.readouterr().out
    ca, cb = load_checkpoint(a, expect="deit"), load_checkpoint(b, expect="deit")
    assert weights_digest(ca.model.state_dict()) == weights_digest(cb.model.state_dict())
    prov = ca.provenance
    assert prov["command"] == "teacher" and prov["data"] == "digits" and prov["seed"] == 3
    assert 0.0 <= prov["metrics"]["test_acc"] <= 1.0 and prov["metrics"]["train_seconds"] > 0
    assert prov["train_config"]["epochs"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "--epochs must be >= 1 (0 only with --weights), got 0"),
    (["--noise", "-1"], "--noise must be >= 0, got -1.0"),
    (["--data", "/no/such/dir"], "'/no/such/dir' not found"),
])
def test_teacher_bad_options(args, message, tmp_path, capsys):
    out = tmp_path / "t.pt"
    assert _main(["teacher", "-o", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_teacher_preset_is_a_choice(tmp_path, capsys):
    assert _main(["teacher", "-o", str(tmp_path / "t.pt"), "--preset", "deit_huge"]) == 2
    assert "'deit_huge' is not one of 'deit_tiny_patch16_224'" in capsys.readouterr().err


def test_teacher_imports_timm_weights_and_trains_on_a_folder(tmp_path, capsys, deit_digits):
    """--weights + --epochs 0 imports and evaluates; a folder dataset feeds the same command."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):  # 10 classes so the digits-shaped weights fit
        (tmp_path / "imgs" / f"c{label}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"c{label}" / f"{i}.png")
    weights = tmp_path / "digits.pth"
    torch.save({"model": deit_digits.state_dict()}, weights)
    out = tmp_path / "t.pt"
    argv = ["teacher", "-o", str(out), "--weights", str(weights), "--preset", "deit_digits",
            "--epochs", "0", "--data", str(tmp_path / "imgs")]
    assert _main(argv) == 0
    ckpt = load_checkpoint(out, expect="deit")
    assert ckpt.model.cfg == deit_digits.cfg
    assert weights_digest(ckpt.model.state_dict()) == weights_digest(deit_digits.state_dict())
    assert ckpt.provenance["weights"]["path"] == str(weights.resolve())
    assert ckpt.provenance["metrics"]["best_epoch"] is None
    capsys.readouterr()
    assert _main(["teacher", "-o", str(out), "--epochs", "1", "--data",
                  str(tmp_path / "imgs")]) == 0
    trained = load_checkpoint(out)
    assert trained.provenance["data"] == str(tmp_path / "imgs")
    assert trained.provenance["train_config"]["epochs"] == 1
