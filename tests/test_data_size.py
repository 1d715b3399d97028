"""Issue 28 item 1: data at the model's own size. `farc teacher` takes image size, patch
and channels from a folder's images (or explicit options) and says what it uses;
distill/prune refuse a folder of another size unless --resize."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from farc_cli import farc_cli as _cli

from farc.data import model_splits, native_shape
from farc.errors import DataError

PIL = pytest.importorskip("PIL.Image")


def _folder(root, side: int, mode: str = "L", per_class: int = 5):
    rng = np.random.default_rng(0)
    for c in ("zero", "one"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (side, side) if mode == "L" else (side, side, 3)
            PIL.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
                root / c / f"{i}.png")
    return root




def test_native_shape_reads_the_header(tmp_path) -> None:
    assert native_shape(str(_folder(tmp_path / "g", 28))) == (28, 1)
    assert native_shape(str(_folder(tmp_path / "c", 12, "RGB"))) == (12, 3)
    assert native_shape("digits") == (8, 1)


def test_model_splits_refuse_a_resize_unless_asked(tmp_path) -> None:
    data = str(_folder(tmp_path / "g", 28))
    with pytest.raises(DataError, match=r"holds 28x28 grey images and the model takes 8x8 "
                                        r"grey; pass --resize"):
        model_splits(data, 8, 1)
    (x, _), _, _ = model_splits(data, 8, 1, resize=True)
    assert tuple(x.shape[1:]) == (1, 8, 8)
    (x, _), _, _ = model_splits(data, 28, 1)
    assert tuple(x.shape[1:]) == (1, 28, 28)


def test_teacher_keeps_the_folder_size(tmp_path, capsys) -> None:
    from farc.models.checkpoint import load_checkpoint

    data = _folder(tmp_path / "mnist", 28)
    out = tmp_path / "t.pt"
    assert _cli("teacher", "--data", data, "--preset", "deit_digits_3h", "--epochs", "1",
                "--threads", "1", "-o", out) == 0
    cfg = load_checkpoint(out).model.cfg
    assert (cfg.img_size, cfg.in_chans, cfg.patch_size) == (28, 1, 14)  # the preset's 2x2 grid
    err = " ".join(capsys.readouterr().err.split())  # log lines wrap at the console width
    assert "28x28 images, 1 channel(s), 14x14 patches" in err
    assert "28x28 grey images, at their own size" in err


def test_teacher_explicit_shape_and_resize(tmp_path, capsys) -> None:
    data = _folder(tmp_path / "mnist", 28)
    out = tmp_path / "t.pt"
    assert _cli("teacher", "--data", data, "--preset", "deit_digits_3h", "--img-size", "8",
                "--epochs", "1", "--threads", "1", "-o", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("farc: error: --data ") and "--resize" in err[-1]
    assert not out.exists()
    assert _cli("teacher", "--data", data, "--preset", "deit_digits_3h", "--img-size", "8",
                "--resize", "--epochs", "1", "--threads", "1", "-o", out) == 0
    assert "converted from 28x28 grey to the model's 8x8 grey" in \
        " ".join(capsys.readouterr().err.split())


def test_teacher_patch_that_does_not_divide(tmp_path, capsys) -> None:
    data = _folder(tmp_path / "odd", 27)
    assert _cli("teacher", "--data", data, "--preset", "deit_digits", "--epochs", "1",
                "-o", tmp_path / "t.pt") == 1
    assert "do not split into the preset's 4x4 patch grid; pass --patch-size" in \
        " ".join(capsys.readouterr().err.split())


def test_distill_refuses_a_folder_of_another_size(tmp_path, deit_checkpoint, capsys) -> None:
    data = _folder(tmp_path / "big", 28)
    out = tmp_path / "far.pt"
    assert _cli("distill", deit_checkpoint, "--data", data, "--threads", "1", "-o", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"farc: error: --data {data} holds 28x28 grey images and the "
                              "model takes 8x8 grey; pass --resize")
    assert not out.exists()


def test_resize_is_an_option_of_every_training_command() -> None:
    for cmd in ("distill", "prune", "teacher"):
        res = CliRunner().invoke(__import__("farc.cli", fromlist=["cli"]).cli, [cmd, "--help"])
        assert "--resize" in res.output
