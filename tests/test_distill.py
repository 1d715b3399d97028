"""`farc distill`: the losses, teacher forcing, what stage 1 may touch, the function-
preservation report, seed repeatability (in one process and across two) and --resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from farc.cli import main
from farc.errors import ConfigError
from farc.far.distill import Run, head_losses, kd_loss, similarity_loss
from farc.models.checkpoint import load_checkpoint, save_checkpoint, weights_digest
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
    assert similarity_loss(a, b, "mse").item() == pytest.approx(2.0)  # |a-b|^2 / |b|^2
    assert similarity_loss(a, b, "cosine").item() == pytest.approx(1.0)
    assert similarity_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0)
    assert similarity_loss(3 * a, a, "mse").item() == pytest.approx(4.0)


def test_similarity_is_per_head_and_scale_free():
    """A quiet head's error counts as much as a loud head's: relative MSE per head."""
    t = torch.randn(2, 5, 2, 4)
    t[:, :, 1] *= 100.0
    s = t.clone()
    s[:, :, 0] *= 0.5
    s[:, :, 1] *= 0.5
    assert head_losses(s, t, "mse").tolist() == pytest.approx([0.25, 0.25])
    assert similarity_loss(s, t, "mse").item() == pytest.approx(0.5)


def test_blockwise_is_teacher_forced_and_blocks_independent():
    """Stage 1 feeds each student block the teacher's own block input, so a block's output
    (and its loss) does not move when another block's weights do."""
    from farc.far.preservation import teacher_blocks
    from farc.models.far import FAR

    torch.manual_seed(0)
    t = DeiT(TINY).eval()
    s = FAR.from_teacher(t)
    x = torch.randn(3, 1, 8, 8)
    inputs, t_heads, _ = teacher_blocks(t, x)
    assert all(torch.equal(a, b) for a, b in zip(t_heads, _collect(t, x)))
    before = s(x, block_inputs=inputs)
    assert torch.equal(before[1], s.blocks[1].far.heads_out(inputs[1]))
    with torch.no_grad():
        for p in s.blocks[0].far.distilled_parameters():
            p.add_(1.0)
    after = s(x, block_inputs=inputs)
    assert torch.equal(before[1], after[1]) and not torch.equal(before[0], after[0])


def _collect(model, x):
    heads: list[torch.Tensor] = []
    model(x, collect=heads)
    return heads


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
    rep = tmp_path / "rep"
    _distill(teacher, tmp_path / "s.pt", "--epochs", "1", "--ft-epochs", "1",
             "--report-dir", str(rep))
    ck = load_checkpoint(tmp_path / "s.pt", expect="far")
    prov = ck.provenance
    assert prov["teacher"]["path"].endswith("teacher.pt")
    assert {"teacher_test_acc", "student_test_acc"} <= set(prov["metrics"])
    fp = prov["function_preservation"]
    assert len(fp["per_block"]) == TINY.depth and len(fp["per_head"][0]) == TINY.num_heads
    assert all(-1.0 <= c <= 1.0 for c in fp["per_block"])
    assert [m["after"] for m in fp["stages"]] == ["init", "blockwise", "finetune"]
    for m in fp["stages"]:
        for mode in ("forced", "free"):
            assert {"cosine", "rel_mse"} == set(m[mode])
            assert len(m[mode]["rel_mse"]) == TINY.depth
            assert all(r >= 0 for row in m[mode]["rel_mse"] for r in row)
    assert fp["min_cosine"] == min(min(r) for r in fp["per_head"])
    assert [h["stage"] for h in prov["history"]] == ["blockwise", "finetune"]
    assert prov["history"][0]["train_acc"] is None  # teacher-forced: no student logits
    env = prov["environment"]
    assert {"kernel_path", "cpu_capability", "threads", "torch", "numpy"} <= set(env)
    assert (rep / "function_preservation.png").read_bytes()[:4] == b"\x89PNG"
    md = (rep / "function_preservation.md").read_text()
    assert "free cos (init)" in md and "forced rMSE (finetune)" in md
    assert json.loads((rep / "function_preservation.json").read_text())["stages"]


def test_two_processes_give_the_same_weights_digest(teacher, tmp_path):
    """A short training run in two separate interpreters: same weights, bit for bit (on the
    same machine, i.e. the same kernel path; provenance records it)."""
    digests, paths = [], []
    for name in ("a.pt", "b.pt"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "farc", "distill", str(teacher), "-o", str(out),
                        *FAST, "--epochs", "1", "--ft-epochs", "1", "--seed", "5"],
                       check=True, capture_output=True, timeout=300)
        ck = load_checkpoint(out)
        digests.append(weights_digest(ck.model.state_dict()))
        paths.append(ck.provenance["environment"]["kernel_path"])
    assert digests[0] == digests[1] and paths[0] == paths[1]


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
    assert [(h["stage"], h["epoch"]) for h in hist] == [("blockwise", 1), ("blockwise", 2),
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
