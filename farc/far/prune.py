"""Structured pruning of FAR LSTM hidden units: choose units by group norm, remove them.

Selection works on the group norms of farc.far.hoyer (one group per hidden unit, per block,
head and direction). A unit is removed when its group norm is below a threshold. With a
target sparsity R the threshold is global (one number for the whole model, so heads that
Hoyer-Square emptied lose more units than heads that still need theirs), and every
(block, head, direction) keeps at least its strongest unit: an LSTM of hidden size 0 is not
a valid ONNX LSTM nor a crossbar mapping, and a direction with no units would silently turn
the BiLSTM into a unidirectional one.

Removal is physical: the returned FAR has a FARConfig with the smaller per-head,
per-direction hidden sizes, so the checkpoint, the ONNX export and the compiled tile program
all shrink. Units whose groups are exactly zero contribute exactly nothing (their cell and
hidden state stay 0 and nothing reads them), so removing them leaves the outputs unchanged.

The pruning run (`run_prune`) reuses farc.far.distill's resumable, torchrun-aware engine:
stage "hoyer" trains every parameter on CE (+ logit KD from the unpruned student)
+ hoyer_weight * Hoyer-Square; then units are selected and removed physically; stage
"prune-ft" fine-tunes the smaller model. Because the removed units no longer exist, this
plain fine-tune is the masked fine-tune: they cannot grow back."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from farc import distributed as D
from farc.errors import ConfigError
from farc.far.distill import (
    LossFn,
    Run,
    Split,
    Stage,
    TrainOptions,
    accuracy,
    check_rates,
    finetune_loss,
    freeze,
)
from farc.far.hoyer import DIRECTIONS, all_group_norms, hoyer_regulariser
from farc.models.far import FAR, FARConfig

Key = tuple[int, int, str]


@dataclass
class UnitSelection:
    """Which units survive: keep[(block, head, direction)] is a bool mask over hidden units."""

    keep: dict[Key, torch.Tensor]
    threshold: float

    def sizes(self, cfg: FARConfig) -> tuple[tuple[tuple[int, int], ...], ...]:
        return tuple(
            tuple((int(self.keep[(b, h, "fwd")].sum()), int(self.keep[(b, h, "bwd")].sum()))
                  for h in range(cfg.deit.num_heads))
            for b in range(cfg.deit.depth)
        )

    @property
    def removed(self) -> int:
        return sum(int((~m).sum()) for m in self.keep.values())

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self.keep.values())


def select_units(model: FAR, threshold: float | None = None,
                 target_sparsity: float | None = None, include_bias: bool = True) -> UnitSelection:
    """Keep masks from a norm threshold, or from the share of units to remove.

    Exactly one of `threshold` and `target_sparsity` is given. With a threshold, units with
    group norm < threshold go, except each head and direction's strongest unit. With a
    sparsity R, exactly round(R * units) units go: the globally weakest, never a head and
    direction's strongest; the reported threshold lies midway between the strongest removed
    and the weakest kept candidate."""
    if (threshold is None) == (target_sparsity is None):
        raise ConfigError("give exactly one of --threshold and --target-sparsity")
    norms = all_group_norms(model, include_bias)
    strongest = {k: int(torch.argmax(v)) for k, v in norms.items()}
    if target_sparsity is not None:
        return _select_by_rank(norms, strongest, target_sparsity)
    keep = {}
    for k, v in norms.items():
        m = v >= threshold
        m[strongest[k]] = True
        keep[k] = m
    return UnitSelection(keep, float(threshold))


def _select_by_rank(norms: dict[Key, torch.Tensor], strongest: dict[Key, int],
                    r: float) -> UnitSelection:
    """Remove the round(r * units) weakest units, protecting each group's strongest."""
    if not 0.0 <= r < 1.0:
        raise ConfigError(f"target sparsity {r} out of range, must be in [0, 1)")
    keys = list(norms)
    total = sum(v.numel() for v in norms.values())
    n_remove = round(r * total)
    if n_remove > total - len(keys):
        raise ConfigError(f"target sparsity {r} removes {n_remove} of {total} units, but at "
                          f"most {total - len(keys)} can go (each head/direction keeps one)")
    # Flatten to (norm, key index, unit) with protected units pushed to +inf.
    flat, owner, unit = [], [], []
    for ki, k in enumerate(keys):
        v = norms[k].clone()
        v[strongest[k]] = float("inf")
        flat.append(v)
        owner += [ki] * v.numel()
        unit += list(range(v.numel()))
    flat_t = torch.cat(flat)
    order = torch.argsort(flat_t, stable=True)
    keep = {k: torch.ones_like(norms[k], dtype=torch.bool) for k in keys}
    for i in order[:n_remove].tolist():
        keep[keys[owner[i]]][unit[i]] = False
    s = flat_t[order]
    lo = float(s[n_remove - 1]) if n_remove else 0.0
    hi = float(s[n_remove]) if n_remove < s.numel() else lo
    thr = lo if n_remove == 0 else (lo + hi) / 2 if hi != float("inf") else lo
    return UnitSelection(keep, thr)


def remove_units(model: FAR, sel: UnitSelection) -> FAR:
    """A new, physically smaller FAR holding only the kept units; `model` is untouched."""
    cfg = FARConfig(model.cfg.deit, sel.sizes(model.cfg))
    small = FAR(cfg)
    src = model.state_dict()
    dst = small.state_dict()
    for name in dst:
        if ".far.lstm_" not in name and ".far.head_proj." not in name:
            dst[name] = src[name].clone()
    small.load_state_dict(dst)
    with torch.no_grad():
        for b, (big_blk, small_blk) in enumerate(zip(model.blocks, small.blocks)):
            for h in range(cfg.deit.num_heads):
                _copy_head(big_blk.far, small_blk.far, h, sel.keep[(b, h, "fwd")],
                           sel.keep[(b, h, "bwd")])
    return small


def _copy_head(big: nn.Module, small: nn.Module, h: int, keep_f: torch.Tensor,
               keep_b: torch.Tensor) -> None:
    """Slice one head's two LSTMs and its head_proj into the smaller mixer."""
    idx_f = keep_f.nonzero().flatten()
    idx_b = keep_b.nonzero().flatten()
    _copy_lstm(big.lstm_fwd[h], small.lstm_fwd[h], idx_f)
    _copy_lstm(big.lstm_bwd[h], small.lstm_bwd[h], idx_b)
    # head_proj input is [fwd ; bwd]: backward columns start after all forward columns.
    cols = torch.cat([idx_f, big.lstm_fwd[h].hidden_size + idx_b])
    small.head_proj[h].weight.copy_(big.head_proj[h].weight[:, cols])
    small.head_proj[h].bias.copy_(big.head_proj[h].bias)


def _copy_lstm(big: nn.LSTM, small: nn.LSTM, idx: torch.Tensor) -> None:
    """Keep units `idx`: their rows in each gate block [i, f, g, o] and their W_hh columns."""
    n = big.hidden_size
    rows = torch.cat([g * n + idx for g in range(4)])
    small.weight_ih_l0.copy_(big.weight_ih_l0[rows])
    small.weight_hh_l0.copy_(big.weight_hh_l0[rows][:, idx])
    small.bias_ih_l0.copy_(big.bias_ih_l0[rows])
    small.bias_hh_l0.copy_(big.bias_hh_l0[rows])


def units_kept_table(cfg_before: FARConfig, cfg_after: FARConfig) -> list[dict]:
    """One row per (block, head, direction): units before and after, for reports."""
    rows = []
    for b, (blk0, blk1) in enumerate(zip(cfg_before.hidden, cfg_after.hidden)):
        for h, (p0, p1) in enumerate(zip(blk0, blk1)):
            for i, d in enumerate(DIRECTIONS):
                rows.append({"block": b, "head": h, "direction": d,
                             "before": p0[i], "after": p1[i]})
    return rows


def lstm_param_count(model: FAR) -> int:
    """Parameters in the LSTMs and head_proj: the part pruning shrinks."""
    return sum(p.numel() for blk in model.blocks
               for mod in (blk.far.lstm_fwd, blk.far.lstm_bwd, blk.far.head_proj)
               for p in mod.parameters())


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the pruning run


@dataclass(frozen=True)
class PruneOptions:
    """Settings of `farc prune`; the defaults meet the digits targets in docs/far.md."""

    target_sparsity: float | None = 0.5
    threshold: float | None = None
    hoyer_weight: float = 5e-2
    epochs: int = 5
    ft_epochs: int = 5
    lr: float = 3e-3
    ft_lr: float = 5e-4
    kd: bool = True
    """Logit distillation from the unpruned student in both stages."""
    kd_temperature: float = 2.0
    label_smoothing: float = 0.1
    include_bias: bool = True
    train: TrainOptions = field(default_factory=TrainOptions)

    def validate(self) -> None:
        if (self.threshold is None) == (self.target_sparsity is None):
            raise ConfigError("give exactly one of --threshold and --target-sparsity")
        if self.threshold is not None and not self.threshold >= 0:
            raise ConfigError(f"threshold {self.threshold} must be >= 0")
        if self.target_sparsity is not None and not 0.0 <= self.target_sparsity < 1.0:
            raise ConfigError(f"target sparsity {self.target_sparsity} out of range, "
                              "must be in [0, 1)")
        if self.epochs < 0 or self.ft_epochs < 0 or not self.hoyer_weight >= 0:
            raise ConfigError("epochs and --hoyer-weight must be >= 0")
        check_rates(lr=self.lr, ft_lr=self.ft_lr)
        self.train.validate()


def hoyer_loss(ref: nn.Module | None, opts: PruneOptions) -> LossFn:
    """CE (+ KD from the unpruned student) + hoyer_weight * sum of Hoyer-Square terms."""
    base = finetune_loss(ref, opts.label_smoothing, opts.kd_temperature)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        task, logits = base(model, x, y)
        reg = hoyer_regulariser(D.unwrap(model), opts.include_bias)
        return task + opts.hoyer_weight * reg, logits

    return loss


def prune_stages(ref: nn.Module | None, opts: PruneOptions) -> list[Stage]:
    """Hoyer-Square regularised training, then the fine-tune of the physically smaller model."""
    return [
        Stage("hoyer", opts.epochs, opts.lr, hoyer_loss(ref, opts), lambda m: list(m.parameters())),
        Stage("prune-ft", opts.ft_epochs, opts.ft_lr,
              finetune_loss(ref, opts.label_smoothing, opts.kd_temperature),
              lambda m: list(m.parameters())),
    ]


def run_prune(student: FAR, run: Run, opts: PruneOptions, test: Split) -> tuple[FAR, dict]:
    """Hoyer training, unit selection, physical removal, fine-tune; returns model and report.

    Removal happens between the stages; on resume the state already holds the smaller model
    (its config has the pruned sizes) and `run.extra` the selection, so nothing is redone."""
    opts.validate()
    w, b = run.world, run.opts.eval_batch
    dense_cfg = student.cfg
    before = {"val": accuracy(student, *run.val, w, b), "test": accuracy(student, *test, w, b),
              "params": param_count(student), "lstm_params": lstm_param_count(student)}
    ref = freeze(copy.deepcopy(student)) if opts.kd else None
    model = run.model_from_state(student)
    hoyer, ft = prune_stages(ref, opts)
    run.fit(model, hoyer, 0)
    if "selection" not in run.extra:
        sel = select_units(model, opts.threshold, opts.target_sparsity, opts.include_bias)
        model = remove_units(model, sel).to(w.device)
        run.extra["selection"] = {"threshold": sel.threshold, "removed": sel.removed,
                                  "total": sel.total, "accuracy_before_ft": None}
        run.extra["selection"]["accuracy_before_ft"] = accuracy(model, *test, w, b)
    run.fit(model, ft, 1)
    model.eval()
    sel = run.extra["selection"]
    report = {
        "metrics": {"student_val_acc": before["val"], "student_test_acc": before["test"],
                    "pruned_val_acc": accuracy(model, *run.val, w, b),
                    "pruned_test_acc": accuracy(model, *test, w, b),
                    "pruned_test_acc_before_ft": sel["accuracy_before_ft"]},
        "units": {"before": dense_cfg.lstm_units, "after": model.cfg.lstm_units,
                  "removed_share": 1 - model.cfg.lstm_units / dense_cfg.lstm_units,
                  "threshold": sel["threshold"], "include_bias": opts.include_bias},
        "units_kept": units_kept_table(dense_cfg, model.cfg),
        "params": {"before": before["params"], "after": param_count(model),
                   "lstm_before": before["lstm_params"], "lstm_after": lstm_param_count(model)},
        "history": run.history,
        "options": {k: v for k, v in asdict(opts).items() if k != "train"},
        "train_options": asdict(opts.train),
        "world_size": w.size,
    }
    return model, report
