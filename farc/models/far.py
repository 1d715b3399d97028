"""FAR (arXiv 2505.21535): DeiT whose attention is replaced by multi-head bidirectional LSTMs.

FAR block: x + post_proj(head_proj(BiLSTM_heads(pre_proj(norm1(x))))), then DeiT's MLP.
Head h reads channels h*d..(h+1)*d of pre_proj's output and runs its own forward and
backward LSTM (PyTorch gate order i, f, g, o). Each head and direction has its own hidden
size, stored in the config, so a pruned model is physically smaller rather than masked.
`head_proj[h]` maps [fwd_h ; bwd_h] -> d, and `post_proj` is the teacher's `attn.proj`.

The backward LSTM runs on the time-reversed sequence and its output is reversed back, which
is what a bidirectional LSTM does and what ONNX's direction="reverse" means."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from farc.errors import ConfigError
from farc.models.deit import DeiT, DeiTConfig, Mlp, PatchEmbed, _init_weights


@dataclass(frozen=True)
class FARConfig:
    """A DeiT shape plus the LSTM hidden sizes: hidden[block][head] = (fwd, bwd)."""

    deit: DeiTConfig = field(default_factory=DeiTConfig)
    hidden: tuple[tuple[tuple[int, int], ...], ...] = ()

    @staticmethod
    def dense(deit: DeiTConfig, hidden: int | None = None) -> FARConfig:
        """Unpruned FAR: every head and direction has `hidden` units (default: head dim)."""
        h = hidden or deit.head_dim
        return FARConfig(deit, tuple(((h, h),) * deit.num_heads for _ in range(deit.depth)))

    def validate(self) -> None:
        self.deit.validate()
        if len(self.hidden) != self.deit.depth:
            raise ConfigError(f"FAR hidden sizes cover {len(self.hidden)} blocks, "
                              f"model has {self.deit.depth}")
        for i, blk in enumerate(self.hidden):
            if len(blk) != self.deit.num_heads:
                raise ConfigError(f"block {i}: {len(blk)} heads of hidden sizes, "
                                  f"model has {self.deit.num_heads}")
            for h, (f, b) in enumerate(blk):
                if f < 1 or b < 1:
                    raise ConfigError(f"block {i} head {h}: hidden sizes must be >= 1, "
                                      f"got ({f}, {b})")

    def to_dict(self) -> dict:
        return {"deit": asdict(self.deit), "hidden": [[list(p) for p in b] for b in self.hidden]}

    @staticmethod
    def from_dict(d: dict) -> FARConfig:
        hidden = tuple(tuple((int(f), int(b)) for f, b in blk) for blk in d["hidden"])
        return FARConfig(DeiTConfig(**d["deit"]), hidden)

    @property
    def lstm_units(self) -> int:
        """Total LSTM hidden units over blocks, heads and directions."""
        return sum(f + b for blk in self.hidden for f, b in blk)


class FARMixer(nn.Module):
    """The token mixer replacing attention: pre_proj, per-head BiLSTM, head_proj, post_proj."""

    def __init__(self, dim: int, num_heads: int, sizes: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        d = self.head_dim
        self.pre_proj = nn.Linear(dim, dim)
        self.lstm_fwd = nn.ModuleList(nn.LSTM(d, f, batch_first=True) for f, _ in sizes)
        self.lstm_bwd = nn.ModuleList(nn.LSTM(d, b, batch_first=True) for _, b in sizes)
        self.head_proj = nn.ModuleList(nn.Linear(f + b, d) for f, b in sizes)
        self.post_proj = nn.Linear(dim, dim)

    def heads_out(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, N, H, d]: each head's head_proj output (the distillation target)."""
        x = self.pre_proj(x)
        d = self.head_dim
        outs = []
        for h in range(self.num_heads):
            xh = x[:, :, h * d : (h + 1) * d]
            fwd, _ = self.lstm_fwd[h](xh)
            bwd, _ = self.lstm_bwd[h](xh.flip(1))
            outs.append(self.head_proj[h](torch.cat([fwd, bwd.flip(1)], dim=-1)))
        return torch.stack(outs, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_proj(self.heads_out(x).flatten(2))

    def distilled_parameters(self) -> list[nn.Parameter]:
        """pre_proj, LSTMs and head_proj: what block-wise distillation trains (post_proj is
        the teacher's attn.proj and stays)."""
        return [p for mod in (self.pre_proj, self.lstm_fwd, self.lstm_bwd, self.head_proj)
                for p in mod.parameters()]


class FARBlock(nn.Module):
    def __init__(self, cfg: DeiTConfig, sizes: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.far = FARMixer(cfg.embed_dim, cfg.num_heads, sizes)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, collect: list | None = None) -> torch.Tensor:
        heads = self.far.heads_out(self.norm1(x))
        if collect is not None:
            collect.append(heads)
        x = x + self.far.post_proj(heads.flatten(2))
        return x + self.mlp(self.norm2(x))


class FAR(nn.Module):
    """The FAR student. Non-mixer names match DeiT's, so shared weights copy by name."""

    kind = "far"

    def __init__(self, cfg: FARConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.deit
        self.patch_embed = PatchEmbed(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, d.num_tokens, d.embed_dim))
        self.blocks = nn.ModuleList(FARBlock(d, sizes) for sizes in cfg.hidden)
        self.norm = nn.LayerNorm(d.embed_dim, eps=d.ln_eps)
        self.head = nn.Linear(d.embed_dim, d.num_classes)
        self.apply(_init_weights)

    embed = DeiT.embed
    classify = DeiT.classify

    def forward(self, x: torch.Tensor, collect: list | None = None,
                block_inputs: list[torch.Tensor] | None = None):
        """Logits; when `collect` is a list, each block appends its per-head outputs to it.

        With `block_inputs` (one [B, N, D] mixer input per block, e.g. the teacher's
        norm1(x_b)), the model is teacher-forced instead: it returns each block's per-head
        outputs [B, N, H, d] computed from that input, blocks independent of each other
        (block-wise distillation; going through forward keeps DDP's gradient sync)."""
        if block_inputs is not None:
            return [blk.far.heads_out(inp) for blk, inp in zip(self.blocks, block_inputs)]
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x, collect)
        return self.classify(x)

    @classmethod
    def from_teacher(cls, teacher: DeiT, hidden: int | None = None) -> FAR:
        """A FAR student sharing every non-attention weight of `teacher`.

        Copied: patch embedding, CLS and position embeddings, norms, MLPs, the classifier,
        and post_proj = attn.proj. pre_proj, the LSTMs and head_proj start fresh."""
        student = cls(FARConfig.dense(teacher.cfg, hidden))
        src = teacher.state_dict()
        dst = student.state_dict()
        for name in dst:
            key = name.replace(".far.post_proj.", ".attn.proj.")
            if key in src and src[key].shape == dst[name].shape:
                dst[name] = src[key].clone()
        student.load_state_dict(dst)
        return student

    def trainable_mixer_parameters(self) -> list[nn.Parameter]:
        """pre_proj, LSTMs and head_proj of every block: what block-wise distillation trains."""
        return [p for blk in self.blocks for p in blk.far.distilled_parameters()]
