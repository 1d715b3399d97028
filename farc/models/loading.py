"""Load timm / facebookresearch DeiT weights from a local file into `farc.models.deit.DeiT`.

Accepted files: a `.safetensors` file (timm's hub format), or a `.pth`/`.pt` file read with
`torch.load(weights_only=True)` (never unpickling code), holding either the state dict or
facebookresearch's `{"model": state_dict}` wrapper (also `{"state_dict": ...}`; a DDP
`module.` prefix is stripped). farc's DeiT uses timm's parameter names, so no renaming is
needed. The config is inferred from tensor shapes (embed dim, depth, patch size, channels,
classes, MLP ratio, image size from the token count); the number of heads is not visible
in any shape, so it comes from `config` (a preset name or DeiTConfig), `num_heads`, or
DeiT's convention of 64-dim heads."""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from farc.errors import CheckpointError
from farc.models.deit import DEIT_PRESETS, DeiT, DeiTConfig

DEIT_HEAD_DIM = 64


def load_deit_state_dict(
    path: str | os.PathLike, config: DeiTConfig | str | None = None,
    num_heads: int | None = None,
) -> DeiT:
    """A DeiT (eval mode) with the weights of a timm/facebookresearch state-dict file.

    config: a preset name from DEIT_PRESETS or a DeiTConfig to check the file against;
    None infers the shape from the file. num_heads overrides the head count."""
    path = Path(path)
    named = None if config is None else _named_config(config)
    state = read_state_dict(path)
    cfg = infer_deit_config(state, path) if named is None else named
    if num_heads is not None:
        cfg = replace(cfg, num_heads=num_heads)
    with torch.device("meta"):  # no memory and no random init; the file's tensors go in
        model = DeiT(cfg)
    _check_keys(path, model.state_dict(), state)
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, assign=True)
    return model.eval()


def _looks_safetensors(path: Path) -> bool:
    """safetensors whatever the suffix: an 8-byte header length, then the JSON header."""
    with open(path, "rb") as f:
        return f.read(9)[8:9] == b"{"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The raw state dict of a .safetensors or .pth file, unwrapped, without unpickling."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such state-dict file")
    if path.suffix == ".safetensors" or _looks_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                farc_ckpt = (f.metadata() or {}).get("format") == "farc-checkpoint"
                obj = {} if farc_ckpt else {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        if farc_ckpt:
            raise CheckpointError(f"{path}: is a farc checkpoint, not a timm/facebookresearch "
                                  "state dict; farc commands take it as it is")
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and weights-only refusals all mean "bad file"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path}: cannot read it as a weights-only torch file ({first})"
            ) from None
    return _unwrap(path, obj)


def infer_deit_config(
    state: dict[str, torch.Tensor], path: Path | str = "state dict"
) -> DeiTConfig:
    """DeiTConfig from tensor shapes; heads follow DeiT's 64-dim-head convention."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight",
            "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot infer a DeiT config, missing {', '.join(missing)}")
    dim = state["cls_token"].shape[-1]
    _, chans, patch, _ = state["patch_embed.proj.weight"].shape
    side = math.isqrt(state["pos_embed"].shape[1] - 1)
    if side * side != state["pos_embed"].shape[1] - 1:
        raise CheckpointError(f"{path}: pos_embed has {state['pos_embed'].shape[1]} tokens, "
                              "not CLS + a square grid (distilled DeiT is not supported)")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = dim // DEIT_HEAD_DIM if dim % DEIT_HEAD_DIM == 0 else 1
    return DeiTConfig(
        img_size=side * patch, patch_size=patch, in_chans=chans,
        num_classes=state["head.weight"].shape[0], embed_dim=dim, depth=depth, num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    )


def _named_config(config: DeiTConfig | str) -> DeiTConfig:
    if isinstance(config, DeiTConfig):
        return config
    if config not in DEIT_PRESETS:
        raise CheckpointError(f"unknown DeiT preset {config!r}; expected one of "
                              f"{', '.join(DEIT_PRESETS)}")
    return DEIT_PRESETS[config]


def _unwrap(path: Path, obj: object) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_keys(path: Path, expected: dict, state: dict) -> None:
    """One error that lists every missing key, unexpected key and shape mismatch."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing, ', ')}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected, ', ')}")
        if shapes:
            parts.append(f"shape mismatches (file vs model): {_listed(shapes, '; ')}")
        raise CheckpointError(f"{path}: not a DeiT state dict of this shape; {'; '.join(parts)}")


def _listed(items: list[str], sep: str, limit: int = 12) -> str:
    """Up to `limit` items and a count of the rest, so a wholly wrong file stays readable."""
    more = f"{sep}... (+{len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more
