"""DeiT (Touvron et al., 2021) for any image size, patch size, width, depth and heads.

Parameter and buffer names follow timm's `VisionTransformer` exactly (cls_token, pos_embed,
patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head), so a
timm or facebookresearch state dict loads with `load_state_dict` and no renaming. Attention is
written out (softmax(QK^T/sqrt(d))V) rather than fused, because FAR distillation needs each
head's output before `attn.proj`, and the compiler needs the activation x activation matmuls
visible."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DeiTConfig:
    """Shape of a DeiT. Defaults are DeiT-Tiny/16 at 224x224 for ImageNet-1k."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Sequence length: CLS + patches."""
        return self.num_patches + 1

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        from farc.errors import ConfigError

        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )


DEIT_PRESETS: dict[str, DeiTConfig] = {
    "deit_tiny_patch16_224": DeiTConfig(embed_dim=192, num_heads=3),
    "deit_small_patch16_224": DeiTConfig(embed_dim=384, num_heads=6),
    "deit_base_patch16_224": DeiTConfig(embed_dim=768, num_heads=12),
    # The embedded default: 8x8 grey digits, 2x2 patches -> 16 patches + CLS = 17 tokens.
    "deit_digits": DeiTConfig(
        img_size=8, patch_size=2, in_chans=1, num_classes=10,
        embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
    ),
    # A small 3-head digits shape (DeiT-Tiny's head count; 4x4 patches -> 5 tokens) for
    # importing and testing reference-implementation FAR checkpoints (docs/import-far.md).
    "deit_digits_3h": DeiTConfig(
        img_size=8, patch_size=4, in_chans=1, num_classes=10,
        embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0,
    ),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens; a conv whose stride equals its kernel, i.e. a matmul."""

    def __init__(self, cfg: DeiTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention; `heads_out` returns softmax(QK^T)V per head, before proj."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def heads_out(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, H, d]: each head's attention output before the projection."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return (attn @ v).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.heads_out(x)
        return self.proj(heads.flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: DeiTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        heads = self.attn.heads_out(self.norm1(x))
        if collect is not None:
            collect.append(heads)
        x = x + self.attn.proj(heads.flatten(2))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    """timm-compatible DeiT without distillation token; classifies from the CLS token."""

    kind = "deit"

    def __init__(self, cfg: DeiTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> tokens [B, N, D] with CLS and position embedding."""
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)[:, 0])

    def forward(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        """Logits; when `collect` is a list, each block appends its per-head outputs to it."""
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x, collect)
        return self.classify(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
