"""Function preservation: how closely each FAR head reproduces its attention head.

For every block b and head h, the student's head_proj output is compared with the teacher's
per-head attention output softmax(QK^T)V (before attn.proj), token by token, on held-out
images, in two ways:

- `forced`: the student block reads the teacher's own block input (teacher forcing, what
  block-wise distillation trains); this measures each block on its own.
- `free`: both models run end to end on their own activations (what inference sees); each
  block's figure then includes the drift of the blocks before it.

Two figures per head: `cosine`, the cosine similarity over the head's d channels averaged
over images and tokens, and `rel_mse`, sum (s - t)^2 / sum t^2 over the split (0 is a
perfect copy; 1 is what an all-zero output scores).

`markdown_table` and `heatmap` render the measurements taken before and after each stage
(farc.far.distill.run_distill stores them in the student's provenance)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from farc import distributed as D

MODES = ("forced", "free")
METRICS = ("cosine", "rel_mse")


def teacher_blocks(teacher: nn.Module, x: torch.Tensor):
    """Run the DeiT teacher on `x`; each block's mixer input norm1(x_b), each block's
    per-head attention output [B, N, H, d], and the logits."""
    inputs: list[torch.Tensor] = []
    heads: list[torch.Tensor] = []
    z = teacher.embed(x)
    for blk in teacher.blocks:
        inp = blk.norm1(z)
        out = blk.attn.heads_out(inp)
        inputs.append(inp)
        heads.append(out)
        z = z + blk.attn.proj(out.flatten(2))
        z = z + blk.mlp(blk.norm2(z))
    return inputs, heads, teacher.classify(z)


def forced_heads(student: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each student block's head outputs from the teacher's block input (teacher forcing)."""
    return [blk.far.heads_out(inp) for blk, inp in zip(student.blocks, inputs)]


def _sums(s_heads, t_heads) -> torch.Tensor:
    """[blocks, heads, 3]: sum of token cosines, sum of squared errors, sum of t^2."""
    rows = []
    for s, t in zip(s_heads, t_heads):
        cos = F.cosine_similarity(s, t, dim=-1).sum((0, 1))
        err = ((s - t) ** 2).sum((0, 1, 3))
        ref = (t**2).sum((0, 1, 3))
        rows.append(torch.stack([cos, err, ref], -1))
    return torch.stack(rows).double().cpu()


@torch.no_grad()
def measure(student: nn.Module, teacher: nn.Module, x: torch.Tensor, world: D.World,
            batch: int = 256) -> dict:
    """Per-head cosine and relative MSE, forced and free, over all of `x` (each rank its
    shard). Returns {mode: {metric: [[per head] per block]}}."""
    was = student.training
    student.eval()
    teacher.eval()
    idx = D.shard(len(x), world)
    sums = {m: None for m in MODES}
    for i in range(0, len(idx), batch):
        xb = x[idx[i : i + batch]].to(world.device)
        inputs, t_heads, _ = teacher_blocks(teacher, xb)
        free: list[torch.Tensor] = []
        student(xb, collect=free)
        for mode, s_heads in (("forced", forced_heads(student, inputs)), ("free", free)):
            got = _sums(s_heads, t_heads)
            sums[mode] = got if sums[mode] is None else sums[mode] + got
    student.train(was)
    return {mode: _finish(sums[mode], len(idx), student, world) for mode in MODES}


def _finish(sums: torch.Tensor | None, n_images: int, student: nn.Module,
            world: D.World) -> dict:
    depth, heads = len(student.blocks), student.cfg.deit.num_heads
    flat = sums.flatten().tolist() if sums is not None else [0.0] * (depth * heads * 3)
    tot = torch.tensor(D.all_sum([*flat, float(n_images)], world), dtype=torch.float64)
    s = tot[:-1].reshape(depth, heads, 3)
    n_tok = tot[-1] * student.cfg.deit.num_tokens
    return {"cosine": (s[..., 0] / n_tok.clamp(min=1)).tolist(),
            "rel_mse": (s[..., 1] / s[..., 2].clamp(min=1e-30)).tolist()}


def worst(match: dict, mode: str = "free") -> dict:
    """Lowest cosine and highest relative MSE over every head of every block."""
    m = match[mode]
    return {"min_cosine": min(min(r) for r in m["cosine"]),
            "max_rel_mse": max(max(r) for r in m["rel_mse"])}


def markdown_table(stages: list[dict]) -> str:
    """One row per (block, head); cosine and relative MSE after each stage, free and forced.

    `stages` is [{"after": name, "forced": {...}, "free": {...}}, ...] as `measure` gives."""
    names = [s["after"] for s in stages]
    cols = [f"{mode} {metric} ({name})" for mode in MODES for metric in ("cos", "rMSE")
            for name in names]
    lines = ["| block | head | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    depth = len(stages[0]["free"]["cosine"])
    heads = len(stages[0]["free"]["cosine"][0])
    for b in range(depth):
        for h in range(heads):
            cells = [f"{s[mode][metric][b][h]:.3f}" for mode in MODES
                     for metric in METRICS for s in stages]
            lines.append(f"| {b} | {h} | " + " | ".join(cells) + " |")
    summary = ["", "| after | free: min cos | free: max rMSE | forced: min cos | "
                   "forced: max rMSE |", "|---|---|---|---|---|"]
    for s in stages:
        f, t = worst(s, "free"), worst(s, "forced")
        summary.append(f"| {s['after']} | {f['min_cosine']:.3f} | {f['max_rel_mse']:.3f} | "
                       f"{t['min_cosine']:.3f} | {t['max_rel_mse']:.3f} |")
    return "\n".join(lines + summary) + "\n"


def heatmap(stages: list[dict], path: str | Path) -> Path:
    """PNG: rows (free cosine, free rMSE, forced cosine, forced rMSE) x one column per
    measurement point; each panel is blocks x heads with the value written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(mode, metric) for mode in ("free", "forced") for metric in METRICS]
    depth = len(stages[0]["free"]["cosine"])
    heads = len(stages[0]["free"]["cosine"][0])
    fig, axes = plt.subplots(len(rows), len(stages), squeeze=False,
                             figsize=(1.0 + 0.55 * heads * len(stages), 0.5 * depth * 4 + 1.5))
    for r, (mode, metric) in enumerate(rows):
        lo, hi, cmap = (0.0, 1.0, "viridis") if metric == "cosine" else (0.0, 1.0, "magma_r")
        for c, stage in enumerate(stages):
            ax = axes[r][c]
            data = torch.tensor(stage[mode][metric]).numpy()
            ax.imshow(data.clip(lo, hi), vmin=lo, vmax=hi, cmap=cmap, aspect="auto")
            for b in range(depth):
                for h in range(heads):
                    v = data[b, h]
                    dark = (v > 0.6) if metric == "cosine" else (v < 0.4)
                    ax.text(h, b, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if dark else "white")
            ax.set_xticks(range(heads))
            ax.set_yticks(range(depth))
            ax.set_title(f"{mode} {metric}\nafter {stage['after']}", fontsize=8)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("block", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    from farc.atomic import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
