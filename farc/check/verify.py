"""`farc verify`: the emulator against onnxruntime, on the same inputs, with stated tolerances.

Three models see the same images: the emulator running the tile program, the QDQ ONNX model
of the same program (farc.check.qdq: same integers, no crossbars) and the float ONNX golden model.
Every pair is compared (max / mean absolute error, error relative to the reference's peak,
cosine similarity, top-1 agreement), plus accuracy when labels exist. The checks, and why
their thresholds are what they are, are documented in docs/verify.md:

- emulator vs QDQ, only when the program's ADC is lossless and no noise is enabled: the
  relative error of the logits, sum |a - b| / sum |b|, is at most `exact_rel` (1e-3), and
  top-1 agreement is 100 %. With a lossless ADC both compute the same integers; the only
  gap left is an activation sitting on a rounding boundary, which float kernels an ulp
  apart may round either way (rare, per sample). A bug shows up in most samples;
- emulator vs float: top-1 agreement >= `min_agreement` (0.99): quantization may move
  logits, but should rarely change a decision;
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

EMULATOR, QDQ, FLOAT = "emulator", "qdq", "float"
PAIRS = ((EMULATOR, QDQ), (EMULATOR, FLOAT), (QDQ, FLOAT))
PROVENANCE_KEYS = ("checkpoint", "checkpoint_path", "source_checkpoint", "ckpt", "source")


class VerifyError(FarcError):
    """A documented tolerance of `farc verify` failed."""


@dataclass(frozen=True)
class Tolerances:
    """The thresholds `farc verify` applies (docs/verify.md says why these values)."""

    exact_rel: float = 1e-3
    """Emulator vs QDQ (lossless ADC, no noise): largest relative error of the logits,
    sum |a - b| / sum |b| over every sample and class. A normwise measure rather than the
    worst element: when an activation lies within float32 rounding of a quantization
    boundary, numpy's and onnxruntime's digital kernels (an ulp apart) may round it to
    neighbouring integers, and that one-LSB difference travels to that sample's logits.
    Such ties touch a few samples by up to ~1e-2; a real bug moves most samples."""
    exact_agreement: float = 1.0
    """Emulator vs QDQ (lossless ADC, no noise): minimum top-1 agreement."""
    min_agreement: float = 0.99
    """Emulator vs float: minimum top-1 agreement."""
    max_acc_drop: float | None = None
    """Largest accepted drop of emulator accuracy below float's, in percentage points."""


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
    agreement: float
    """Fraction of samples whose top-1 class is the same."""

    @property
    def name(self) -> str:
        return f"{self.a} vs {self.b}"

    @property
    def identical(self) -> int:
        """Samples whose outputs are bitwise equal."""
        return sum(1 for r in self.sample_rel if r == 0.0)


@dataclass(frozen=True)
class Check:
    """One tolerance: passed is None when it does not apply (and why is in detail)."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class VerifyReport:
    samples: int
    lossless: bool
    noise: bool
    pairs: dict[tuple[str, str], PairStats]
    accuracy: dict[str, float] | None
    checks: list[Check] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Where each model came from (file path or 'built from the program')."""

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


def compare(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> PairStats:
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
                     cosine=float(cos.mean()), min_cosine=float(cos.min()),
                     agreement=float((top1(a) == top1(b)).mean()))


def _ratio(err: float, peak: float) -> float:
    return err / peak if peak > 0 else (0.0 if err == 0 else math.inf)


def accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return float((top1(out) == labels.reshape(-1)).mean())


def evaluate(outputs: dict[str, np.ndarray], labels: np.ndarray | None, *, lossless: bool,
             noise: bool, tol: Tolerances) -> VerifyReport:
    """Compare the three models' outputs and apply the tolerances (no model runs here)."""
    n = len(outputs[EMULATOR])
    pairs = {(a, b): compare(a, outputs[a], b, outputs[b]) for a, b in PAIRS}
    acc = None if labels is None else {k: accuracy(v, labels) for k, v in outputs.items()}
    report = VerifyReport(samples=n, lossless=lossless, noise=noise, pairs=pairs, accuracy=acc)
    report.checks = _checks(report, tol)
    return report


def _checks(r: VerifyReport, tol: Tolerances) -> list[Check]:
    eq, fl = r.pairs[(EMULATOR, QDQ)], r.pairs[(EMULATOR, FLOAT)]
    checks = []
    why_not = "noise enabled" if r.noise else "" if r.lossless else "ADC not lossless"
    if why_not:
        checks.append(Check("emulator vs qdq logits", None, f"not checked: {why_not}"))
        checks.append(Check("emulator vs qdq top-1", None, f"not checked: {why_not}"))
    else:
        checks.append(Check("emulator vs qdq logits", eq.rel <= tol.exact_rel,
                            f"relative error {eq.rel:.3g} (limit {tol.exact_rel:g}); "
                            f"{eq.identical}/{r.samples} samples identical, worst sample "
                            f"{max(eq.sample_rel, default=0.0):.3g}"))
        checks.append(Check("emulator vs qdq top-1", eq.agreement >= tol.exact_agreement,
                            f"agreement {eq.agreement:.2%} (limit {tol.exact_agreement:.2%})"))
    checks.append(Check("emulator vs float top-1", fl.agreement >= tol.min_agreement,
                        f"agreement {fl.agreement:.2%} (limit {tol.min_agreement:.2%}, "
                        "--min-agreement)"))
    if tol.max_acc_drop is not None:
        if r.accuracy is None:
            checks.append(Check("accuracy drop", None, "not checked: no labels"))
        else:
            drop = 100 * (r.accuracy[FLOAT] - r.accuracy[EMULATOR])
            checks.append(Check("accuracy drop", drop <= tol.max_acc_drop + 1e-9,
                                f"emulator {r.accuracy[EMULATOR]:.2%} vs float "
                                f"{r.accuracy[FLOAT]:.2%}: {drop:.2f} pt (limit "
                                f"{tol.max_acc_drop:g} pt, --max-acc-drop)"))
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
    return "the QDQ model built from the program" if hasattr(model, "SerializeToString") \
        else str(model)


# ----------------------------------------------------------------------------- references
@dataclass
class References:
    """The float and QDQ models to compare against: a path or an in-memory ModelProto each."""

    float_model: Any
    qdq_model: Any
    notes: dict[str, str] = field(default_factory=dict)


def resolve_references(program: Any, program_path: str | Path | None, *,
                       float_onnx: str | Path | None = None, qdq_onnx: str | Path | None = None,
                       workdir: str | Path | None = None) -> References:
    """Find (or make) the reference models, in this order:

    QDQ: --qdq-onnx; `model.qdq.onnx` beside the program unless it is older than the program;
    otherwise built in memory from the program (it depends on nothing else).
    Float: --float-onnx; `model.float.onnx` beside the program; otherwise exported into
    `workdir` from the checkpoint named by the program's provenance; otherwise an error."""
    from farc.check.qdq import build_qdq_onnx, reference_paths

    beside_float, beside_qdq = reference_paths(program_path) if program_path else (None, None)
    notes = {}
    if qdq_onnx is not None:
        qdq: Any = _existing(qdq_onnx, "--qdq-onnx")
        notes[QDQ] = str(qdq)
    elif beside_qdq is not None and beside_qdq.is_file() and \
            beside_qdq.stat().st_mtime >= Path(program_path).stat().st_mtime:
        qdq, notes[QDQ] = beside_qdq, str(beside_qdq)
    else:
        qdq, notes[QDQ] = build_qdq_onnx(program), "built from the program"
    if float_onnx is not None:
        flt: Any = _existing(float_onnx, "--float-onnx")
        notes[FLOAT] = str(flt)
    elif beside_float is not None and beside_float.is_file():
        flt, notes[FLOAT] = beside_float, str(beside_float)
    else:
        ckpt = checkpoint_from_provenance(program)
        if ckpt is None:
            raise ConfigError("no float ONNX model: none beside the program "
                              f"({beside_float.name if beside_float else 'model.float.onnx'}) "
                              "and its provenance names no existing checkpoint; pass "
                              "--float-onnx or compile with --emit-onnx")
        flt = export_float(ckpt, workdir or tempfile.mkdtemp(prefix="farc-verify-"))
        notes[FLOAT] = f"exported from {ckpt}"
    return References(flt, qdq, notes)


def _existing(path: str | Path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {p}: no such file")
    return p


def export_float(checkpoint: Path, workdir: str | Path) -> Path:
    """Export the float golden ONNX of `checkpoint` into `workdir`."""
    from farc.check.onnx_export import export_onnx
    from farc.models.checkpoint import load_checkpoint

    out = Path(workdir) / f"{checkpoint.stem}.float.onnx"
    export_onnx(load_checkpoint(checkpoint).model, out)
    return out


# ----------------------------------------------------------------------------- driver
def verify(program: Any, x: np.ndarray, labels: np.ndarray | None, refs: References, *,
           noise: Any = None, seed: int = 0, tol: Tolerances | None = None,
           batch_size: int = 64, progress: Callable[[int], None] | None = None,
           ) -> VerifyReport:
    """Run the three models on x and compare them; never raises on a failed tolerance
    (the caller decides: the CLI prints the report, then raises VerifyError)."""
    outputs = run_models(program, x, refs, noise=noise, seed=seed, batch_size=batch_size,
                         progress=progress)
    return report_for_outputs(program, outputs, labels, refs, noise=noise, tol=tol)


def run_models(program: Any, x: np.ndarray, refs: References, *, noise: Any = None,
               seed: int = 0, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """The emulator's, the QDQ model's and the float model's outputs on x."""
    x = np.asarray(x, np.float32)
    return {
        EMULATOR: run_emulator(program, x, noise=noise, seed=seed, batch_size=batch_size,
                               progress=progress),
        QDQ: run_onnx(refs.qdq_model, x, batch_size=batch_size),
        FLOAT: run_onnx(refs.float_model, x, batch_size=batch_size),
    }


def report_for_outputs(program: Any, outputs: dict[str, np.ndarray],
                       labels: np.ndarray | None, refs: References, *, noise: Any = None,
                       tol: Tolerances | None = None) -> VerifyReport:
    """Compare outputs already computed (by `run_models`, possibly gathered from shards)."""
    noisy = bool(noise is not None and getattr(noise, "enabled", True))
    report = evaluate(outputs, labels, lossless=program_is_lossless(program), noise=noisy,
                      tol=tol or Tolerances())
    report.sources = dict(refs.notes)
    return report
