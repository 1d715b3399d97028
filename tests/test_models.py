"""DeiT/FAR shapes and parameter counts, and loading timm / facebookresearch state dicts."""

from __future__ import annotations

import itertools
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from farc.errors import CheckpointError, ConfigError
from farc.models.deit import DEIT_PRESETS, DeiT, DeiTConfig
from farc.models.far import FARConfig
from farc.models.loading import infer_deit_config, load_deit_state_dict

PUBLISHED = {  # timm's counts for the ImageNet-1k models
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_base_patch16_224": 86_567_656,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_parameter_counts(preset):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = DeiT(DEIT_PRESETS[preset])
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[preset]


def test_deit_forward_and_collect(deit_digits):
    collect: list = []
    with torch.no_grad():
        out = deit_digits(torch.zeros(2, 1, 8, 8), collect=collect)
    assert out.shape == (2, 10)
    assert len(collect) == 4 and collect[0].shape == (2, 17, 4, 16)


def test_far_from_teacher_copies_shared_weights(deit_digits, far_digits):
    t, s = deit_digits.state_dict(), far_digits.state_dict()
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight",
                 "head.weight", "blocks.2.mlp.fc1.weight", "blocks.3.norm1.bias"):
        assert torch.equal(t[name], s[name]), name
    assert torch.equal(t["blocks.1.attn.proj.weight"], s["blocks.1.far.post_proj.weight"])


def test_pruned_far_is_physically_smaller(far_digits, pruned_far_digits):
    m = pruned_far_digits.blocks[0].far
    assert (m.lstm_fwd[1].hidden_size, m.lstm_bwd[1].hidden_size) == (16, 3)
    assert m.head_proj[0].in_features == 5 + 9
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert n(pruned_far_digits) < n(far_digits)
    collect: list = []
    with torch.no_grad():
        pruned_far_digits(torch.zeros(1, 1, 8, 8), collect=collect)
    assert collect[0].shape == (1, 17, 4, 16)


def test_far_config_rejects_wrong_head_count():
    with pytest.raises(ConfigError, match="block 0: 1 heads of hidden sizes, model has 4"):
        FARConfig(DEIT_PRESETS["deit_digits"], (((4, 4),),) * 4).validate()


# ----------------------------------------------------------------------------- timm loading
SMALL = DeiTConfig(img_size=32, patch_size=8, in_chans=3, num_classes=7, embed_dim=128,
                   depth=2, num_heads=2, mlp_ratio=4.0)


def _timm_state_dict(cfg: DeiTConfig = SMALL) -> dict[str, torch.Tensor]:
    """A random state dict in timm's VisionTransformer key layout, written out by hand."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    d, hid = cfg.embed_dim, cfg.mlp_hidden
    sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, cfg.num_tokens, d),
          "patch_embed.proj.weight": r(d, cfg.in_chans, cfg.patch_size, cfg.patch_size),
          "patch_embed.proj.bias": r(d), "norm.weight": 1 + r(d), "norm.bias": r(d),
          "head.weight": r(cfg.num_classes, d), "head.bias": r(cfg.num_classes)}
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        sd |= {p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
               p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
               p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
               p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
               p + "mlp.fc1.weight": r(hid, d), p + "mlp.fc1.bias": r(hid),
               p + "mlp.fc2.weight": r(d, hid), p + "mlp.fc2.bias": r(d)}
    return sd


@pytest.mark.parametrize("fmt", ["pth", "facebookresearch", "safetensors"])
def test_load_timm_layout(fmt, tmp_path):
    sd = _timm_state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"model": sd, "epoch": 300} if fmt == "facebookresearch" else sd, path)
    model = load_deit_state_dict(path)
    assert model.cfg == SMALL  # every field inferred; heads from 64-dim heads
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_infer_config_of_every_preset():
    for name, cfg in DEIT_PRESETS.items():
        with torch.device("meta"):
            sd = DeiT(cfg).state_dict()
        got = infer_deit_config(sd)
        assert got == DeiTConfig(**{**cfg.to_dict(), "num_heads": got.num_heads}), name
        if cfg.head_dim == 64:
            assert got.num_heads == cfg.num_heads, name


def test_heads_from_preset_or_argument(tmp_path, deit_digits):
    path = tmp_path / "digits.pth"
    torch.save(deit_digits.state_dict(), path)
    assert load_deit_state_dict(path, "deit_digits").cfg.num_heads == 4
    assert load_deit_state_dict(path, num_heads=8).cfg.num_heads == 8


def test_wrong_keys_are_listed(tmp_path):
    sd = _timm_state_dict()
    sd["dist_token"] = sd["cls_token"].clone()
    sd["blocks.0.attn.qkv_weight"] = sd.pop("blocks.0.attn.qkv.weight")
    torch.save({"model": sd}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.0\.attn\.qkv\.weight; "
                       r"unexpected keys: blocks\.0\.attn\.qkv_weight, dist_token"):
        load_deit_state_dict(tmp_path / "w.pth", SMALL)


def test_shape_mismatch_against_a_preset(tmp_path):
    save_file(_timm_state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape mismatches \(file vs model\): "
                       r"head\.bias \(7,\) vs \(5,\); head\.weight \(7, 128\) vs \(5, 128\)$"):
        load_deit_state_dict(tmp_path / "w.safetensors", replace(SMALL, num_classes=5))
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\+\d+ more\)"):
        load_deit_state_dict(tmp_path / "w.safetensors", "deit_tiny_patch16_224")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot read it as a weights-only torch file"):
        load_deit_state_dict(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such state-dict file"):
        load_deit_state_dict(tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_deit_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="unknown DeiT preset 'deit_huge'"):
        load_deit_state_dict(tmp_path / "junk.safetensors", "deit_huge")


# ----------------------------------------------------------------------------- training helpers
def test_warmup_cosine_schedule():
    from farc.far.train import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))


def test_random_shift_moves_whole_images_and_is_seeded():
    from farc.far.train import random_shift

    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    a = random_shift(x, 1, torch.Generator().manual_seed(0))
    b = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    # interior pixels stay a translated copy of the original
    inner = {tuple(a[i, 0, 1:3, 1:3].flatten().tolist()) for i in range(2)}
    windows = {tuple(x[i, 0, r : r + 2, c : c + 2].flatten().tolist())
               for i in range(2) for r in range(3) for c in range(3)}
    assert inner <= windows


def test_training_learns_a_separable_toy_problem():
    from farc.far.train import TrainConfig, evaluate, train_classifier

    torch.manual_seed(0)
    cfg = DeiTConfig(img_size=4, patch_size=2, in_chans=1, num_classes=2, embed_dim=16,
                     depth=1, num_heads=2, mlp_ratio=1.0)
    x = torch.randn(128, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0, 0, 0] > 0).long()
    x[:, 0, 0, 0] += torch.where(y == 1, 2.0, -2.0)
    model = DeiT(cfg)
    r = train_classifier(model, (x[:96], y[:96]), (x[96:], y[96:]),
                         TrainConfig(epochs=8, lr=5e-3, warmup_epochs=1, seed=0))
    assert r.best_val_acc >= 0.9 and len(r.history) == 8
    assert evaluate(model, x[96:], y[96:]) == pytest.approx(r.best_val_acc)
    assert not model.training
