"""Safe, self-describing model checkpoints (format: docs/checkpoints.md).

A checkpoint is one safetensors file. Its tensors are the model's state dict; its string
metadata holds the format name and version, the model kind, the config (JSON), the
provenance (JSON) and a sha256 over the tensors. safetensors never executes code on load,
so a checkpoint from a stranger is safe to open; the digest and the config-vs-shape check
catch files that were edited after saving. Every way a file can be wrong ends in a one-line
`CheckpointError` that names the file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from farc.atomic import atomic_write, check_writable  # noqa: F401  (re-exported)
from farc.errors import CheckpointError, FarcError
from farc.models.registry import MODEL_KINDS, build_model, model_config

FORMAT_NAME = "farc-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model is rebuilt from `config` and put in eval mode."""

    kind: str
    config: dict
    model: nn.Module
    provenance: dict = field(default_factory=dict)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Names and shapes are hashed too, so renaming or reshaping a tensor changes the digest."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, provenance: dict) -> None:
    """Write `model` (a DeiT or FAR) and `provenance` to `path` atomically.

    `provenance` must be JSON-able (teacher path, metrics, seed, ...); it is stored verbatim."""
    from safetensors.torch import save_file

    kind = getattr(model, "kind", None)
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"cannot save a {type(model).__name__}: not a farc model")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        prov = json.dumps(provenance, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"provenance is not JSON-able: {exc}") from None
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(model_config(model), sort_keys=True),
        "provenance": prov,
        "weights_sha256": weights_digest(state),
    }
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_checkpoint(path: str | os.PathLike, expect: str | None = None) -> Checkpoint:
    """Load and validate a checkpoint; `expect` ('deit' or 'far') rejects the other kind."""
    path = Path(path)
    meta, state = _read(path)
    _check_header(path, meta)
    kind = meta["kind"]
    if expect is not None and kind != expect:
        raise CheckpointError(f"{path}: holds a {kind} model, expected {expect}")
    if weights_digest(state) != meta.get("weights_sha256"):
        raise CheckpointError(f"{path}: weights do not match their stored sha256 (file tampered)")
    config = _json_field(path, meta, "config")
    provenance = _json_field(path, meta, "provenance")
    model = _build(path, kind, config, state)
    return Checkpoint(kind=kind, config=config, model=model.eval(), provenance=provenance)


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metadata and tensors, with every I/O or parse failure turned into CheckpointError."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    _refuse_torch_save(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except FarcError:
        raise
    except Exception as exc:  # safetensors raises its own error types; all mean "bad file"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable farc checkpoint (truncated or corrupt: {msg})"
        ) from None
    return meta, state


def _refuse_torch_save(path: Path) -> None:
    """A torch.save file (zip or raw pickle) gets a pointer to the importer, not a parse error."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return
    if head[:4] == b"PK\x03\x04" and _is_tile_program(path):
        raise CheckpointError(f"{path}: is a farc tile program (.farc), not a checkpoint; "
                              "give the .pt checkpoint it was compiled from")
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: is a torch.save/pickle file, not a farc checkpoint; import timm or "
            "facebookresearch weights with farc.models.loading.load_deit_state_dict, FAR "
            "checkpoints of the paper's reference code with `farc import-far`"
        )


def _is_tile_program(path: Path) -> bool:
    """A zip whose first member is manifest.json: a `.farc` written by farc.runtime.program."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()[:1] == ["manifest.json"]
    except (zipfile.BadZipFile, OSError):
        return False


def _check_header(path: Path, meta: dict) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a farc checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this farc reads version {FORMAT_VERSION})"
        )
    if meta.get("kind") not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {meta.get('kind')!r}")


def _json_field(path: Path, meta: dict, key: str) -> dict:
    try:
        value = json.loads(meta[key])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: metadata field {key!r} is missing or not JSON") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata field {key!r} is not a JSON object")
    return value


def _build(path: Path, kind: str, config: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the model from its config and load the weights, strictly.

    The model is built on the meta device (no memory, no random init: DeiT-B's init alone
    takes seconds) and the loaded tensors are assigned into it."""
    try:
        with torch.device("meta"):
            model = build_model(kind, config)
    except FarcError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the {kind} config: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}"
        )
    for name, t in expected.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"config says {tuple(t.shape)}"
            )
    model.load_state_dict(state, assign=True)
    return model


def _short(names: list[str], limit: int = 5) -> str:
    """At most `limit` names, so the error stays one readable line."""
    if not names:
        return "none"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks: what provenance records of the
    checkpoint a run started from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
