"""`farc verify`: the emulator against an independent reference and float onnxruntime.

Three models see the same images: the emulator running the tile program; the reference
(farc.check.reference), the checkpoint's own model with every crossbar matmul computed from
its float weights as docs/numerics.md says, ADC included, taking from the program only what
a user chose or calibrated; and the float ONNX golden model. Every pair is compared (max /
mean absolute error, error relative to the reference's peak, cosine similarity, top-1
agreement), plus accuracy when labels exist. Per layer (farc.check.layers), a sample of the
inputs is run with tracing on the fast path and on `bitlevel_samples` inputs on the
bit-level path, and every layer's integers must equal the reference's exactly. The checks,
and why their thresholds are what they are, are documented in docs/verify.md:

- layer integers, fast and bit-level paths (no noise): bit-identical, every layer;
- per-layer divergence (no noise): every layer's input (the reference's digital steps fed
  the emulator's upstream outputs) and output (the reference's layer on the emulator's
  input) within float rounding of the emulator's; the first that is not is named;
- emulator vs reference logits (lossless ADC, no noise): relative error sum |a - b| / sum |b|
  at most `exact_rel` (1e-3) and top-1 agreement 100 %. Both compute the same integers; the
  only gap left is an activation sitting on a rounding boundary, which float kernels an ulp
  apart may round either way (rare, per sample). A bug shows up in most samples. Through a
  lossy ADC such ulps grow from layer to layer, so there the layer-by-layer checks decide;
- emulator vs float: top-1 agreement >= `min_agreement` (0.99);
- optionally, emulator accuracy no more than `max_acc_drop` points below float's.

This module holds the logic (importable, unit-tested); farc/commands/verify.py is the CLI.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from farc.errors import ConfigError, FarcError
from farc.runtime.numerics import layer_lossless

EMULATOR, REFERENCE, FLOAT = "emulator", "reference", "float"
PAIRS = ((EMULATOR, REFERENCE), (EMULATOR, FLOAT), (REFERENCE, FLOAT))
DEFAULT_BITLEVEL_SAMPLES = 8
"""Inputs run on the bit-level path as well (every layer's ADC, flip and shift-add)."""
PROVENANCE_KEYS = ("checkpoint", "checkpoint_path", "source_checkpoint", "ckpt", "source")


class VerifyError(FarcError):
    """A documented tolerance of `farc verify` failed."""


@dataclass(frozen=True)
class Tolerances:
    """The thresholds `farc verify` applies (docs/verify.md says why these values)."""

    exact_rel: float = 1e-3
    """Emulator vs reference (no noise): largest relative error of the logits,
    sum |a - b| / sum |b| over every sample and class. A normwise measure rather than the
    worst element: when an activation lies within float32 rounding of a quantization
    boundary, numpy's and onnxruntime's digital kernels (an ulp apart) may round it to
    neighbouring integers, and that one-LSB difference travels to that sample's logits.
    Such ties touch a few samples by up to ~1e-2; a real bug moves most samples."""
    exact_agreement: float = 1.0
    """Emulator vs reference (no noise): minimum top-1 agreement."""
    min_agreement: float = 0.99
    """Emulator vs float: minimum top-1 agreement."""
    max_acc_drop: float | None = None
    """Largest accepted drop of emulator accuracy below float's, in percentage points."""
    decision_threshold: float | None = None
    """Outputs are decisions `y > T` (`--decision-threshold T`): the agreement checks count
    elements whose decision is the same, whatever the output's shape, instead of top-1."""


@dataclass(frozen=True)
class PairStats:
    """How far output `a` is from reference `b` over a batch of samples."""

    a: str
    b: str
    max_abs: float
    mean_abs: float
    rel: float
    """sum |a - b| / sum |b|: the normwise (L1) relative error."""
    max_rel: float
    """max |a - b| / max |b|: the worst element against the reference's peak."""
    sample_rel: tuple[float, ...]
    """Per sample: max |a - b| / max |b| over that sample's outputs."""
    cosine: float
    """Mean over samples of the cosine similarity of the output vectors."""
    min_cosine: float
    agreement: float | None
    """Fraction of samples whose top-1 class is the same; None unless the output is a
    classifier's [batch, classes] (docs/verify.md)."""
    decisions: float | None = None
    """With a decision threshold T: fraction of output elements whose decision (y > T) is
    the same."""
    threshold: float | None = None

    @property
    def name(self) -> str:
        return f"{self.a} vs {self.b}"

    @property
    def identical(self) -> int:
        """Samples whose outputs are bitwise equal."""
        return sum(1 for r in self.sample_rel if r == 0.0)

    @property
    def decided(self) -> float | None:
        """The agreement the checks use: decisions (y > T) with a threshold, else top-1
        for a classifier's output, else None (per-element error only)."""
        return self.decisions if self.threshold is not None else self.agreement

    @property
    def decided_name(self) -> str:
        return f"decisions (y > {self.threshold:g})" if self.threshold is not None else \
            "top-1"


@dataclass(frozen=True)
class Check:
    """One tolerance: passed is None when it does not apply (and why is in detail)."""

    name: str
    passed: bool | None
    detail: str
    measured: bool = False
    """Reported as a measurement, not a limit (passed is None)."""


@dataclass
class VerifyReport:
    samples: int
    lossless: bool
    noise: bool
    pairs: dict[tuple[str, str], PairStats]
    accuracy: dict[str, float] | None
    checks: list[Check] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Where each model came from (file path or the checkpoint it was built from)."""
    layers: dict[str, list] = field(default_factory=dict)
    """MVM path ('fast', 'bitlevel') -> farc.check.layers.LayerIntegers per layer."""
    divergence: list | None = None
    """farc.check.layers.LayerDivergence per layer, in execution order (None: not run)."""
    show_layers: bool = False
    """Print the per-layer table (`--per-layer`)."""
    calibration: Any = None
    """farc.check.calibration.CalibrationResult (None: not attempted)."""
    strict_calibration: bool = False
    """A calibration check that could not run fails instead of being skipped."""
    output_shape: tuple[int, ...] = ()
    """The compared output's shape (first axis: samples)."""

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def failure_line(self) -> str:
        """One line naming every failed check (empty when all passed)."""
        failed = [c for c in self.checks if c.passed is False]
        return "; ".join(f"{c.name}: {c.detail}" for c in failed)


# ----------------------------------------------------------------------------- metrics
def top1(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).argmax(axis=1)


def is_classifier_output(shape: tuple[int, ...]) -> bool:
    """A classifier's output is [batch, classes]: top-1 agreement and accuracy apply to it
    only. A per-time-step output ([batch, T], [batch, T, k], ...) gets per-element error
    and, with a decision threshold, decision agreement."""
    return len(shape) == 2


def compare(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, *,
            threshold: float | None = None) -> PairStats:
    """Error statistics of `a` against reference `b` (same shape, first axis = samples)."""
    if a.shape != b.shape:
        raise VerifyError(f"{a_name} output shape {list(a.shape)} differs from {b_name}'s "
                          f"{list(b.shape)}")
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    err = np.abs(a64 - b64)
    peak = float(np.abs(b64).max(initial=0.0))
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, (a64 * b64).sum(1) / np.maximum(na * nb, 1e-300))
    max_abs = float(err.max(initial=0.0))
    return PairStats(a=a_name, b=b_name, max_abs=max_abs, mean_abs=float(err.mean()),
                     rel=_ratio(float(err.sum()), float(np.abs(b64).sum())),
                     max_rel=_ratio(max_abs, peak),
                     sample_rel=tuple(_ratio(float(e), float(p)) for e, p in
                                      zip(err.max(1, initial=0.0),
                                          np.abs(b64).max(1, initial=0.0))),
                     cosine=float(cos.mean()) if len(cos) else 1.0,
                     min_cosine=float(cos.min(initial=1.0)),
                     agreement=float((top1(a) == top1(b)).mean())
                     if is_classifier_output(a.shape) else None,
                     decisions=None if threshold is None else
                     float(((a > threshold) == (b > threshold)).mean()),
                     threshold=threshold)


def _ratio(err: float, peak: float) -> float:
    return err / peak if peak > 0 else (0.0 if err == 0 else math.inf)


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return float((top1(out) == labels.reshape(-1)).mean())


def evaluate(outputs: dict[str, np.ndarray], labels: np.ndarray | None, *, lossless: bool,
             noise: bool, tol: Tolerances) -> VerifyReport:
    """Compare the three models' outputs and apply the tolerances (no model runs here)."""
    n = len(outputs[EMULATOR])
    t = tol.decision_threshold
    pairs = {(a, b): compare(a, outputs[a], b, outputs[b], threshold=t) for a, b in PAIRS}
    acc = None if labels is None or not is_classifier_output(outputs[EMULATOR].shape) else \
        {k: accuracy(v, labels) for k, v in outputs.items()}
    report = VerifyReport(samples=n, lossless=lossless, noise=noise, pairs=pairs, accuracy=acc,
                          output_shape=tuple(outputs[EMULATOR].shape))
    report.checks = _checks(report, tol)
    return report


def _checks(r: VerifyReport, tol: Tolerances) -> list[Check]:
    eq = r.pairs[(EMULATOR, REFERENCE)]
    fl = r.pairs[(EMULATOR, FLOAT)]
    checks = []
    what = fl.decided_name
    if r.noise:
        checks.append(Check("emulator vs reference logits", None, "not checked: noise enabled"))
        checks.append(Check(f"emulator vs reference {what}", None,
                            "not checked: noise enabled"))
    elif not r.lossless:
        checks.append(Check("emulator vs reference spread", None, _spread(r, eq),
                            measured=True))
    else:
        checks.append(Check("emulator vs reference logits", eq.rel <= tol.exact_rel,
                            f"relative error {eq.rel:.3g} (limit {tol.exact_rel:g}); "
                            f"{eq.identical}/{r.samples} samples identical, worst sample "
                            f"{max(eq.sample_rel, default=0.0):.3g}"))
        if eq.decided is not None:
            checks.append(Check(f"emulator vs reference {what}",
                                eq.decided >= tol.exact_agreement,
                                f"agreement {eq.decided:.2%} (limit "
                                f"{tol.exact_agreement:.2%})"))
    if fl.decided is not None:
        checks.append(Check(f"emulator vs float {what}", fl.decided >= tol.min_agreement,
                            f"agreement {fl.decided:.2%} (limit {tol.min_agreement:.2%}, "
                            "--min-agreement)"))
    else:
        checks.append(Check("emulator vs float error", None,
                            f"output {_shape(r.output_shape)} is not [batch, classes]: "
                            "top-1 does not apply; per-element error: relative "
                            f"{fl.rel:.3g} (sum |a-b| / sum |b|), worst element {fl.max_abs:.3g}"
                            f" ({fl.max_rel:.3g} of the float peak), mean {fl.mean_abs:.3g}; "
                            "--decision-threshold T checks the (y > T) decisions",
                            measured=True))
    if tol.max_acc_drop is not None:
        if r.accuracy is None:
            checks.append(Check("accuracy drop", None, "not checked: no labels" if
                                is_classifier_output(r.output_shape) else
                                "not checked: not a classifier output"))
        else:
            drop = 100 * (r.accuracy[FLOAT] - r.accuracy[EMULATOR])
            checks.append(Check("accuracy drop", drop <= tol.max_acc_drop + 1e-9,
                                f"emulator {r.accuracy[EMULATOR]:.2%} vs float "
                                f"{r.accuracy[FLOAT]:.2%}: {drop:.2f} pt (limit "
                                f"{tol.max_acc_drop:g} pt, --max-acc-drop)"))
    checks += _layer_checks(r)
    if r.calibration is not None:
        checks.append(_calibration_check(r.calibration, r.strict_calibration))
    return checks


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(["batch", *map(str, shape[1:])]) + "]"


SPREAD_CAUSE = ("cause: the emulator's digital ops are numpy, the reference's are torch, an "
                "ulp apart; an activation on a rounding tie may quantize to the neighbouring "
                "integer, and through a lossy ADC that step grows layer by layer. Measured, "
                "not a limit: every layer's integers are checked exactly (layer integers)")


def _spread(r: VerifyReport, eq: PairStats) -> str:
    """The end-to-end emulator-vs-reference gap of a lossy program, as measured."""
    worst = max(eq.sample_rel, default=0.0)
    moved = f"{eq.identical}/{r.samples} samples identical"
    if eq.decided is not None:
        total = r.samples * (1 if eq.threshold is None else _per_sample(r.output_shape))
        unit = "samples" if eq.threshold is None else "decisions"
        moved += (f"; {eq.decided_name}: {round((1 - eq.decided) * total)} of {total} "
                  f"{unit} differ ({1 - eq.decided:.2%})")
    return (f"lossy ADC: {moved}, relative error {eq.rel:.3g}, worst sample {worst:.3g}; "
            f"{SPREAD_CAUSE}")


def _per_sample(shape: tuple[int, ...]) -> int:
    return math.prod(shape[1:])


CALIBRATION = "calibration"


def _calibration_check(c: Any, strict: bool) -> Check:
    """Every layer's input scale and ADC steps against the reference's own calibration."""
    if not c.ran:
        return Check(CALIBRATION, False if strict else None,
                     f"{'could not run' if strict else 'not checked'}: {c.reason}"
                     + ("" if strict else " (--strict-calibration makes this a failure)"))
    bad = c.differing
    if not bad and not c.data_mismatch:
        return Check(CALIBRATION, True, f"{len(c.layers)} layers' input scales and ADC steps "
                                        f"equal a calibration on {c.source}")
    note = f"{c.data_mismatch}; " if c.data_mismatch else ""
    listed = "".join(f"; layer {it.name}: {it.describe()}" for it in bad)
    return Check(CALIBRATION, False, f"{note}{len(bad)} of {len(c.layers)} layers differ "
                                     f"from a calibration on {c.source}{listed}")


def _layer_checks(r: VerifyReport) -> list[Check]:
    """Exact integers per layer on each traced path; the first diverging layer."""
    from farc.check.layers import DIVERGENCE_TOL, first

    checks = []
    for path, results in r.layers.items():
        name = f"layer integers ({path} path)"
        if r.noise:
            checks.append(Check(name, None, "not checked: noise enabled"))
            continue
        bad = first(results, lambda it: not it.ok)
        vectors = sum(it.vectors for it in results)
        checks.append(Check(name, bad is None, f"{len(results)} layers, {vectors} vectors "
                            "bit-identical to the reference" if bad is None else
                            f"first wrong layer {bad.name} (instruction {bad.where}): "
                            f"{bad.mismatched} integers of {bad.vectors} vectors differ, "
                            f"by up to {bad.max_diff:g}"))
    if r.divergence is not None:
        bad = first(r.divergence, lambda d: d.diverged)
        checks.append(Check("per-layer divergence", bad is None,
                            f"{len(r.divergence)} layers within {DIVERGENCE_TOL:g} of the "
                            "reference run" if bad is None else
                            f"first diverging layer {bad.name} (instruction {bad.where}): "
                            f"input rel. error {bad.x_rel:.3g}, output {bad.y_rel:.3g}"))
    return checks


# ----------------------------------------------------------------------------- the program
def program_is_lossless(program: Any) -> bool:
    """True when no ADC can change any partial sum of any layer: the emulator is then exact
    (docs/numerics.md). The rule is the one the emulator applies
    (farc.runtime.numerics.layer_lossless, flip encoding included), so verify checks
    exactly the layers the emulator runs losslessly."""
    return all(layer_lossless(layer, program.arrays[layer["arrays"]["codes"]])
               for layer in program.manifest.get("layers", []))


def checkpoint_from_provenance(program: Any) -> Path | None:
    """The checkpoint the program was compiled from, if its provenance names an existing one."""
    prov = program.manifest.get("model", {}).get("provenance", {}) or {}
    for key in PROVENANCE_KEYS:
        value = prov.get(key)
        if isinstance(value, str) and Path(value).is_file():
            return Path(value)
    return None


# ----------------------------------------------------------------------------- model runs
def batches(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def run_emulator(program: Any, x: np.ndarray, *, noise: Any = None, seed: int = 0,
                 batch_size: int = 64, progress: Callable[[int], None] | None = None,
                 ) -> np.ndarray:
    """The program's first output on x, in batches (one emulator, so noise draws continue
    across batches deterministically for a given seed and batch size)."""
    from farc.runtime.emulator import Emulator

    emu = Emulator(program, noise=noise, seed=seed)
    in_name, out_name = program.manifest["inputs"][0]["name"], program.manifest["outputs"][0][
        "name"]
    outs = []
    for sl in batches(len(x), batch_size):
        outs.append(np.asarray(emu.run({in_name: x[sl]})[out_name], np.float32))
        if progress:
            progress(sl.stop - sl.start)
    return np.concatenate(outs)


def ort_session(model: Any) -> Any:
    """An onnxruntime CPU session from a path or a ModelProto.

    Graph optimizations stay at BASIC (constant folding, redundant nodes): the extended
    levels fuse kernels with their own numerics (e.g. DequantizeLinear -> MatMul into an
    activation-quantizing MatMulNBits), which a reference must not do."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ConfigError(f"onnxruntime cannot load {_describe(model)}: "
                          f"{str(exc).splitlines()[0]}") from None


def run_onnx(model: Any, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The model's first output on x (its first input), in batches."""
    sess = ort_session(model)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[sl].astype(np.float32)})[0]
            for sl in batches(len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def _describe(model: Any) -> str:
    return "an in-memory ONNX model" if hasattr(model, "SerializeToString") else str(model)


# ----------------------------------------------------------------------------- references
@dataclass
class References:
    """What the emulator is compared with: the float ONNX model (a path or ModelProto) and
    the reference built from the checkpoint's model (farc.check.reference.Reference)."""

    float_model: Any
    reference: Any
    notes: dict[str, str] = field(default_factory=dict)
    model: Any = None
    """The float model the program was compiled from (the calibration check runs it)."""
    workdir: str | Path | None = None
    """Where the reference's layer bank is exported (a temporary folder, removed with this
    object, by default)."""
    _bank: Any = None
    _tmp: Any = None

    def bank(self) -> Any:
        """The reference's layers in onnxruntime, exported on first use."""
        from farc.check.layers import LayerBankRunner

        if self._bank is None:
            self._bank = LayerBankRunner(self.reference, self.workdir or self._scratch())
        return self._bank

    def _scratch(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="farc-verify-")
        return self._tmp.name


def resolve_references(program: Any, program_path: str | Path | None, *,
                       float_onnx: str | Path | None = None,
                       checkpoint: str | Path | None = None, model: Any = None,
                       workdir: str | Path | None = None) -> References:
    """Find (or make) the models to compare with.

    The model: `model` (an nn.Module), else --checkpoint, else the checkpoint the program's
    provenance names; without one verify cannot run, since its reference is built from the
    model, never from the program. Float ONNX: --float-onnx; `model.float.onnx` beside the
    program; otherwise exported into `workdir` from the model."""
    from farc.check.qdq import reference_paths
    from farc.check.reference import build_reference

    notes: dict[str, str] = {}
    if model is None:
        ckpt = _existing(checkpoint, "--checkpoint") if checkpoint is not None else \
            checkpoint_from_provenance(program)
        if ckpt is None:
            raise ConfigError("verify builds its reference from the model the program was "
                              "compiled from, and the program's provenance names no existing "
                              "checkpoint: pass --checkpoint")
        model = _load_model(program, ckpt)
        notes[REFERENCE] = f"built from {ckpt}"
    else:
        notes[REFERENCE] = f"built from the given {type(model).__name__}"
    ref = build_reference(model, program)
    beside_float = reference_paths(program_path)[0] if program_path else None
    if float_onnx is not None:
        flt: Any = _existing(float_onnx, "--float-onnx")
        notes[FLOAT] = str(flt)
    elif beside_float is not None and beside_float.is_file():
        flt, notes[FLOAT] = beside_float, str(beside_float)
    elif getattr(model, "source", {}).get("format") == "onnx":
        flt = Path(model.source["path"])  # the user's own ONNX file is the float model
        notes[FLOAT] = f"{flt} (the model compiled)"
    else:
        refs = References(None, ref, notes, workdir=workdir, model=model)
        out = Path(workdir or refs._scratch()) / "model.float.onnx"
        if hasattr(model, "export_onnx"):  # a user's .pt2 model (farc.models.graph)
            refs.float_model = model.export_onnx(out)
        else:
            from farc.check.onnx_export import export_onnx

            refs.float_model = export_onnx(model, out)
        notes[FLOAT] = "exported from the model"
        return refs
    return References(flt, ref, notes, workdir=workdir, model=model)


def _load_model(program: Any, path: Path) -> Any:
    """The model a program was compiled from: a farc checkpoint, or a user's .pt2/.onnx
    (rebuilt without running it), which must be the very file compiled (sha256)."""
    from farc.models.graph import is_user_model_file, load_user_model

    if not is_user_model_file(path):
        from farc.models.checkpoint import load_checkpoint

        return load_checkpoint(path).model
    model = load_user_model(path)
    want = program.manifest.get("model", {}).get("provenance", {}).get("model_sha256")
    if want and model.source.get("sha256") != want:
        raise ConfigError(f"{path} is not the file the program was compiled from (sha256 "
                          f"{model.source.get('sha256', '')[:12]}..., the program records "
                          f"{str(want)[:12]}...)")
    return model


def _existing(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {p}: no such file")
    return p


# ----------------------------------------------------------------------------- driver
def verify(program: Any, x: np.ndarray, labels: np.ndarray | None, refs: References, *,
           noise: Any = None, seed: int = 0, tol: Tolerances | None = None,
           batch_size: int = 64, progress: Callable[[int], None] | None = None,
           bitlevel_samples: int | None = DEFAULT_BITLEVEL_SAMPLES, per_layer: bool = False,
           calib_npy: str | Path | None = None, strict_calibration: bool = False,
           ) -> VerifyReport:
    """Run the three models on x and compare them, then the per-layer checks on a sample;
    never raises on a failed tolerance (the caller decides: the CLI prints the report,
    then raises VerifyError). `bitlevel_samples` None means all of x."""
    outputs = run_models(program, x, refs, noise=noise, seed=seed, batch_size=batch_size,
                         progress=progress)
    report = report_for_outputs(program, outputs, labels, refs, noise=noise, tol=tol)
    add_layer_checks(report, program, x, refs, bitlevel_samples=bitlevel_samples,
                     per_layer=per_layer, noise=noise, tol=tol)
    add_calibration_check(report, program, refs, calib_npy=calib_npy,
                          strict=strict_calibration, tol=tol)
    return report


def add_calibration_check(report: VerifyReport, program: Any, refs: References, *,
                          calib_npy: str | Path | None = None, strict: bool = False,
                          tol: Tolerances | None = None) -> None:
    """Calibrate every layer again from the float model on the recorded calibration
    inputs (farc.check.calibration) and compare its input scale and ADC steps."""
    from farc.check.calibration import CalibrationResult, check_calibration

    if refs.model is None:
        report.calibration = CalibrationResult(reason="no float model given (References."
                                                      "model)")
    else:
        report.calibration = check_calibration(program, refs.model, refs.reference,
                                               calib_npy=calib_npy)
    report.strict_calibration = strict
    report.checks = _checks(report, tol or Tolerances())


def add_layer_checks(report: VerifyReport, program: Any, x: np.ndarray, refs: References,
                     *, bitlevel_samples: int | None, per_layer: bool, noise: Any = None,
                     tol: Tolerances | None = None) -> None:
    """Trace the emulator on a sample (fast path: `bitlevel_samples` inputs too, at least
    one), check every layer's integers against the reference's layers in onnxruntime, and
    with `per_layer` locate the first layer whose values diverge from the reference run."""
    from farc.check.layers import divergences, integer_checks, traced_run

    if report.noise or len(x) == 0:
        report.layers = {"fast": [], "bitlevel": []}
    else:
        n = len(x) if bitlevel_samples is None else max(1, min(bitlevel_samples, len(x)))
        sample = np.asarray(x[:n], np.float32)
        for path, mvm_path in (("fast", "auto"), ("bitlevel", "bitlevel")):
            traces = traced_run(program, sample, mvm_path)
            report.layers[path] = integer_checks(program, refs.bank(), traces)
        report.divergence = divergences(program, refs.reference, sample, traces)
        report.show_layers = per_layer
    report.checks = _checks(report, tol or Tolerances())


def run_reference(ref: Any, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The reference model's logits on x, in batches."""
    import torch

    outs = []
    with torch.no_grad():
        for sl in batches(len(x), batch_size):
            outs.append(ref(torch.from_numpy(np.asarray(x[sl], np.float32))).numpy())
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0,), np.float32)


def run_models(program: Any, x: np.ndarray, refs: References, *, noise: Any = None,
               seed: int = 0, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """The emulator's, the reference's and the float model's outputs on x, streamed: each
    batch goes through the three models in turn and only its outputs are kept (written into
    arrays of the final size), so memory beyond the outputs themselves is one batch's
    working set, whatever len(x). The batch is `batch_size`, lowered to fit the memory
    budget (`--max-memory`, farc.limits) by `batch_for_budget`."""
    import torch

    from farc.runtime.emulator import Emulator

    x = np.asarray(x, np.float32)
    emu = Emulator(program, noise=noise, seed=seed)  # one emulator: noise draws continue
    if len(x):
        noisy = noise is not None and getattr(noise, "enabled", True)
        wanted = batch_size
        batch_size, per_input = batch_for_budget(program, x, batch_size,
                                                 None if noisy else emu)
        if batch_size < wanted:
            from farc.limits import fmt_bytes, max_memory

            refs.notes["batch"] = (f"{batch_size} inputs at a time, not {wanted}: the emulator "
                                   f"measured {fmt_bytes(per_input)} per input, memory budget "
                                   f"{fmt_bytes(max_memory())} (--max-memory)")
    in_name = program.manifest["inputs"][0]["name"]
    out_name = program.manifest["outputs"][0]["name"]
    sess = ort_session(refs.float_model)
    ort_in = sess.get_inputs()[0].name
    float_run = _in_model_layout(sess, ort_in, program)
    outs: dict[str, np.ndarray] = {}
    for sl in batches(len(x), batch_size):
        xb = x[sl]
        with torch.no_grad():
            ref = refs.reference(torch.from_numpy(np.ascontiguousarray(xb))).numpy()
        got = {EMULATOR: emu.run({in_name: xb})[out_name], REFERENCE: ref,
               FLOAT: float_run(xb)}
        for k, v in got.items():
            if k not in outs:
                outs[k] = np.empty((len(x), *np.shape(v)[1:]), np.float32)
            outs[k][sl] = v
        del got, ref
        if progress:
            progress(sl.stop - sl.start)
    if not outs:
        return {k: np.zeros((0,), np.float32) for k in (EMULATOR, REFERENCE, FLOAT)}
    return outs


def _in_model_layout(sess: Any, name: str, program: Any) -> Callable[[np.ndarray], Any]:
    """The float ONNX model run on batch-first inputs, its output batch-first: a time-major
    model's file takes and gives its own layout (the specs' batch_axis), the emulator and
    the reference the program's batch-first one."""
    from farc.runtime.program import from_batch_first, to_batch_first

    ins, outs = program.manifest["inputs"][0], program.manifest["outputs"][0]

    def run(xb: np.ndarray) -> Any:
        try:
            y = sess.run(None, {name: from_batch_first(xb, ins)})[0]
        except Exception as exc:  # onnxruntime's own types: a fixed batch, most often
            raise ConfigError(f"onnxruntime cannot run the float model on {len(xb)} inputs "
                              f"at a time: {str(exc).splitlines()[0]} (a file exported "
                              "with a fixed batch runs only at that batch: --samples and "
                              "--batch-size equal to it)") from None
        return to_batch_first(y, outs)
    return run


BATCH_MEMORY_SHARE = 0.5
"""Share of the memory budget one batch's working set may take (the rest: the program,
the models, the inputs and outputs)."""


def batch_for_budget(program: Any, x: np.ndarray, batch_size: int,
                     emulator: Any = None) -> tuple[int, int]:
    """`batch_size`, lowered so that one batch's working set fits BATCH_MEMORY_SHARE of the
    memory budget. The emulator's allocations on one input are measured (tracemalloc, numpy
    reports its buffers to it) when a full batch could exceed that share by a wide margin
    otherwise; a single input over it is refused in one line naming --max-memory. Returns
    (batch, measured bytes per input). `emulator` (noise-free) is reused for the probe."""
    from farc.limits import check_memory, max_memory

    if batch_size <= 1 or len(x) <= 1:
        return max(1, batch_size), 0
    per_input = emulator_bytes_per_input(program, x[:1], emulator)
    share = BATCH_MEMORY_SHARE * max_memory()
    check_memory(per_input / BATCH_MEMORY_SHARE, "verify: one input through the emulator "
                 "(measured, with the reference and onnxruntime after it)")
    return max(1, min(batch_size, int(share // max(per_input, 1)))), per_input


def emulator_bytes_per_input(program: Any, x1: np.ndarray, emulator: Any = None) -> int:
    """Peak bytes the emulator allocates to run one input (numpy buffers, tracemalloc)."""
    import tracemalloc

    from farc.runtime.emulator import Emulator

    emu = emulator if emulator is not None else Emulator(program)
    name = program.manifest["inputs"][0]["name"]
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        emu.run({name: np.asarray(x1, np.float32)})
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if not was:
            tracemalloc.stop()


def report_for_outputs(program: Any, outputs: dict[str, np.ndarray],
                       labels: np.ndarray | None, refs: References, *, noise: Any = None,
                       tol: Tolerances | None = None) -> VerifyReport:
    """Compare outputs already computed (by `run_models`, possibly gathered from shards)."""
    noisy = bool(noise is not None and getattr(noise, "enabled", True))
    report = evaluate(outputs, labels, lossless=program_is_lossless(program), noise=noisy,
                      tol=tol or Tolerances())
    report.sources = dict(refs.notes)
    return report
