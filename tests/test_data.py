"""farc.data: the fixed digits split and the ImageNet-style folder loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from farc.data import IMAGENET_MEAN, IMAGENET_STD, load_split, num_classes, stratified_split
from farc.errors import DataError


def test_digits_split_sizes_range_and_dtypes():
    sizes = {}
    for split in ("train", "val", "test"):
        x, y = load_split("digits", split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8)
        assert x.min() == -1.0 and x.max() == 1.0
        sizes[split] = len(x)
    assert sizes == {"train": 1078, "val": 359, "test": 360}
    assert num_classes("digits") == 10


def test_digits_split_is_stratified_disjoint_and_fixed():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    idx = stratified_split(labels)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(labels)))
    for split, part in idx.items():
        counts = np.bincount(labels[part], minlength=10) / len(part)
        assert counts.min() > 0.09 and counts.max() < 0.11, split  # ~10% of each class
        x, y = load_split("digits", split)
        x2, y2 = load_split("digits", split)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(y, torch.from_numpy(labels[part]))
    assert idx["test"][:5].tolist() == [4, 10, 17, 28, 32]  # the documented split, pinned


def test_digits_resized_for_another_model():
    x, _ = load_split("digits", "val", img_size=16, in_chans=3)
    assert x.shape == (359, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split("digits", "dev")


def _png(path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def test_folder_deterministic_split(tmp_path):
    for name, colour in COLOURS.items():
        for i in range(10):
            _png(tmp_path / name / f"{i}.png", colour)
    parts = {s: load_split(str(tmp_path), s, img_size=16) for s in ("train", "val", "test")}
    assert {s: len(y) for s, (_, y) in parts.items()} == {"train": 18, "val": 6, "test": 6}
    x, y = parts["train"]
    assert x.shape == (18, 3, 16, 16) and x.dtype == torch.float32
    assert sorted(np.bincount(y.numpy()).tolist()) == [6, 6, 6]
    # a pure red "cat" image, normalised with ImageNet statistics
    red = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    cat = x[y == 0][0]
    np.testing.assert_allclose(cat[:, 8, 8].numpy(), red, atol=1e-5)
    assert num_classes(str(tmp_path)) == 3
    again = load_split(str(tmp_path), "train", img_size=16)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_folder_with_train_val_subfolders(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for name, colour in COLOURS.items():
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.jpg", colour, size=(20, 50))
    x, y = load_split(str(tmp_path), "train", img_size=8, in_chans=1)
    assert x.shape == (12, 1, 8, 8) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    xv, _ = load_split(str(tmp_path), "val", img_size=8)
    xt, _ = load_split(str(tmp_path), "test", img_size=8)  # no test/: ImageNet's val
    assert xv.shape == (6, 3, 8, 8) and torch.equal(xv, xt)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"'.*nowhere' not found"):
        load_split(str(tmp_path / "nowhere"), "train")
    with pytest.raises(DataError, match="no class subfolders"):
        load_split(str(tmp_path), "train")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        load_split(str(tmp_path), "train")
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "cat" / "b.png").write_bytes(b"not a png")
    (tmp_path / "cat" / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image|\.png: cannot read"):
        load_split(str(tmp_path), "train")
