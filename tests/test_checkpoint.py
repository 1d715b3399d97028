"""farc.models.checkpoint: round trips (DeiT, FAR, pruned FAR) and every way a file can be bad."""

from __future__ import annotations

import pytest
import torch

from farc.errors import CheckpointError
from farc.models.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)


def _same_outputs(a, b) -> None:
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deit_checkpoint", "far_checkpoint", "pruned_far_checkpoint"])
def test_round_trip(name, request):
    path = request.getfixturevalue(name)
    model = request.getfixturevalue(name.replace("_checkpoint", "_digits"))
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.kind == model.kind
    assert ckpt.config == model.cfg.to_dict()
    assert not ckpt.model.training
    assert "note" in ckpt.provenance
    _same_outputs(model, ckpt.model)


def test_pruned_far_keeps_its_hidden_sizes(pruned_far_checkpoint, pruned_far_digits):
    ckpt = load_checkpoint(pruned_far_checkpoint, expect="far")
    assert ckpt.model.cfg.hidden == pruned_far_digits.cfg.hidden
    assert ckpt.model.blocks[0].far.lstm_fwd[0].hidden_size == 5
    assert ckpt.model.blocks[0].far.lstm_bwd[0].hidden_size == 9


def test_provenance_round_trips_nested_json(tmp_path, deit_digits):
    prov = {"teacher": {"path": "/x/teacher.pt", "sha256": "ab" * 32},
            "metrics": {"test_acc": 0.9667, "history": [0.1, 0.5]}, "seed": 3}
    save_checkpoint(tmp_path / "m.pt", deit_digits, prov)
    assert load_checkpoint(tmp_path / "m.pt").provenance == prov


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, deit_digits):
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(path, deit_digits, {})
    save_checkpoint(path, deit_digits, {"again": True})  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]


def test_unsavable_provenance_writes_nothing(tmp_path, deit_digits):
    with pytest.raises(CheckpointError, match="provenance is not JSON-able"):
        save_checkpoint(tmp_path / "m.pt", deit_digits, {"bad": object()})
    assert not any(tmp_path.iterdir())


def test_save_refuses_a_non_farc_model(tmp_path):
    with pytest.raises(CheckpointError, match="cannot save a Linear: not a farc model"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2), {})


# ----------------------------------------------------------------------------- bad files
CASES = [  # every key of the bad_checkpoints fixture (tests/conftest.py)
   "truncated", "garbage", "empty", "bitflip", "version", "foreign", "config_vs_shape",
         "extra_tensor", "missing", "torch_save"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_one_line_checkpoint_error(case, bad_checkpoints):
    path, pattern = bad_checkpoints[case]
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_kind(far_checkpoint, deit_checkpoint):
    with pytest.raises(CheckpointError, match="holds a far model, expected deit"):
        load_checkpoint(far_checkpoint, expect="deit")
    with pytest.raises(CheckpointError, match="holds a deit model, expected far"):
        load_checkpoint(deit_checkpoint, expect="far")


def test_digest_covers_names_and_shapes():
    a = {"w": torch.zeros(2, 3)}
    assert weights_digest(a) != weights_digest({"v": torch.zeros(2, 3)})
    assert weights_digest(a) != weights_digest({"w": torch.zeros(3, 2)})
    assert weights_digest(a) == weights_digest({"w": torch.zeros(2, 3)})
