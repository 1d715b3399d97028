"""FAR conversion: block-wise distillation of a DeiT teacher, then end-to-end fine-tuning.

FAR.from_teacher replaces every attention block; the student shares every other weight.

Stage 1 ("blockwise", teacher forcing): each FAR block reads the teacher's own block input
norm1(x_b) and learns to reproduce that block's per-head attention output softmax(QK^T)V;
loss = sum over blocks and heads of a per-head similarity (relative MSE, or 1 - cosine over
the head dimension). Only pre_proj, the LSTMs and head_proj train; each block's loss
depends on its own parameters only and gradients are clipped per block, so the blocks
train exactly as they would one at a time (or in separate processes).

Stage 2 ("finetune") runs the student end to end on its own activations and trains every
parameter on CE + (with `kd`) KL(teacher || student) at temperature `kd_temperature`
+ sim_weight * the same per-head similarity, so the heads keep matching the teacher's
while the blocks learn to work together.

The resumable, torchrun-aware training engine (`Run`) lives here too; farc.far.prune reuses it.
Checkpoint state is written atomically after every epoch; `--resume` picks it up (stage,
epoch, weights, optimizer, scheduler, RNG). Batches are sharded with DistributedSampler
seeded by (seed, epoch) and augmentation shifts by (seed, epoch, rank), so an interrupted
and resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from farc import distributed as D
from farc.errors import CheckpointError, ConfigError
from farc.far.preservation import measure, teacher_blocks, worst
from farc.models.far import FAR, FARConfig

Split = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SIMILARITIES = ("mse", "cosine")
STATE_VERSION = 1


# ---------------------------------------------------------------- engine


@dataclass(frozen=True)
class TrainOptions:
    """Optimiser and loop settings shared by every stage of a run."""

    batch_size: int = 16
    """Global batch size; each of N processes takes batch_size // N. Small on purpose: the
    digits runs are step-bound (68 steps an epoch learn far faster than 17)."""
    weight_decay: float = 0.05
    warmup: float = 0.1
    """Share of each stage's steps spent in linear warmup before the cosine decay."""
    grad_clip: float = 1.0
    shift: int = 1
    """Random translation in pixels (farc.far.train.random_shift); 0 disables it."""
    seed: int = 0
    eval_batch: int = 256

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")


def check_rates(**rates: float) -> None:
    """Learning rates must be finite and > 0 (a NaN or negative rate trains garbage silently)."""
    for name, value in rates.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be finite and > 0, got {value}")


@dataclass
class Stage:
    """One training stage: which parameters learn, with which loss, for how long."""

    name: str
    epochs: int
    lr: float
    loss: LossFn
    params: Callable[[nn.Module], list[nn.Parameter]]
    groups: Callable[[nn.Module], list[list[nn.Parameter]]] | None = None
    """Parameter groups clipped separately (default: all `params` as one). Block-wise
    distillation clips each block on its own, so blocks train exactly as they would alone."""


@dataclass
class Run:
    """A resumable multi-stage training run whose state lives beside its output file.

    `extra` holds pipeline facts that must survive a restart (e.g. which units pruning
    removed); `history` one dict per finished epoch."""

    world: D.World
    train: Split
    val: Split
    opts: TrainOptions
    state_path: Path
    args: dict
    state: dict | None = None
    extra: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def resume(self) -> None:
        """Load the saved state (if any), so `model_from_state` and `fit` continue it."""
        if not self.state_path.exists():
            if self.world.is_main:
                from farc.progress import log

                log(f"no resume state at {self.state_path}; starting from scratch")
            return
        self.state = load_state(self.state_path)
        for key in ("seed", "similarity", "teacher", "student"):
            if key in self.args and self.state["args"].get(key) != self.args[key]:
                raise ConfigError(f"--resume: state {self.state_path} was made with {key}="
                                  f"{self.state['args'].get(key)!r}, this run has "
                                  f"{self.args[key]!r}")
        self.extra = dict(self.state["extra"])
        self.history = list(self.state["history"])
        torch.set_rng_state(self.state["rng"])

    def model_from_state(self, default: FAR) -> FAR:
        """The saved model (any size) when resuming, else `default`."""
        if self.state is None:
            return default
        model = FAR(FARConfig.from_dict(self.state["config"]))
        model.load_state_dict(self.state["model"])
        return model.to(next(default.parameters()).device)

    def done(self, index: int) -> bool:
        """Whether stage `index` already finished in the resumed state."""
        s = self.state
        return s is not None and (s["stage"] > index)

    def fit(self, model: nn.Module, stage: Stage, index: int) -> None:
        """Train `model` in place through the remaining epochs of stage `index`."""
        if stage.epochs <= 0 or self.done(index):
            return
        params = _select(model, stage.params(model))
        clip = stage.groups(model) if stage.groups else [params]
        ddp = D.wrap(model, self.world)
        steps = self._steps_per_epoch()
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=self.opts.weight_decay)
        from farc.far.train import warmup_cosine

        total = stage.epochs * steps
        sched = warmup_cosine(opt, total, max(1, round(self.opts.warmup * total)))
        start = self._restore(index, opt, sched)
        bar, task = self._progress(stage, start * steps, total)
        try:
            for epoch in range(start, stage.epochs):
                loss, acc = self._epoch(ddp, stage, opt, sched, clip, epoch, bar, task)
                val = accuracy(model, *self.val, self.world, self.opts.eval_batch)
                rec = {"stage": stage.name, "epoch": epoch + 1, "loss": loss,
                       "train_acc": acc, "val_acc": val}
                self.history.append(rec)
                self._save(model, index, epoch + 1, stage.epochs, opt, sched)
                self._log(bar, task, rec, stage.epochs)
        finally:
            if bar is not None:
                bar.stop()
        self.state = None  # later stages start fresh
        for p in model.parameters():
            p.requires_grad_(True)

    def _steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.train[0]) / self.world.size)
        return math.ceil(per_rank / self._local_batch())

    def _local_batch(self) -> int:
        return max(1, self.opts.batch_size // self.world.size)

    def _restore(self, index: int, opt, sched) -> int:
        """Epoch to start at; loads optimizer/scheduler state when resuming this stage."""
        s = self.state
        if s is None or s["stage"] != index or int(s["epoch"]) == 0:
            return 0
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        return int(s["epoch"])

    def _epoch(self, ddp, stage, opt, sched, clip, epoch, bar, task) -> tuple[float, float | None]:
        """One pass over this rank's shard; loss and accuracy averaged over all ranks
        (accuracy None for a stage whose loss gives no student logits)."""
        from farc.far.train import random_shift

        x, y = self.train
        ddp.train()
        sampler = D.sampler(len(x), self.world, shuffle=True, seed=self.opts.seed)
        sampler.set_epoch(epoch)
        idx_all = torch.tensor(list(sampler))
        gen = torch.Generator().manual_seed(_mix(self.opts.seed, epoch, self.world.rank))
        dev = self.world.device
        sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
        for i in range(0, len(idx_all), self._local_batch()):
            idx = idx_all[i : i + self._local_batch()]
            xb = random_shift(x[idx], self.opts.shift, gen).to(dev)
            yb = y[idx].to(dev)
            loss, logits = stage.loss(ddp, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.opts.grad_clip:
                for group in clip:
                    nn.utils.clip_grad_norm_(group, self.opts.grad_clip)
            opt.step()
            sched.step()
            sums[0] += loss.item() * len(idx)
            if logits is not None:
                sums[1] += (logits.argmax(-1) == yb).sum().item()
            sums[2] += len(idx)
            if bar is not None:
                bar.update(task, advance=1, info=f"loss {sums[0] / sums[2]:.3f}")
        tot = D.all_sum(sums, self.world)
        return tot[0] / tot[2], (tot[1] / tot[2] if logits is not None else None)

    def _progress(self, stage: Stage, done: int, total: int):
        if not self.world.is_main:
            return None, None
        from farc.progress import make_progress

        bar = make_progress()
        bar.start()
        task = bar.add_task(stage.name, total=total, completed=done, info="")
        return bar, task

    def _log(self, bar, task, rec: dict, epochs: int) -> None:
        if not self.world.is_main:
            return
        from farc.progress import log

        train = "" if rec["train_acc"] is None else f"train {rec['train_acc']:.1%} "
        info = f"loss {rec['loss']:.3f} {train}val {rec['val_acc']:.1%}"
        bar.update(task, info=info)
        if bar.disable:
            log(f"{rec['stage']} epoch {rec['epoch']}/{epochs}: {info}")

    def _save(self, model, index, epoch, epochs, opt, sched) -> None:
        """Rank 0 writes the resume state atomically; the others wait for it."""
        if self.world.is_main:
            state = {
                "version": STATE_VERSION, "stage": index if epoch < epochs else index + 1,
                "epoch": epoch if epoch < epochs else 0,
                "config": model.cfg.to_dict(), "model": _cpu(model.state_dict()),
                "optimizer": opt.state_dict() if epoch < epochs else {},
                "scheduler": sched.state_dict() if epoch < epochs else {},
                "rng": torch.get_rng_state(), "args": self.args, "extra": self.extra,
                "history": self.history,
            }
            save_state(self.state_path, state)
        D.barrier(self.world)


def _select(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze everything but `params` (DDP then syncs only those)."""
    ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return params


def _mix(*xs: int) -> int:
    """A deterministic seed from several integers."""
    h = 0
    for x in xs:
        h = (h * 1_000_003 + int(x)) % (2**63 - 1)
    return h


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def state_path_for(output: str | os.PathLike) -> Path:
    """Where the resume state of a run writing `output` lives."""
    p = Path(output)
    return p.with_name(p.name + ".resume")


def save_state(path: Path, state: dict) -> None:
    """torch.save to a temp file beside `path`, then rename: never a half-written state."""
    from farc.atomic import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """A resume state, loaded with weights_only=True (no code runs on load)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/format failure means a bad state file
        raise CheckpointError(f"{path}: unreadable resume state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a farc resume state of version {STATE_VERSION}")
    return state


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world: D.World,
             batch: int = 256) -> float:
    """Top-1 accuracy over the whole split, each rank evaluating its shard."""
    was = model.training
    model.eval()
    idx = D.shard(len(x), world)
    correct = 0.0
    for i in range(0, len(idx), batch):
        j = idx[i : i + batch]
        correct += (model(x[j].to(world.device)).argmax(-1).cpu() == y[j]).sum().item()
    model.train(was)
    c, n = D.all_sum([correct, float(len(idx))], world)
    return c / max(1.0, n)


# ---------------------------------------------------------------- FAR distillation


@dataclass(frozen=True)
class DistillOptions:
    """Settings of `farc distill`; the defaults meet the digits targets in docs/far.md."""

    similarity: str = "mse"
    """Per-head distance: "mse" (relative MSE, sum (s - t)^2 / sum t^2 per head) or
    "cosine" (1 - cosine over the head's d channels, averaged over tokens)."""
    sim_weight: float = 3.0
    """Weight of the summed per-head similarity term in the end-to-end fine-tune (stage 1
    is the similarity alone)."""
    epochs: int = 30
    ft_epochs: int = 10
    lr: float = 2e-2
    ft_lr: float = 1e-3
    kd: bool = True
    kd_temperature: float = 2.0
    label_smoothing: float = 0.1
    value_init: bool = True
    """Start pre_proj as the teacher's value projection (see `init_pre_proj_from_values`)."""
    train: TrainOptions = field(default_factory=TrainOptions)

    def validate(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"unknown similarity {self.similarity!r}; "
                              f"expected one of {', '.join(SIMILARITIES)}")
        if self.epochs < 0 or self.ft_epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs} and {self.ft_epochs}")
        if not (math.isfinite(self.sim_weight) and self.sim_weight >= 0):
            raise ConfigError(f"--sim-weight must be finite and >= 0, got {self.sim_weight}")
        check_rates(lr=self.lr, ft_lr=self.ft_lr)
        self.train.validate()


def head_losses(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-head distance [H] between head outputs [B, N, H, d]: relative MSE
    (sum (s - t)^2 / sum t^2 over the head) or 1 - cosine over d averaged over tokens.

    Per head and scale-free, so a head whose outputs are small weighs as much as a loud one."""
    if kind == "mse":
        return ((student - teacher) ** 2).sum((0, 1, 3)) / (teacher**2).sum((0, 1, 3)).clamp(
            min=1e-12)
    return 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean((0, 1))


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over heads of `head_losses`."""
    return head_losses(student, teacher, kind).sum()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Hinton logit distillation, KL(teacher || student) at temperature t, scaled by t^2."""
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def blockwise_loss(teacher: nn.Module, opts: DistillOptions) -> LossFn:
    """Stage 1 loss, teacher-forced: every student block reads the teacher's own block input
    norm1(x_b) and is scored per head against the teacher's softmax(QK^T)V of that block;
    the loss is the sum over blocks and heads. Blocks do not see each other (each block's
    loss depends on its own parameters only). Gives no logits (the student is not run end
    to end)."""

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            inputs, t_heads, _ = teacher_blocks(teacher, x)
        s_heads = student(x, block_inputs=inputs)
        return sum(similarity_loss(s, t, opts.similarity)
                   for s, t in zip(s_heads, t_heads, strict=True)), None

    return loss


def e2e_loss(teacher: nn.Module, opts: DistillOptions) -> LossFn:
    """Stage 2 loss, end to end on the student's own activations: CE + (with `kd`) logit KD
    + sim_weight * sum over blocks and heads of the per-head similarity."""

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            _, t_heads, t_logits = teacher_blocks(teacher, x)
        s_heads: list[torch.Tensor] = []
        logits = student(x, collect=s_heads)
        if len(s_heads) != len(t_heads):  # e.g. a wrapper that copied the list
            raise ConfigError(f"collected {len(s_heads)} student and {len(t_heads)} teacher "
                              "head outputs; distillation needs one per block")
        total = F.cross_entropy(logits, y, label_smoothing=opts.label_smoothing)
        if opts.kd:
            total = total + kd_loss(logits, t_logits, opts.kd_temperature)
        if opts.sim_weight:
            total = total + opts.sim_weight * sum(
                similarity_loss(s, t, opts.similarity) for s, t in zip(s_heads, t_heads))
        return total, logits

    return loss


def finetune_loss(teacher: nn.Module | None, label_smoothing: float, t: float) -> LossFn:
    """Stage 2 loss: CE, plus logit KD from `teacher` when one is given."""

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = student(x)
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if teacher is None:
            return ce, logits
        with torch.no_grad():
            t_logits = teacher(x)
        return ce + kd_loss(logits, t_logits, t), logits

    return loss


def distill_stages(teacher: nn.Module, opts: DistillOptions) -> list[Stage]:
    """The two stages of FAR conversion, in order: block-wise (teacher-forced, mixers only,
    each block clipped on its own), then end-to-end (every parameter)."""

    def blocks(m: nn.Module) -> list[list[nn.Parameter]]:
        return [blk.far.distilled_parameters() for blk in D.unwrap(m).blocks]

    return [
        Stage("blockwise", opts.epochs, opts.lr, blockwise_loss(teacher, opts),
              lambda m: D.unwrap(m).trainable_mixer_parameters(), blocks),
        Stage("finetune", opts.ft_epochs, opts.ft_lr, e2e_loss(teacher, opts),
              lambda m: list(m.parameters())),
    ]


def init_pre_proj_from_values(student: FAR, teacher: nn.Module) -> None:
    """Copy each teacher block's value projection (the V third of attn.qkv) into pre_proj.

    Head h of pre_proj then hands its LSTMs exactly the teacher's V_h, the vectors the
    teacher's attention averages, so stage 1 starts from the right features at the right
    scale instead of from a near-zero random projection."""
    with torch.no_grad():
        for t_blk, s_blk in zip(teacher.blocks, student.blocks):
            dim = t_blk.attn.qkv.in_features
            s_blk.far.pre_proj.weight.copy_(t_blk.attn.qkv.weight[2 * dim :])
            s_blk.far.pre_proj.bias.copy_(t_blk.attn.qkv.bias[2 * dim :])


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: how the teacher takes part in training."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_distill(teacher: nn.Module, student: FAR, run: Run, opts: DistillOptions,
                test: Split) -> tuple[FAR, dict]:
    """Train `student` from `teacher` through both stages; returns it and its report.

    The report holds accuracies (teacher and student, val and test), per-head function
    preservation on the validation split measured before stage 1 and after each stage
    (farc.far.preservation), the epoch history and the seconds per stage."""
    opts.validate()
    if opts.value_init:
        init_pre_proj_from_values(student, teacher)
    student = run.model_from_state(student)
    w, b = run.world, run.opts.eval_batch
    match = run.extra.setdefault("match", [])
    if not match:
        match.append({"after": "init", **measure(student, teacher, run.val[0], w, b)})
    for i, stage in enumerate(distill_stages(teacher, opts)):
        t0 = time.perf_counter()
        run.fit(student, stage, i)
        run.extra.setdefault("seconds", {})[stage.name] = (
            run.extra.get("seconds", {}).get(stage.name, 0.0) + time.perf_counter() - t0)
        if stage.epochs > 0 and all(m["after"] != stage.name for m in match):
            match.append({"after": stage.name, **measure(student, teacher, run.val[0], w, b)})
    student.eval()
    final = match[-1]["free"]
    report = {
        "metrics": {
            "teacher_val_acc": accuracy(teacher, *run.val, w, b),
            "teacher_test_acc": accuracy(teacher, *test, w, b),
            "student_val_acc": accuracy(student, *run.val, w, b),
            "student_test_acc": accuracy(student, *test, w, b),
        },
        "function_preservation": {
            "split": "val", "stages": match, **worst(match[-1]),
            "per_head": final["cosine"],
            "per_block": [sum(r) / len(r) for r in final["cosine"]],
        },
        "history": run.history,
        "seconds": run.extra.get("seconds", {}),
        "options": {k: v for k, v in asdict(opts).items() if k != "train"},
        "train_options": asdict(opts.train),
        "world_size": w.size,
    }
    return student, report
