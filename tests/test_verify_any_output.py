"""verify for any model (issue 28, Deliver 2): a model whose output is one probability per
time step, compiled through a lossy ADC, verifies without `--min-agreement 0`: top-1 (an
argmax over time) no longer applies to it; per-element error is measured and, with
`--decision-threshold`, the (y > T) decisions are checked against --min-agreement.

Expected values never come from farc: the float model is onnxruntime on the exported
model, the reference is rebuilt from the user's .pt2 file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")
from test_byom import _cli

T, F, H = 8, 8, 16


class FrameVAD(nn.Module):
    """A voice-activity-like detector: an LSTM over T frames of F features and one
    probability per frame ([batch, T, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(F, H, batch_first=True)
        self.out = nn.Linear(H, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return torch.sigmoid(self.out(y))


@pytest.fixture(scope="module")
def lossy_vad(tmp_path_factory):
    """FrameVAD saved as .pt2, compiled for ISAAC with a 5-bit calibrated ADC (lossy: the
    LSTM cell's columns sum up to 24 rows x 3)."""
    from farc.targets import load_target

    from farc.check.verify import program_is_lossless
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    root = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    module = FrameVAD().eval()
    with torch.no_grad():  # decisive outputs, as a trained detector's
        module.out.weight.mul_(8.0)
    path = root / "vad.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module, (torch.randn(2, T, F),)), str(path))
    x = np.random.default_rng(0).normal(size=(96, T, F)).astype(np.float32)
    np.save(root / "x.npy", x)
    target = load_target("isaac").with_overrides(**{"adc.bits": 5, "adc.range": "calibrated"})
    program = compile_checkpoint(path, target, CompileOptions(
        calib_images=torch.from_numpy(x[:32]), calib_samples=32, calib_source=str(root /
                                                                                 "x.npy")))
    assert not program_is_lossless(program)
    prog_path = root / "vad.farc"
    program.save(prog_path)
    return program, prog_path, x, root


def test_per_time_step_lossy_program_verifies(lossy_vad) -> None:
    """Must show (issue 28): the lossy per-time-step program passes at the default
    --min-agreement; the emulator-vs-reference gap is reported as measured, with its cause."""
    from farc.check.verify import (
        EMULATOR,
        FLOAT,
        REFERENCE,
        Tolerances,
        report_for_outputs,
        resolve_references,
        run_models,
        verify,
    )

    program, _, x, _ = lossy_vad
    refs = resolve_references(program, None)
    report = verify(program, x, None, refs, bitlevel_samples=2)
    assert report.ok, report.failure_line()
    assert report.output_shape == (len(x), T, 1) and report.accuracy is None
    names = {c.name: c for c in report.checks}
    assert names["emulator vs float error"].measured
    spread = names["emulator vs reference spread"]
    assert spread.measured and "rounding tie" in spread.detail
    assert names["layer integers (fast path)"].passed is True
    # the decisions (y > 0.5) against the default --min-agreement 0.99
    outputs = run_models(program, x, refs)
    tol = Tolerances(decision_threshold=0.5)
    r = report_for_outputs(program, outputs, None, refs, tol=tol)
    assert r.ok, r.failure_line()
    fl = r.pairs[EMULATOR, FLOAT]
    assert fl.decisions >= 0.99 and fl.agreement is None
    decided = (outputs[FLOAT] > 0.5).mean()
    assert 0.1 < decided < 0.9, decided  # the threshold splits the frames: not trivial
    assert r.pairs[EMULATOR, REFERENCE].decisions >= 0.99


def test_cli_decision_threshold(lossy_vad, capsys) -> None:
    """`farc verify --decision-threshold 0.5` on the lossy program: exit 0, the table's last
    column is the decisions' agreement."""
    _, prog_path, _, root = lossy_vad
    assert _cli("verify", prog_path, "--inputs-npy", root / "x.npy", "--bitlevel-samples",
                "1", "--decision-threshold", "0.5") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "decisions (y > 0.5)" in out and "emulator vs reference spread" in out


def test_streamed_in_batches_that_fit_the_memory_budget(lossy_vad, monkeypatch) -> None:
    """Memory bounded by --max-memory, independent of --samples: the batch is lowered to
    fit half the budget (the emulator's allocations on one input, measured), and the
    outputs do not depend on the batch; one input over the budget is refused in one line."""
    from farc.check.verify import (
        EMULATOR,
        FLOAT,
        REFERENCE,
        emulator_bytes_per_input,
        resolve_references,
        run_models,
    )
    from farc.errors import ConfigError
    from farc.limits import MEMORY_ENV

    program, _, x, _ = lossy_vad
    refs = resolve_references(program, None)
    whole = run_models(program, x, refs, batch_size=96)
    assert "batch" not in refs.notes
    per_input = emulator_bytes_per_input(program, x[:1])
    assert per_input > 0
    monkeypatch.setenv(MEMORY_ENV, str(int(per_input * 2 * 8.5)))  # 8 inputs a batch
    streamed = run_models(program, x, refs, batch_size=96)
    assert refs.notes["batch"].startswith("8 inputs at a time, not 96")
    np.testing.assert_array_equal(streamed[EMULATOR], whole[EMULATOR])  # numpy, per row
    for k in (REFERENCE, FLOAT):  # torch / onnxruntime kernels may block by batch size
        np.testing.assert_allclose(streamed[k], whole[k], rtol=1e-4, atol=1e-6, err_msg=k)
    monkeypatch.setenv(MEMORY_ENV, str(per_input))
    with pytest.raises(ConfigError, match=r"one input through the emulator .* --max-memory"):
        run_models(program, x, refs, batch_size=96)


def test_per_layer_checks_run_in_chunks_of_vectors(lossy_vad, monkeypatch) -> None:
    """The per-layer checks feed the reference's layers CHUNK_VECTORS vectors at a time
    (memory independent of the sequence length): 5 here, so 24 vectors per layer take five
    chunks, and every check still passes with every vector counted."""
    from farc.check import layers
    from farc.check.verify import resolve_references, verify

    program, _, x, _ = lossy_vad
    monkeypatch.setattr(layers, "CHUNK_VECTORS", 5)
    report = verify(program, x[:16], None, resolve_references(program, None),
                    bitlevel_samples=3)
    assert report.ok, report.failure_line()
    for path in ("fast", "bitlevel"):
        assert [it.vectors for it in report.layers[path]] == [3 * T, 3 * T], \
            [(it.name, it.vectors) for it in report.layers[path]]  # LSTM cell, then out
    assert all(not d.diverged for d in report.divergence)
