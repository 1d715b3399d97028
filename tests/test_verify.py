"""farc.check.verify and `farc verify`: metrics, tolerances, reference lookup, the per-layer
checks, the CLI.

Hand-built programs (farc.runtime.builder) with a one-Linear torch model keep these fast;
the compiled digits FAR / DeiT checks live at the end and use the session fixtures of
tests/conftest.py."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from farc.runtime import builder
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from xbar_flat import xp

from farc.check.qdq import reference_paths, save_onnx
from farc.check.reference import build_reference
from farc.check.verify import (
    EMULATOR,
    FLOAT,
    REFERENCE,
    References,
    Tolerances,
    compare,
    evaluate,
    program_is_lossless,
    resolve_references,
)
from farc.errors import ConfigError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- metrics
def test_compare_identical_outputs():
    a = RNG.normal(size=(6, 10)).astype(np.float32)
    s = compare("a", a, "b", a.copy())
    assert (s.max_abs, s.mean_abs, s.rel, s.agreement) == (0.0, 0.0, 0.0, 1.0)
    assert s.cosine == pytest.approx(1.0) and s.min_cosine == pytest.approx(1.0)


def test_compare_measures_error_against_reference_peak():
    b = np.array([[1.0, 4.0], [2.0, -1.0]], np.float32)
    a = b + np.array([[0.0, 0.2], [0.0, 0.0]], np.float32)
    s = compare("a", a, "b", b)
    assert s.max_abs == pytest.approx(0.2) and s.max_rel == pytest.approx(0.05)
    assert s.mean_abs == pytest.approx(0.05) and s.rel == pytest.approx(0.2 / 8)
    assert s.sample_rel == pytest.approx((0.05, 0.0)) and s.identical == 1
    flipped = compare("a", b[:, ::-1].copy(), "b", b)
    assert flipped.agreement == 0.0


def test_compare_refuses_shape_mismatch():
    from farc.check.verify import VerifyError

    with pytest.raises(VerifyError, match=r"emulator output shape \[2, 3\] differs"):
        compare("emulator", np.zeros((2, 3)), "qdq", np.zeros((2, 4)))


def _outs(emu_shift: float = 0.0, float_flip: int = 0) -> dict[str, np.ndarray]:
    q = RNG.normal(size=(100, 10)).astype(np.float32)
    f = q.copy()
    f[:float_flip] = -f[:float_flip]
    return {EMULATOR: q + emu_shift, REFERENCE: q, FLOAT: f}


def test_evaluate_lossless_passes_when_exact():
    r = evaluate(_outs(), None, lossless=True, noise=False, tol=Tolerances())
    assert r.ok and r.failure_line() == ""
    assert [c.passed for c in r.checks] == [True, True, True]


def test_evaluate_fails_emulator_vs_reference_beyond_tolerance():
    r = evaluate(_outs(emu_shift=0.05), None, lossless=True, noise=False, tol=Tolerances())
    assert not r.ok
    assert r.failure_line().startswith("emulator vs reference logits: relative error 0.0")
    assert "0/100 samples identical" in r.failure_line()


def test_evaluate_tolerates_a_rounding_tie_in_one_sample():
    """A propagated one-LSB rounding tie moves one sample's logits by ~1 %: normwise that
    is 1e-4, well inside 1e-3, while a 1 % error on every sample is not."""
    o = _outs()
    o[EMULATOR] = o[EMULATOR].copy()
    o[EMULATOR][7] *= 1.01
    r = evaluate(o, None, lossless=True, noise=False, tol=Tolerances())
    assert r.ok, r.failure_line()
    assert "99/100 samples identical, worst sample 0.01" in r.checks[0].detail
    o[EMULATOR] = o[REFERENCE] * 1.01
    assert not evaluate(o, None, lossless=True, noise=False, tol=Tolerances()).ok


def test_evaluate_leaves_free_running_logits_to_lossless_programs():
    """With noise the free-running logits are not checked."""
    r = evaluate(_outs(emu_shift=0.05), None, lossless=True, noise=True, tol=Tolerances())
    assert r.ok
    assert r.checks[0].passed is None and "noise enabled" in r.checks[0].detail


def test_evaluate_reports_the_lossy_spread_with_its_cause():
    """Through a lossy ADC, ulp differences between numpy and torch kernels grow from layer
    to layer (measured on puma: 0.4 relative at the logits of a correct program), so the
    layer-by-layer checks decide there; the end-to-end gap is measured and reported with
    its cause, never failed."""
    o = _outs()
    o[EMULATOR] = o[EMULATOR].copy()
    o[EMULATOR][:3] = -o[EMULATOR][:3]  # three samples' top-1 moved by the spread
    r = evaluate(o, None, lossless=False, noise=False, tol=Tolerances(min_agreement=0.9))
    assert r.ok, r.failure_line()
    c = r.checks[0]
    assert (c.name, c.passed, c.measured) == ("emulator vs reference spread", None, True)
    assert "97/100 samples identical; top-1: 3 of 100 samples differ (3.00%)" in c.detail
    assert "rounding tie" in c.detail and "numpy" in c.detail and "torch" in c.detail


def test_per_time_step_output_gets_element_error_or_decisions():
    """Must show (issue 28): an output per time step ([batch, T, 1]) is not a classifier's:
    no argmax over time; per-element error is reported, and with a decision threshold the
    (y > T) decisions are checked against --min-agreement ([batch, T] too, which without a
    threshold reads as [batch, classes])."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, size=(50, 40, 1)).astype(np.float32)
    emu = ref + rng.normal(0, 0.01, size=ref.shape).astype(np.float32)  # lossy, correct
    o = {EMULATOR: emu, REFERENCE: ref, FLOAT: ref}
    # argmax over time would flip on most samples; the old top-1 check failed here
    assert (emu.argmax(1) != ref.argmax(1)).mean() > 0.05
    r = evaluate(o, np.zeros(50, np.int64), lossless=False, noise=False, tol=Tolerances())
    assert r.ok, r.failure_line()
    assert r.accuracy is None and r.pairs[EMULATOR, FLOAT].agreement is None
    c = next(c for c in r.checks if c.name == "emulator vs float error")
    assert c.measured and "output [batch, 40, 1] is not [batch, classes]" in c.detail
    o = {k: v[..., 0] for k, v in o.items()}  # [batch, T]
    assert not evaluate(o, None, lossless=False, noise=False, tol=Tolerances()).ok
    tol = Tolerances(decision_threshold=0.5)
    r = evaluate(o, None, lossless=False, noise=False, tol=tol)
    fl = r.pairs[EMULATOR, FLOAT]
    assert 0.97 < fl.decisions < 1 and r.ok, r.failure_line()
    assert "emulator vs float decisions (y > 0.5): agreement" in \
        [f"{c.name}: {c.detail}" for c in r.checks][1]
    o[EMULATOR] = 1 - o[REFERENCE]  # a wrong program: decisions flipped
    r = evaluate(o, None, lossless=False, noise=False, tol=tol)
    assert "emulator vs float decisions (y > 0.5): agreement 0.00%" in r.failure_line()


def test_evaluate_fails_low_agreement_with_float():
    r = evaluate(_outs(float_flip=5), None, lossless=True, noise=False,
                 tol=Tolerances(min_agreement=0.99))
    assert not r.ok
    assert "emulator vs float top-1: agreement 95.00% (limit 99.00%" in r.failure_line()


def test_evaluate_accuracy_drop_check():
    o = _outs(float_flip=0)
    labels = o[FLOAT].argmax(1)
    o[EMULATOR] = o[EMULATOR].copy()
    o[EMULATOR][:2] = -o[EMULATOR][:2]  # two wrong: 2 pt drop
    o[REFERENCE] = o[EMULATOR].copy()  # ... that the reference makes too
    r = evaluate(o, labels, lossless=False, noise=False,
                 tol=Tolerances(min_agreement=0.9, max_acc_drop=0.5))
    assert r.accuracy == {EMULATOR: 0.98, REFERENCE: 0.98, FLOAT: 1.0}
    assert "accuracy drop: emulator 98.00% vs float 100.00%: 2.00 pt" in r.failure_line()
    r = evaluate(o, labels, lossless=False, noise=False,
                 tol=Tolerances(min_agreement=0.9, max_acc_drop=2.0))
    assert r.ok


# ----------------------------------------------------------------------------- programs


def ridge_classifier() -> tuple[np.ndarray, np.ndarray]:
    """A linear digits classifier (ridge regression on one-hot labels): real margins, so
    8-bit quantization rarely flips a decision, unlike random weights."""
    from farc.data import load_split

    x, y = load_split("digits", "train")
    a = np.concatenate([x.numpy().reshape(len(x), -1), np.ones((len(x), 1))], 1)
    sol = np.linalg.solve(a.T @ a + 1.0 * np.eye(65), a.T @ np.eye(10)[y.numpy()])
    return sol[:64].astype(np.float32), sol[64].astype(np.float32)


def classifier_program(adc_bits: int = 16, adc_range: str = "full",
                       provenance: dict | None = None):
    """digits image [1, 8, 8] -> reshape [64] -> crossbar layer -> 10 logits."""
    w, b = ridge_classifier()
    p = xp(rows=32, cols=32, cell_bits=2, dac_bits=1, adc_bits=adc_bits,
                           adc_range=adc_range)
    layer = builder.pack_layer(w, b, 1.0 / 127, p, name="head", kind="classifier",
                               adc_pmax=63 if adc_range == "calibrated" else None)
    ins = [dict(op="input", name="x", out="x"),
           dict(op="reshape", shape=[64], **{"in": ["x"]}, out="v"),
           dict(op="mvm", layer=0, **{"in": ["v"]}, out="logits"),
           dict(op="output", name="logits", **{"in": ["logits"]})]
    model = {"kind": "handmade", "name": "digits-linear", "config": {},
             "provenance": provenance or {}}
    prog = builder.make_program(ins, {"x": [1, 8, 8]}, {"logits": [10]}, [layer], model=model)
    return prog, w, b


def float_classifier_onnx(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["v"]),
             helper.make_node("MatMul", ["v", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["logits"])]
    g = helper.make_graph(nodes, "float", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 1, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
         numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def test_lossless_detection_follows_adc_bits():
    assert program_is_lossless(classifier_program(adc_bits=16)[0])
    assert not program_is_lossless(classifier_program(adc_bits=4)[0])


def test_lossless_detection_uses_programmed_codes():
    # calibrated 6-bit ADC at step 1: 63 levels < the full-scale 32 * 3 = 96, yet lossless
    # exactly when no column of these codes sums past 63
    prog, *_ = classifier_program(adc_bits=6, adc_range="calibrated")
    codes = prog.arrays[prog.layers[0]["arrays"]["codes"]].astype(int)
    assert codes.sum(axis=2).max() <= 63 < 96
    assert program_is_lossless(prog)
    codes[0, 0, :, 0] = 3  # one column now sums to 96
    prog.arrays[prog.layers[0]["arrays"]["codes"]] = codes.astype(np.uint8)
    assert not program_is_lossless(prog)


def _flip_program(flip: bool):
    """isaac's crossbar numerics (128 rows, 2-bit cells, 1-bit DAC, 8-bit full-range ADC,
    16-bit offset weights) with one all-maximal weight column: its logical codes sum to
    3 * 128 = 384 > 255, so only flip encoding (which stores that column complemented)
    keeps the ADC lossless."""
    w = np.random.default_rng(3).uniform(-1, 1, size=(128, 4)).astype(np.float32)
    w[:, 0] = 1.0  # q = Qw on every row: offset level 2*Qw = 0b1111...10 -> slices of 3s
    p = xp(rows=128, cols=128, cell_bits=2, dac_bits=1, adc_bits=8,
                           weight_bits=16, input_bits=16, mapping="offset", adc_flip=flip)
    layer = builder.pack_layer(w, None, 1.0 / 32767, p, name="fc")
    ins = [dict(op="input", name="x", out="x"), dict(op="mvm", layer=0, **{"in": ["x"]},
                                                     out="y"),
           dict(op="output", name="y", **{"in": ["y"]})]
    return builder.make_program(ins, {"x": [128]}, {"y": [4]}, [layer])


@pytest.mark.parametrize("flip", [True, False])
def test_verify_and_emulator_agree_on_lossless_with_flip_encoding(flip):
    """Regression (issue 10): verify judged losslessness on the logical codes and so skipped
    its exact check on flip-encoded layers that the emulator runs losslessly."""
    from farc.runtime.emulator import Emulator

    prog = _flip_program(flip)
    codes = prog.arrays[prog.layers[0]["arrays"]["codes"]].astype(int)
    assert codes.sum(axis=2).max() == 384  # the logical codes alone overflow 255
    emu = Emulator(prog)
    assert program_is_lossless(prog) is flip
    assert [pl.lossless for pl in emu.layers] == [flip]
    x = np.random.default_rng(4).uniform(-1, 1, size=(5, 128)).astype(np.float32)
    fast, bit = emu.run({"x": x})["y"], Emulator(prog, mvm_path="bitlevel").run({"x": x})["y"]
    if flip:  # lossless: the bit-level path (ADC, flip recovery) equals the one-matmul path
        np.testing.assert_array_equal(fast, bit)


class LinearClassifier(nn.Module):
    """The torch model of `classifier_program`: its one crossbar layer is the module "head"."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(w.T))
            self.head.bias.copy_(torch.from_numpy(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(-1, 64))


def _refs(prog, w, b) -> References:
    return References(float_classifier_onnx(w, b), build_reference(LinearClassifier(w, b), prog))


def _digits(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    from farc.data import load_split

    x, y = load_split("digits", "test")
    return x[:n].numpy(), y[:n].numpy()


@pytest.mark.parametrize(("adc_bits", "adc_range"), [(16, "full"), (4, "full"),
                                                     (5, "calibrated")])
def test_hand_built_program_equals_the_reference_exactly(adc_bits, adc_range):
    """Lossless or not, the emulator's integers equal the reference's on both paths."""
    from farc.check.verify import verify

    prog, w, b = classifier_program(adc_bits=adc_bits, adc_range=adc_range)
    x, y = _digits()
    r = verify(prog, x, y, _refs(prog, w, b), tol=Tolerances(min_agreement=0.0),
               bitlevel_samples=16, per_layer=True)
    assert r.lossless is (adc_bits == 16)
    eq = r.pairs[(EMULATOR, REFERENCE)]
    assert r.ok, r.failure_line()
    assert eq.agreement == 1.0 and eq.max_rel <= 1e-6
    assert [len(r.layers[k]) for k in ("fast", "bitlevel")] == [1, 1]
    assert r.layers["bitlevel"][0].vectors == 16 and r.layers["fast"][0].mismatched == 0
    assert not r.divergence[0].diverged and r.divergence[0].y_rel < 1e-6


def test_a_program_altered_after_compilation_fails_and_names_the_layer():
    """Structurally valid, numerically wrong: two rows' codes swapped. The reference
    comes from the model, so the exact per-layer check names the layer."""
    from farc.check.verify import verify

    prog, w, b = classifier_program()
    name = prog.layers[0]["arrays"]["codes"]
    codes = prog.arrays[name].copy()
    codes[0, :, [0, 5], :] = codes[0, :, [5, 0], :]
    prog.arrays[name] = codes
    prog.validate()  # still a valid program
    x, y = _digits(32)
    r = verify(prog, x, y, _refs(prog, w, b), tol=Tolerances(min_agreement=0.0))
    assert not r.ok
    assert "layer integers (fast path): first wrong layer head (instruction 2)" in \
        r.failure_line()


def test_reference_needs_the_model(tmp_path):
    prog, *_ = classifier_program()
    with pytest.raises(ConfigError, match=r"builds its reference from the model.*--checkpoint"):
        resolve_references(prog, tmp_path / "model.farc")
    with pytest.raises(ConfigError, match=r"--checkpoint .*nope.pt: no such file"):
        resolve_references(prog, None, checkpoint=tmp_path / "nope.pt")


def test_reference_refuses_a_model_that_is_not_the_program():
    from farc.check.reference import ReferenceError

    prog, w, b = classifier_program()
    wrong = LinearClassifier(w, b)
    wrong.head = nn.Linear(64, 12)
    with pytest.raises(ReferenceError, match=r"layer head: the checkpoint's weight is \[64, 12\]"):
        build_reference(wrong, prog)
    other = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(ReferenceError, match="crossbar layers the checkpoint does not: head"):
        build_reference(other, prog)


def test_float_model_beside_the_program_is_used(tmp_path):
    prog, w, b = classifier_program()
    path = prog.save(tmp_path / "model.farc")
    fpath = reference_paths(path)[0]
    save_onnx(float_classifier_onnx(w, b), fpath)
    refs = resolve_references(prog, path, model=LinearClassifier(w, b))
    assert refs.float_model == fpath and refs.notes[FLOAT] == str(fpath)
    with pytest.raises(ConfigError, match=r"--float-onnx .*nope.onnx: no such file"):
        resolve_references(prog, path, model=LinearClassifier(w, b),
                           float_onnx=tmp_path / "nope.onnx")


# ----------------------------------------------------------------------------- compiled models
needs_compiler = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                                    reason="apache-tvm is not installed")


def digits_target(adc_bits: int, adc_range: str = "full", flip: bool = False):
    """ISAAC's crossbars (128 x 128, 2-bit cells, 1-bit DAC) with 8-bit weights and inputs
    (ISAAC's flip encoding off unless asked for)."""
    from farc.targets import load_target

    return load_target("isaac").with_overrides(**{
        "quant.weight_bits": 8, "quant.input_bits": 8, "quant.mapping": "differential",
        "crossbar.cell_bits": 2, "dac.bits": 1, "adc.bits": adc_bits, "adc.range": adc_range,
        "adc.flip": flip})


def compile_with_references(model, target, folder, name: str):
    """compile -> model.farc + model.float.onnx + model.qdq.onnx, as `--emit-onnx` lays out."""
    from farc.check.qdq import write_reference_models
    from farc.compiler import CompileOptions, compile_checkpoint

    prog = compile_checkpoint(model, target, CompileOptions(calib_samples=128))
    path = folder / f"{name}.farc"
    prog.save(path)
    write_reference_models(prog, model, path)
    return prog, path


@pytest.fixture(scope="module")
def test_split():
    from farc.data import load_split

    x, y = load_split("digits", "test")
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def trained_far():
    """A digits FAR trained for real (~30 s on 2 cores): 2 blocks, 4 x 4 patches (5 tokens),
    4 heads of 16 hidden units per direction; about 97 % test accuracy. Trained margins make
    the agreement and accuracy checks meaningful (random weights give near-ties)."""
    import dataclasses

    import torch

    from farc.data import load_split
    from farc.far.train import TrainConfig, train_classifier
    from farc.models.deit import DEIT_PRESETS
    from farc.models.far import FAR, FARConfig

    torch.manual_seed(0)
    cfg = dataclasses.replace(DEIT_PRESETS["deit_digits"], depth=2, patch_size=4)
    model = FAR(FARConfig.dense(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend (15x slower measured)
    try:
        train_classifier(model, load_split("digits", "train"), load_split("digits", "val"),
                         TrainConfig(epochs=12, batch_size=32, lr=5e-3, warmup_epochs=1,
                                     label_smoothing=0.0, weight_decay=0.0))
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["far_digits", "deit_digits", "pruned_far_digits",
                                  "trained_far"])
def test_lossless_program_equals_the_reference(kind, request, test_split, tmp_path, capsys):
    """Must show: lossless ADC -> emulator vs reference top-1 100 %, logits within 1e-3
    relative, every layer's integers identical on the fast and the bit-level path."""
    from farc.runtime.program import Program

    from farc.check.verify import verify

    model = request.getfixturevalue(kind)
    target = digits_target(adc_bits=9)
    assert target.xbar.full_range_lossless
    prog, path = compile_with_references(model, target, tmp_path, kind)
    assert program_is_lossless(prog)
    x, y = test_split
    refs = resolve_references(Program.load(path), path, model=model)
    r = verify(Program.load(path), x, y, refs, bitlevel_samples=4)
    eq = r.pairs[(EMULATOR, REFERENCE)]
    with capsys.disabled():
        print(f"\n{kind}: emulator vs reference rel {eq.rel:.3g}, max rel {eq.max_rel:.3g}, "
              f"{eq.identical}/{r.samples} identical, top-1 {eq.agreement:.2%}; vs float "
              f"top-1 {r.pairs[(EMULATOR, FLOAT)].agreement:.2%}; accuracy {r.accuracy}")
    assert eq.agreement == 1.0
    assert eq.rel <= 1e-3
    assert all(it.ok for path_ in ("fast", "bitlevel") for it in r.layers[path_])
    assert len(r.layers["bitlevel"]) == len(prog.layers)
    if kind == "trained_far":
        assert r.ok, r.failure_line()


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("adc_bits,adc_range,flip", [(8, "calibrated", False),
                                                     (8, "full", True), (8, "full", False),
                                                     (6, "calibrated", False)])
def test_lossy_adc_equals_the_reference_exactly(trained_far, test_split, tmp_path, adc_bits,
                                                adc_range, flip):
    """Must show: lossy programs (6-bit calibrated, 8-bit full) are checked exactly, layer by
    layer on both MVM paths; and the 8-bit ways of staying accurate (a calibrated range, or
    ISAAC's full range with flip encoding) agree with float on >= 99 % of the test split
    within 0.5 pt of its accuracy. Without either, 128 rows x 1-bit DAC x 2-bit cells
    (Pmax 384) need 9 bits, so an 8-bit ADC steps by 2 (see docs/verify.md)."""
    from farc.check.verify import verify

    target = digits_target(adc_bits=adc_bits, adc_range=adc_range, flip=flip)
    prog, path = compile_with_references(trained_far, target, tmp_path, "far8")
    x, y = test_split
    accurate = adc_bits == 8 and (adc_range == "calibrated" or flip)
    tol = Tolerances(min_agreement=0.99 if accurate else 0.0,
                     max_acc_drop=0.5 if accurate else None)
    r = verify(prog, x, y, resolve_references(prog, path, model=trained_far), tol=tol,
               bitlevel_samples=4)
    fl = r.pairs[(EMULATOR, FLOAT)]
    print(f"\n{adc_bits}-bit ADC ({adc_range}, flip {flip}): lossless={r.lossless}, "
          f"vs float top-1 {fl.agreement:.2%}, rel {fl.rel:.3g}, accuracy {r.accuracy}")
    assert r.samples == 360
    assert all(it.ok for p in ("fast", "bitlevel") for it in r.layers[p])
    assert r.ok, r.failure_line()


@pytest.fixture(scope="module")
def compiled_deit(deit_checkpoint, tmp_path_factory):
    """The random digits DeiT compiled from its checkpoint (provenance names it), lossless."""
    from farc.compiler import CompileOptions, compile_checkpoint

    prog = compile_checkpoint(str(deit_checkpoint), digits_target(adc_bits=9),
                              CompileOptions(calib_samples=32))
    return prog.save(tmp_path_factory.mktemp("verify_cli") / "deit.farc")


@needs_compiler
@pytest.mark.slow
def test_cli_builds_the_reference_from_the_provenance_checkpoint(compiled_deit,
                                                                  deit_checkpoint, capsys):
    """No reference files beside the program: the reference is built from the checkpoint the
    compiler recorded in the provenance, and the float model exported from it."""
    from farc.cli import main

    main(["verify", str(compiled_deit), "--samples", "32", "--min-agreement", "0",
          "--per-layer"])
    out = capsys.readouterr().out
    for text in ("emulator vs reference", "emulator vs float", "reference vs float",
                 "layer integers (fast path)", "layer integers (bitlevel path)",
                 "Per layer, in execution order", "per-layer divergence", "pass"):
        assert text in out
    assert f"reference: built from {deit_checkpoint.resolve()}" in " ".join(out.split())
    assert not any(p.exists() for p in reference_paths(compiled_deit))


@needs_compiler
@pytest.mark.slow
def test_cli_exits_nonzero_with_one_line_naming_the_check(compiled_deit, tmp_path, capsys):
    """A checkpoint of another model: same shapes, other weights -> the integers differ."""
    import shutil

    from farc.cli import main
    from farc.models.checkpoint import load_checkpoint, save_checkpoint

    other = load_checkpoint(str(load_checkpoint_path(compiled_deit))).model
    with torch.no_grad():
        other.head.weight.mul_(-1)
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, other, {"note": "negated head"})
    prog_path = tmp_path / "deit.farc"
    shutil.copy(compiled_deit, prog_path)
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(prog_path), "--samples", "16", "--checkpoint", str(ckpt)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("farc: error: verify failed: emulator vs reference logits")
    assert "first wrong layer head (instruction" in err[-1]


def load_checkpoint_path(program_path):
    from farc.runtime.program import Program

    from farc.check.verify import checkpoint_from_provenance

    return checkpoint_from_provenance(Program.load(program_path))


@needs_compiler
@pytest.mark.slow
def test_cli_noise_skips_exactness(compiled_deit, capsys):
    from farc.cli import main

    main(["verify", str(compiled_deit), "--samples", "16", "--noise", "read_sigma=0.001",
          "--min-agreement", "0"])
    assert "not checked: noise enabled" in capsys.readouterr().out


def test_cli_refuses_a_bad_bitlevel_sample_count(tmp_path, capsys):
    from farc.cli import main

    prog, *_ = classifier_program()
    path = prog.save(tmp_path / "m.farc")
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(path), "--bitlevel-samples", "0"])
    assert exc.value.code == 1
    assert "--bitlevel-samples '0' must be a whole number >= 1 or 'all'" in \
        capsys.readouterr().err
