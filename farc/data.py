"""Datasets as in-memory tensors: the bundled digits default and ImageNet-style folders.

`load_split(spec, split)` returns `(x [N, C, H, W] float32, y [N] int64)`. Everything is
loaded eagerly: farc's datasets are small (digits: 1797 images; folders: calibration or
evaluation subsets), and plain tensors keep training, calibration and verification simple.
Splits are deterministic, so every command sees the same train/val/test images (details and
the exact sizes: docs/data.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from farc.errors import DataError
from farc.limits import MAX_IMAGE_PIXELS, check_memory

if TYPE_CHECKING:
    import torch  # imported where tensors are made: a refused folder never loads torch

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DeiT's eval transform: resize the short side to img_size / 0.875, then centre-crop img_size.
CROP_PCT = 0.875


def load_split(
    spec: str, split: str, img_size: int | None = None, in_chans: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of `split` ('train', 'val' or 'test') of dataset `spec`.

    spec is "digits" (scikit-learn's bundled 8x8 digits) or a folder of class subfolders.
    img_size / in_chans shape the images for a model (folders default to 224 and 3; digits
    are natively 8x8x1 and are resized / repeated only when asked)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if spec == "digits":
        x, y = _digits_split(split)
        return _reshape(x, img_size, in_chans), y
    return _folder_split(Path(spec), split, img_size or 224, in_chans or 3)


def native_shape(spec: str) -> tuple[int, int]:
    """(side, channels) of the dataset's images as stored: digits are 8x8 grey; a folder's
    come from its first image's header (no pixels decoded): grey modes ("1", "L", "I", "F",
    "LA") are 1 channel, the rest 3. Non-square images are refused (farc's models take
    square images; crop or resize them first)."""
    if spec == "digits":
        return 8, 1
    from PIL import Image, UnidentifiedImageError

    root = _folder_root(Path(spec))
    files, _ = _list_images(root, _class_names(root))
    try:
        with Image.open(files[0]) as im:
            (w, h), mode = im.size, im.mode
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{files[0]}: cannot read image ({exc})") from None
    if w != h:
        raise DataError(f"{files[0]}: image of {w}x{h} pixels; farc's models take square "
                        "images (crop or resize the folder first)")
    return w, 1 if mode in ("1", "L", "I", "F", "LA", "I;16") else 3


def describe_shape(side: int, chans: int) -> str:
    return f"{side}x{side} {'grey' if chans == 1 else 'RGB'}"


def model_splits(spec: str, img_size: int, in_chans: int, resize: bool = False,
                 flag: str = "--resize") -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """train, val and test of `spec` for a model of img_size x img_size x in_chans. A folder
    whose images are of another size or channel count is refused unless `resize` (the
    user's `flag`): farc never shrinks a user's images silently. Says on stderr what it uses.
    The bundled digits are resized to the model as before (their 8x8 size is documented)."""
    from farc.progress import log

    side, chans = native_shape(spec)
    model, own = describe_shape(img_size, in_chans), describe_shape(side, chans)
    if (side, chans) != (img_size, in_chans) and spec != "digits" and not resize:
        raise DataError(f"--data {spec} holds {own} images and the model takes {model}; "
                        f"pass {flag} to convert them to the model's size, or use a model "
                        f"of the data's size (farc teacher --data {spec} takes it from the "
                        "images)")
    how = "at their own size" if (side, chans) == (img_size, in_chans) else \
        f"converted from {own} to the model's {model}"
    log(f"data {spec}: {own} images, {how}")
    return tuple(load_split(spec, s, img_size=img_size, in_chans=in_chans) for s in SPLITS)


def num_classes(spec: str) -> int:
    """Number of classes of dataset `spec` (10 for digits, class subfolders for a folder)."""
    if spec == "digits":
        return 10
    return len(_class_names(_folder_root(Path(spec))))


def stratified_split(y: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices of a stratified 60/20/20 train/val/test split of labels `y`.

    Shuffled with `seed`, then split in two stages (60 / 40, then the 40 in halves), which
    is what scikit-learn's train_test_split does; digits gives 1078 / 359 / 360."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strat = y if np.bincount(y).min() >= 2 else None
    try:
        tr, rest = train_test_split(idx, test_size=0.4, stratify=strat, random_state=seed)
        strat_rest = y[rest] if strat is not None and np.bincount(y[rest]).min() >= 2 else None
        va, te = train_test_split(rest, test_size=0.5, stratify=strat_rest, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot split {len(y)} images into train/val/test: {exc}") from None
    return {"train": np.sort(tr), "val": np.sort(va), "test": np.sort(te)}


# ---------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0) * 2.0 - 1.0  # pixels 0..16 -> [-1, 1]
    return x.reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x, y = _digits_all()
    idx = stratified_split(y)[split]
    return torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy())


def _reshape(x: torch.Tensor, img_size: int | None, in_chans: int | None) -> torch.Tensor:
    """Resize (bilinear) and repeat channels so digits can feed a model of another shape."""
    import torch

    if img_size is not None and img_size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear",
                                            align_corners=False)
    if in_chans is not None and in_chans != x.shape[1]:
        if x.shape[1] != 1:
            raise DataError(f"cannot turn {x.shape[1]}-channel images into {in_chans} channels")
        x = x.repeat(1, in_chans, 1, 1)
    return x.contiguous()


# ---------------------------------------------------------------- folders


def _folder_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"dataset {str(root)!r} not found (expected 'digits' or a folder)")
    if not root.is_dir():
        raise DataError(f"dataset {str(root)!r} is not a folder")
    return root / "train" if _has_train_val(root) else root


def _has_train_val(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _class_names(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root}: no class subfolders")
    return names


def _list_images(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        sub = root / name
        if not sub.is_dir():
            continue
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in its class subfolders")
    return files, np.asarray(labels, dtype=np.int64)


def _folder_split(
    root: Path, split: str, img_size: int, in_chans: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """train/ and val/ subfolders when present (test = test/ if present, else val/);
    otherwise a stratified 60/20/20 split of all images with seed 0."""
    classes = _class_names(_folder_root(root))
    if _has_train_val(root):
        sub = {"train": "train", "val": "val"}.get(split)
        if sub is None:
            sub = "test" if (root / "test").is_dir() else "val"
        files, y = _list_images(root / sub, classes)
    else:
        files, y = _list_images(root, classes)
        idx = stratified_split(y)[split]
        files, y = [files[i] for i in idx], y[idx]
        if not files:
            raise DataError(f"{root}: split {split!r} is empty; the folder has too few images")
    check_memory(len(files) * in_chans * img_size**2 * 4,
                 f"{root}: {len(files):,} images of {in_chans}x{img_size}x{img_size}", DataError)
    x = np.empty((len(files), in_chans, img_size, img_size), np.float32)
    for i, f in enumerate(files):
        x[i] = _load_image(f, img_size, in_chans)
    import torch

    return torch.from_numpy(x), torch.from_numpy(y)


def _load_image(path: Path, img_size: int, in_chans: int) -> np.ndarray:
    """One image -> [C, img_size, img_size] float32, DeiT eval transform + ImageNet norm."""
    from PIL import Image, UnidentifiedImageError

    if in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 or 3 for image folders, got {in_chans}")
    try:
        with Image.open(path) as raw:  # reads the header only; pixels decode in convert()
            _check_pixels(path, raw.size)
            im = _resize_center_crop(raw.convert("RGB" if in_chans == 3 else "L"), img_size)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:  # PIL's own check, in open(), fired first
        raise DataError(f"{path}: image over the limit of {MAX_IMAGE_PIXELS:,} pixels "
                        f"({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    a = a.reshape(img_size, img_size, -1).transpose(2, 0, 1)
    mean = np.asarray(IMAGENET_MEAN if in_chans == 3 else [np.mean(IMAGENET_MEAN)], np.float32)
    std = np.asarray(IMAGENET_STD if in_chans == 3 else [np.mean(IMAGENET_STD)], np.float32)
    return ((a - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: image of {w}x{h} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels (farc.limits.MAX_IMAGE_PIXELS); "
                        "resize it first")


def _resize_center_crop(im, img_size: int):
    from PIL import Image

    short = max(img_size, round(img_size / CROP_PCT))
    w, h = im.size
    scale = short / min(w, h)
    im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                   Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return im.crop((left, top, left + img_size, top + img_size))
