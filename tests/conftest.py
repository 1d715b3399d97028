"""Shared, cheap session fixtures: random-weight digits-shaped DeiT, FAR and pruned FAR, and
their checkpoints in a session temp dir. Random weights are enough for every format and
numerics check; tests that need a trained model train their own tiny one on purpose."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from farc.models.checkpoint import FORMAT_VERSION, weights_digest
from farc.models.deit import DEIT_PRESETS, DeiT
from farc.models.far import FAR, FARConfig

DIGITS = DEIT_PRESETS["deit_digits"]
# A "pruned" FAR for deit_digits (4 blocks x 4 heads, head dim 16): every head and direction
# has its own hidden size, including 1 and the full 16.
UNEQUAL_HIDDEN = (
    ((5, 9), (16, 3), (1, 2), (7, 7)),
    ((2, 11), (3, 4), (16, 16), (9, 1)),
    ((4, 4), (8, 2), (1, 1), (12, 6)),
    ((16, 1), (2, 15), (6, 10), (3, 3)),
)


@pytest.fixture(scope="session")
def deit_digits() -> DeiT:
    torch.manual_seed(0)
    return DeiT(DIGITS).eval()


@pytest.fixture(scope="session")
def far_digits(deit_digits) -> FAR:
    torch.manual_seed(1)
    return FAR.from_teacher(deit_digits).eval()


@pytest.fixture(scope="session")
def pruned_far_digits() -> FAR:
    torch.manual_seed(2)
    return FAR(FARConfig(DIGITS, UNEQUAL_HIDDEN)).eval()


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def deit_checkpoint(ckpt_dir, deit_digits):
    from farc.models.checkpoint import save_checkpoint

    path = ckpt_dir / "deit.pt"
    save_checkpoint(path, deit_digits, {"note": "random deit_digits", "seed": 0})
    return path


@pytest.fixture(scope="session")
def far_checkpoint(ckpt_dir, far_digits):
    from farc.models.checkpoint import save_checkpoint

    path = ckpt_dir / "far.pt"
    save_checkpoint(path, far_digits, {"note": "random FAR from deit_digits", "seed": 1})
    return path


@pytest.fixture(scope="session")
def pruned_far_checkpoint(ckpt_dir, pruned_far_digits):
    from farc.models.checkpoint import save_checkpoint

    path = ckpt_dir / "far_pruned.pt"
    save_checkpoint(path, pruned_far_digits, {"note": "random FAR, unequal hidden sizes"})
    return path


@pytest.fixture(scope="session")
def bad_checkpoints(deit_checkpoint, tmp_path_factory) -> dict:
    """name -> (path, regex of the expected CheckpointError): every way a file can be bad."""
    return _bad_files(deit_checkpoint, tmp_path_factory.mktemp("bad_checkpoints"))


def _rewrite(src, dst, *, meta=None, tensors=None, redigest=True) -> None:
    """Copy checkpoint src to dst with edited metadata / tensors (a deliberate tamper)."""
    with safe_open(str(src), framework="pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    m.update(meta or {})
    t.update(tensors or {})
    if redigest:
        m["weights_sha256"] = weights_digest(t)
    save_file(t, str(dst), metadata=m)


def _bad_files(src, d) -> dict:
    """name -> (path, expected error regex); every way a checkpoint can be wrong."""
    data = src.read_bytes()
    out = {}
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    out["truncated"] = (d / "truncated.pt", "truncated or corrupt")
    (d / "garbage.pt").write_bytes(b"\x89 this is not a checkpoint \x00" * 40)
    out["garbage"] = (d / "garbage.pt", "truncated or corrupt")
    (d / "empty.pt").write_bytes(b"")
    out["empty"] = (d / "empty.pt", "truncated or corrupt")
    flipped = bytearray(data)
    flipped[-7] ^= 0x5A  # a byte inside the last tensor
    (d / "bitflip.pt").write_bytes(bytes(flipped))
    out["bitflip"] = (d / "bitflip.pt", r"do not match their stored sha256 \(file tampered\)")
    _rewrite(src, d / "version.pt", meta={"format_version": str(FORMAT_VERSION + 1)})
    out["version"] = (d / "version.pt", f"format version '{FORMAT_VERSION + 1}' is not supported")
    _rewrite(src, d / "foreign.pt", meta={"format": "something-else"})
    out["foreign"] = (d / "foreign.pt", "not a farc checkpoint")
    cfg = json.loads(_meta(src)["config"])
    cfg["embed_dim"] = 32
    cfg["num_heads"] = 2
    _rewrite(src, d / "config.pt", meta={"config": json.dumps(cfg)})
    out["config_vs_shape"] = (d / "config.pt", r"tensor \S+ has shape \(.*\), config says")
    _rewrite(src, d / "extra.pt", tensors={"blocks.9.extra": torch.zeros(2)})
    out["extra_tensor"] = (d / "extra.pt", "unexpected blocks.9.extra")
    out["missing"] = (d / "nope.pt", "no such checkpoint file")
    torch.save({"model": {"w": torch.zeros(2)}}, d / "torch_save.pt")
    out["torch_save"] = (d / "torch_save.pt", "is a torch.save/pickle file, not a farc checkpoint")
    return out


def _meta(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


