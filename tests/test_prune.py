"""Structured pruning: unit selection, exact physical removal, the pruned checkpoint's life
(reload, ONNX export, onnxruntime) and the `farc prune` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from farc.cli import main
from farc.errors import ConfigError
from farc.far.hoyer import iter_unit_groups
from farc.far.prune import remove_units, select_units
from farc.models.checkpoint import load_checkpoint, save_checkpoint
from farc.models.deit import DeiTConfig
from farc.models.far import FAR, FARConfig

TINY = DeiTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                  num_heads=2, mlp_ratio=1.0)


def _far(seed: int = 0) -> FAR:
    torch.manual_seed(seed)
    model = FAR(FARConfig.dense(TINY)).eval()
    with torch.no_grad():  # make head_proj matter: its default init is tiny
        for blk in model.blocks:
            for proj in blk.far.head_proj:
                proj.weight.normal_(0, 0.5)
    return model


def _zero_units(model: FAR, seed: int = 1) -> dict:
    """Zero the whole group of a different random half of units in every head/direction."""
    gen = torch.Generator().manual_seed(seed)
    zeroed = {}
    with torch.no_grad():
        for g in iter_unit_groups(model):
            n = g.lstm.hidden_size
            idx = torch.randperm(n, generator=gen)[: int(torch.randint(1, n, (1,), generator=gen))]
            rows = torch.cat([k * n + idx for k in range(4)])
            for p in (g.lstm.weight_ih_l0, g.lstm.weight_hh_l0, g.lstm.bias_ih_l0,
                      g.lstm.bias_hh_l0):
                p[rows] = 0
            g.lstm.weight_hh_l0[:, idx] = 0
            g.head_proj.weight[:, g.col_offset + idx] = 0
            zeroed[(g.block, g.head, g.direction)] = len(idx)
    return zeroed


def test_removing_exactly_zero_groups_leaves_logits_unchanged():
    model = _far()
    zeroed = _zero_units(model)
    sel = select_units(model, threshold=1e-12)
    assert sel.removed == sum(zeroed.values())
    small = remove_units(model, sel).eval()
    # fwd and bwd of a head end with different sizes: the [fwd ; bwd] split must be right
    assert any(f != b for blk in small.cfg.hidden for f, b in blk)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), atol=1e-6, rtol=0)


def test_target_sparsity_removes_exactly_that_share_globally():
    model = _far()
    sel = select_units(model, target_sparsity=0.5)
    assert sel.removed == round(0.5 * sel.total)
    # the weakest go: every kept unit is at least as strong as every removed one
    from farc.far.hoyer import all_group_norms

    norms = all_group_norms(model)
    kept = torch.cat([norms[k][m] for k, m in sel.keep.items()])
    gone = torch.cat([norms[k][~m] for k, m in sel.keep.items()])
    assert gone.max() <= kept.max()


def test_high_sparsity_keeps_one_unit_per_head_and_direction():
    model = _far()
    n_groups = TINY.depth * TINY.num_heads * 2
    total = n_groups * TINY.head_dim
    sel = select_units(model, target_sparsity=(total - n_groups) / total)
    assert all(int(m.sum()) == 1 for m in sel.keep.values())
    small = remove_units(model, sel)
    assert small.cfg.lstm_units == n_groups


def test_select_needs_exactly_one_criterion():
    with pytest.raises(ConfigError, match="exactly one of --threshold and --target-sparsity"):
        select_units(_far(), threshold=0.1, target_sparsity=0.5)


def test_sparsity_out_of_range():
    with pytest.raises(ConfigError, match=r"target sparsity 1\.0 out of range"):
        select_units(_far(), target_sparsity=1.0)


def test_sparsity_beyond_one_unit_per_group():
    with pytest.raises(ConfigError, match="at most 56 can go"):
        select_units(_far(), target_sparsity=0.99)


def test_pruned_checkpoint_reloads_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from farc.check.onnx_export import export_onnx
    from farc.check.ort import OrtRunner

    model = _far()
    _zero_units(model)
    small = remove_units(model, select_units(model, threshold=1e-12))
    save_checkpoint(tmp_path / "p.pt", small, {"test": True})
    ck = load_checkpoint(tmp_path / "p.pt", expect="far")
    assert ck.model.cfg == small.cfg
    onnx_path = export_onnx(ck.model, tmp_path / "p.onnx")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        ref = ck.model(x).numpy()
    got = OrtRunner(onnx_path).run(x.numpy())
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_prune_command_writes_a_smaller_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "s.pt", _far(), {"metrics": {"teacher_test_acc": 0.5}})
    main(["prune", str(tmp_path / "s.pt"), "-o", str(tmp_path / "p.pt"), "--epochs", "1",
          "--ft-epochs", "1", "--target-sparsity", "0.5", "--batch-size", "256"])
    ck = load_checkpoint(tmp_path / "p.pt", expect="far")
    prov = ck.provenance
    assert ck.model.cfg.lstm_units == 32  # 64 units, half removed
    assert prov["units"]["removed_share"] == pytest.approx(0.5)
    assert prov["params"]["after"] < prov["params"]["before"]
    assert prov["hidden"] == ck.config["hidden"]
    assert len(prov["units_kept"]) == TINY.depth * TINY.num_heads * 2
    assert {"student_test_acc", "pruned_test_acc", "teacher_test_acc"} <= set(prov["metrics"])
    assert (tmp_path / "p.pt.resume").exists()


def test_prune_command_rejects_both_criteria(tmp_path, capsys):
    save_checkpoint(tmp_path / "s.pt", _far(), {})
    with pytest.raises(SystemExit) as exc:
        main(["prune", str(tmp_path / "s.pt"), "-o", str(tmp_path / "p.pt"),
              "--threshold", "0.1", "--target-sparsity", "0.5"])
    assert exc.value.code == 1
    assert "exactly one of --threshold and --target-sparsity" in capsys.readouterr().err


def test_prune_resume_after_removal_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from farc.far.distill import Run

    save_checkpoint(tmp_path / "s.pt", _far(), {})
    args = ["prune", str(tmp_path / "s.pt"), "--epochs", "1", "--ft-epochs", "2",
            "--batch-size", "256", "--seed", "2"]
    main([*args, "-o", str(tmp_path / "full.pt")])

    real_log = Run._log
    calls = []

    def crash_in_fine_tune(self, *a, **k):
        real_log(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:  # hoyer epoch 1, then fine-tune epoch 1 of the pruned model
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "_log", crash_in_fine_tune)
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "cut.pt")])
    monkeypatch.setattr(Run, "_log", real_log)
    main([*args, "-o", str(tmp_path / "cut.pt"), "--resume"])
    a, b = load_file(tmp_path / "full.pt"), load_file(tmp_path / "cut.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prune_options_reject_negative_threshold():
    from farc.far.prune import PruneOptions

    with pytest.raises(ConfigError, match=r"threshold -1\.0 must be >= 0"):
        PruneOptions(target_sparsity=None, threshold=-1.0).validate()
