"""`farc distill`: the losses, what stage 1 may touch, seed repeatability and --resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from farc.cli import main
from farc.errors import ConfigError
from farc.far.distill import Run, kd_loss, similarity_loss
from farc.models.checkpoint import load_checkpoint, save_checkpoint
from farc.models.deit import DeiT, DeiTConfig

TINY = DeiTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                  num_heads=2, mlp_ratio=1.0)
FAST = ["--batch-size", "256"]


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, DeiT(TINY), {"note": "random tiny teacher"})
    return path


def _distill(teacher, out, *extra: str) -> None:
    main(["distill", str(teacher), "-o", str(out), *FAST, *extra])


def test_similarity_mse_and_cosine():
    a = torch.tensor([[[[1.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 1.0]]]])
    assert similarity_loss(a, b, "mse").item() == pytest.approx(1.0)
    assert similarity_loss(a, b, "cosine").item() == pytest.approx(1.0)
    assert similarity_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0)


def test_kd_loss_zero_for_equal_logits():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_stage1_trains_only_the_mixers(teacher, tmp_path):
    _distill(teacher, tmp_path / "s.pt", "--epochs", "1", "--ft-epochs", "0")
    t = load_checkpoint(teacher).model.state_dict()
    s = load_checkpoint(tmp_path / "s.pt").model.state_dict()
    for name, w in s.items():
        key = name.replace(".far.post_proj.", ".attn.proj.")
        if ".far." not in name or ".far.post_proj." in name:
            assert torch.equal(w, t[key]), name
    init = load_checkpoint(teacher).model
    from farc.models.far import FAR

    torch.manual_seed(0)
    fresh = FAR.from_teacher(init).state_dict()
    assert not torch.equal(s["blocks.0.far.pre_proj.weight"], fresh["blocks.0.far.pre_proj.weight"])


def test_student_checkpoint_records_reports(teacher, tmp_path):
    _distill(teacher, tmp_path / "s.pt", "--epochs", "1", "--ft-epochs", "1")
    ck = load_checkpoint(tmp_path / "s.pt", expect="far")
    prov = ck.provenance
    assert prov["teacher"]["path"].endswith("teacher.pt")
    assert {"teacher_test_acc", "student_test_acc"} <= set(prov["metrics"])
    fp = prov["function_preservation"]
    assert len(fp["per_block"]) == TINY.depth and len(fp["per_head"][0]) == TINY.num_heads
    assert all(-1.0 <= c <= 1.0 for c in fp["per_block"])
    assert [h["stage"] for h in prov["history"]] == ["distill", "finetune"]


def test_same_seed_same_student(teacher, tmp_path):
    for name in ("a.pt", "b.pt"):
        _distill(teacher, tmp_path / name, "--epochs", "1", "--ft-epochs", "1", "--seed", "3")
    a, b = load_file(tmp_path / "a.pt"), load_file(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_an_uninterrupted_run(teacher, tmp_path, monkeypatch):
    args = ["--epochs", "2", "--ft-epochs", "1", "--seed", "1"]
    _distill(teacher, tmp_path / "full.pt", *args)

    calls = []
    real_log = Run._log

    def crash_after_first_epoch(self, *a, **k):
        real_log(self, *a, **k)
        calls.append(1)
        raise KeyboardInterrupt  # a kill right after epoch 1's state was saved

    monkeypatch.setattr(Run, "_log", crash_after_first_epoch)
    with pytest.raises(SystemExit):
        _distill(teacher, tmp_path / "cut.pt", *args)
    assert calls == [1] and not (tmp_path / "cut.pt").exists()
    monkeypatch.setattr(Run, "_log", real_log)
    _distill(teacher, tmp_path / "cut.pt", *args, "--resume")
    a, b = load_file(tmp_path / "full.pt"), load_file(tmp_path / "cut.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = load_checkpoint(tmp_path / "cut.pt").provenance["history"]
    assert [(h["stage"], h["epoch"]) for h in hist] == [("distill", 1), ("distill", 2),
                                                         ("finetune", 1)]


def test_resume_with_another_seed_is_refused(teacher, tmp_path, capsys):
    _distill(teacher, tmp_path / "s.pt", "--epochs", "1", "--ft-epochs", "0", "--seed", "1")
    with pytest.raises(SystemExit):
        _distill(teacher, tmp_path / "s.pt", "--epochs", "1", "--seed", "2", "--resume")
    assert "was made with seed=1, this run has 2" in capsys.readouterr().err


def test_distill_needs_a_deit_teacher(teacher, tmp_path, capsys):
    _distill(teacher, tmp_path / "s.pt", "--epochs", "0", "--ft-epochs", "0")
    with pytest.raises(SystemExit):
        _distill(tmp_path / "s.pt", tmp_path / "s2.pt")
    assert "holds a far model, expected deit" in capsys.readouterr().err


def test_bad_epochs_rejected():
    from farc.far.distill import DistillOptions

    with pytest.raises(ConfigError, match="epochs must be >= 0"):
        DistillOptions(epochs=-1).validate()


def test_unknown_similarity_rejected():
    from farc.far.distill import DistillOptions

    with pytest.raises(ConfigError, match="unknown similarity 'l1'"):
        DistillOptions(similarity="l1").validate()


def test_corrupt_resume_state_is_a_checkpoint_error(tmp_path):
    from farc.errors import CheckpointError
    from farc.far.distill import load_state

    bad = tmp_path / "s.pt.resume"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="unreadable resume state"):
        load_state(bad)
    torch.save({"version": 99}, bad)
    with pytest.raises(CheckpointError, match="not a farc resume state of version 1"):
        load_state(bad)


def test_unknown_device_rejected():
    from farc.distributed import setup

    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        setup("tpu")
