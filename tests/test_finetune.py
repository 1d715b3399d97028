"""`farc finetune` and `farc run --seeds`: the fine-tune trains against the scales `farc
compile` gives, writes a checkpoint that compiles, and the CLI's bad inputs are one-line
errors. (The numerics themselves: tests/test_finetune_numerics.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
from farc.runtime.program import Program
from farc.runtime.schema import DeviceSection
from farc.targets import load_target
from xbar_flat import xp

from farc import distributed as D
from farc.cli import main
from farc.compiler.driver import CompileOptions, compile_checkpoint
from farc.data import load_split
from farc.far.distill import Run, TrainOptions, state_path_for
from farc.far.finetune import FinetuneOptions, run_finetune
from farc.models.checkpoint import load_checkpoint, save_checkpoint


def farc(capsys, *args: object) -> tuple[int, str]:
    """`farc ARGS` in this process: (exit code, stdout + stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def tuned(pruned_far_checkpoint, tmp_path_factory):
    """Two steps of noisy fine-tuning on 16 images (a smoke run, not an accuracy claim)."""
    torch.manual_seed(0)
    model = load_checkpoint(pruned_far_checkpoint).model
    x, y = load_split("digits", "train")
    xt, yt = load_split("digits", "test")
    world = D.setup("cpu")
    out = tmp_path_factory.mktemp("ft") / "ft.pt"
    opts = FinetuneOptions(epochs=1, eval_seeds=1, calib_samples=8,
                           train=TrainOptions(batch_size=8, seed=0, eval_batch=8))
    run = Run(world, (x[:16], y[:16]), (x[:8], y[:8]), opts.train, state_path_for(out), {})
    target = load_target("isaac").with_overrides(**{"adc.bits": 9, "adc.range": "full"})
    tuned, report = run_finetune(model, None, target.xbar, DeviceSection(prog_sigma=0.02), run,
                                 opts, (xt[:8], yt[:8]), x[:8])
    save_checkpoint(out, tuned, {"command": "finetune", **report})
    return out, report, target, model


def test_the_result_compiles_with_the_scales_it_trained_against(tuned):
    path, report, target, before = tuned
    assert report["recalibrations"] >= 2 and report["history"][0]["stage"] == "hw-finetune"
    program = compile_checkpoint(str(path), target,
                                 CompileOptions(calib_samples=8, data="digits"))
    program.save(path.with_suffix(".farc"))  # the provenance travels into the manifest
    program = Program.load(path.with_suffix(".farc"))
    from farc.far.finetune import calibrate_layers

    x, _ = load_split("digits", "train")
    mine = calibrate_layers(load_checkpoint(path).model, x[:8], target.xbar)
    for layer in program.layers:  # the compiler's calibration of the tuned weights
        assert mine[layer["name"]].in_scale == pytest.approx(layer["in_scale"], rel=1e-5)
        assert mine[layer["name"]].adc_step == layer["adc_step"]
    moved = [not torch.equal(a, b) for a, b in zip(load_checkpoint(path).model.parameters(),
                                                     before.parameters())]
    assert any(moved)


def test_finetune_metrics_are_reported(tuned):
    _, report, _, _ = tuned
    for when in ("before", "after"):
        m = report["metrics"][when]
        assert 0 <= m["numerics_test_acc"] <= 1 and 0 <= m["noisy_test_acc"] <= 1
    assert report["noise"]["prog_sigma"] == 0.02 and report["seconds"] > 0


@pytest.mark.parametrize("args,match", [
    (["--noise", "prog_sigma=x"], "bad --noise 'prog_sigma=x'"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--lr", "0"], "--lr must be finite and > 0"),
    (["--eval-seeds", "-2"], "--eval-seeds must be >= 0"),
])
def test_finetune_bad_options_are_one_line_errors(capsys, pruned_far_checkpoint, tmp_path, args,
                                                  match):
    code, out = farc(capsys, "finetune", pruned_far_checkpoint, "-o", tmp_path / "o.pt", *args)
    assert code == 1 and match in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


def test_finetune_refuses_to_overwrite_its_input(capsys, pruned_far_checkpoint):
    code, out = farc(capsys, "finetune", pruned_far_checkpoint, "-o", pruned_far_checkpoint)
    assert code == 1 and out.startswith("farc: error:") and "CKPT" in out


# ---------------------------------------------------------------- farc run --seeds
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(5)
    W = rng.normal(size=(24, 4)).astype(np.float32)
    x = rng.normal(size=(40, 24)).astype(np.float32)
    layer, arrays = pack_layer(W, None, scale_for_inputs(x, 8), xp(rows=16, cols=32))
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [24]}, {"y": [4]}, [(layer, arrays)])
    d = tmp_path_factory.mktemp("mc")
    prog.save(d / "m.farc")
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", (x @ W).argmax(1).astype(np.int64))
    return d


def _run(capsys, d, *args):
    return farc(capsys, "run", d / "m.farc", "--input", d / "x.npy", "--labels", d / "y.npy",
                *args)


def test_seeds_are_the_single_seed_runs(capsys, small):
    """Seed s of a Monte-Carlo run is exactly `farc run --seed s`; the summary is their
    mean, min and max."""
    code, out = _run(capsys, small, "--noise", "prog_sigma=0.2", "--seeds", "0..2", "-o",
                     small / "mc.npz")
    assert code == 0, out
    mc = np.load(small / "mc.npz")
    accs = []
    for s in range(3):
        c, o = _run(capsys, small, "--noise", "prog_sigma=0.2", "--seed", s, "-o",
                    small / f"s{s}.npy")
        assert c == 0, o
        np.testing.assert_array_equal(mc[f"y_seed{s}"], np.load(small / f"s{s}.npy"))
        accs.append(float(o.split("top-1 accuracy: ")[1].split("%")[0]))
    np.testing.assert_allclose(100 * mc["accuracy"], accs, atol=0.006)
    assert f"mean {np.mean(accs):.2f}%" in out and f"min {min(accs):.2f}%" in out
    assert list(mc["seeds"]) == [0, 1, 2] and len(set(accs)) > 1


@pytest.mark.parametrize("args,match", [
    (["--seeds", "0..3"], "give --noise"),
    (["--noise", "read_sigma=0.1", "--seeds", "a..b"], "bad --seeds 'a..b'"),
    (["--noise", "read_sigma=0.1", "--seeds", "1,1"], "distinct"),
    (["--noise", "read_sigma=0.1", "--seeds", "0..1", "--seed", "3"], "not both"),
])
def test_seeds_bad_inputs(capsys, small, args, match):
    code, out = _run(capsys, small, *args, "-o", small / "bad.npz")
    assert code == 1 and match in out and len(out.strip().splitlines()) == 1
    assert not (small / "bad.npz").exists()


def test_seeds_need_an_npz(capsys, small):
    code, out = _run(capsys, small, "--noise", "read_sigma=0.1", "--seeds", "0..1", "-o",
                     small / "bad.npy")
    assert code == 1 and "give an .npz" in out
