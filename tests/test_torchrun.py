"""`farc distill` under torchrun: 2 processes, DDP over gloo on CPU, one checkpoint out."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from farc.models.checkpoint import load_checkpoint, save_checkpoint
from farc.models.deit import DeiT, DeiTConfig

TINY = DeiTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                  num_heads=2, mlp_ratio=1.0)
LAUNCHER = "from farc.cli import main\nmain()\n"


def test_two_process_gloo_distill(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "t.pt", DeiT(TINY), {})
    (tmp_path / "farc_main.py").write_text(LAUNCHER)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "farc_main.py"), "distill", str(tmp_path / "t.pt"),
           "-o", str(tmp_path / "s.pt"), "--epochs", "1", "--ft-epochs", "1",
           "--batch-size", "128", "--device", "cpu"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "s.pt", expect="far")
    assert ck.provenance["world_size"] == 2
    assert [h["stage"] for h in ck.provenance["history"]] == ["blockwise", "finetune"]
    # rank 0 alone prints the report: one accuracy table, not two
    assert proc.stdout.count("Accuracy") == 1
    x = torch.zeros(2, 1, 8, 8)
    assert torch.isfinite(ck.model(x)).all()
