"""Verify's calibration check: each layer's input scale and ADC steps calibrated again from
the float model, independently of the compiler, and compared with the program's.

The program's provenance records how it was calibrated (`model.provenance.calibration`,
written by `farc compile`): where the images came from and their sha256, how many, the
subsample seed, and the order in which layers drew their kept vectors. From that alone,
this module rebuilds the images, runs the float model (torch hooks on the modules the
program's layers name), and computes, as docs/numerics.md states it:

- the input range r (max |x|, or the `quant.percentile`-th percentile of |x| under the
  'percentile' policy) and s_x = float32(r / Qx) (1/Qx for an all-zero input);
- with `adc.range = "calibrated"`: the kept vectors (`keep` of the `n` vectors a layer saw,
  `np.random.default_rng(seed).choice(n, keep, replace=False)` sorted, layers drawing in the
  recorded order), quantized with its own s_x, replayed on the reference's own stored
  levels (`CrossbarMatmul.partial_sums`), the range of each row tile (or weight slice of
  each row tile: max or `adc.percentile`, magnitudes for a signed ADC), capped at the
  physical maximum, and the step the step rule gives for it.

It imports nothing from the compiler or farc.runtime (tests/test_architecture.py): the
closed forms are restated here, as in farc.check.reference.

Tolerances. The reference's float model runs nn.LSTM where the compiler's calibration steps
a block's LSTMs as one batched matmul, so activations may differ by float32 rounding. An
input scale differs when the two are more than a tenth of one quantization step apart
(relative difference > 0.1 / Qx); one step off (1 / Qx) is always caught. An ADC step
differs when it equals neither the reference's step nor the step of the range the program
records (`calib.adc_range`) while that range is within `RANGE_TOL` of the reference's: a
rounding tie that moves one kept input by one LSB can move a range by a few levels, never
by a factor."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from farc.models.gru import GRU

SCALE_TOL = 0.1
"""An input scale differs when |program - reference| > SCALE_TOL / Qx * reference."""
RANGE_TOL = 0.02
"""A recorded ADC range agrees with the reference's when within 2 % (plus one level)."""
STEP_DENOM = 256
"""A uniform step is a multiple of 1/256 (docs/numerics.md)."""


@dataclass
class LayerCalibration:
    """One layer's calibration as the program states it and as the reference finds it."""

    name: str
    in_scale: tuple[float, float]
    """(program, reference)."""
    scale_differs: bool = False
    steps: list[tuple[str, float, float]] = field(default_factory=list)
    """Every differing ADC step: (where, program, reference)."""

    @property
    def differs(self) -> bool:
        return self.scale_differs or bool(self.steps)

    def describe(self) -> str:
        parts = []
        if self.scale_differs:
            parts.append(f"input scale {self.in_scale[0]:.6g} (reference "
                         f"{self.in_scale[1]:.6g})")
        shown = [f"ADC step {w} {a:g} (reference {b:g})" for w, a, b in self.steps[:3]]
        more = len(self.steps) - len(shown)
        return ", ".join(parts + shown) + (f" and {more} more steps" if more > 0 else "")


@dataclass
class CalibrationResult:
    """The calibration check: `layers` when it ran, else `reason` says why it could not."""

    layers: list[LayerCalibration] = field(default_factory=list)
    ran: bool = False
    reason: str = ""
    source: str = ""
    """The calibration data, as the provenance describes it."""
    data_mismatch: str = ""
    """Set when a named data set no longer hashes to the recorded sha256."""

    @property
    def differing(self) -> list[LayerCalibration]:
        return [c for c in self.layers if c.differs]


# ----------------------------------------------------------------------------- the data
def images_digest(x: np.ndarray) -> str:
    """sha256 of the images as float32 in C order (what compile records)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def rebuild_images(record: dict, model: Any, calib_npy: str | Path | None = None
                   ) -> tuple[np.ndarray | None, str, str]:
    """(images or None, a description of the source or why they cannot be rebuilt,
    a digest mismatch note for a named data set)."""
    src, n = record.get("source", {}), int(record["samples"])
    shape = [int(v) for v in record["shape"]]
    kind = src.get("kind")
    if calib_npy is not None or kind in ("npy", "array"):
        path = calib_npy if calib_npy is not None else src.get("path")
        if path is None:
            return None, ("calibrated on images given in memory: pass the same images "
                          "(--calib-npy) to check the calibration"), ""
        if not Path(path).is_file():
            return None, f"calibration file {path} is missing (pass --calib-npy)", ""
        from farc.npyio import load_arrays

        x = load_arrays(path, "--calib-npy")
        if not isinstance(x, np.ndarray) or list(x.shape[1:]) != shape:
            return None, f"calibration file {path} does not hold [N, {shape}] inputs", ""
        x = np.asarray(x[:n], np.float32)
        if images_digest(x) != record.get("sha256"):
            return None, (f"calibration file {path} is not the data the program was "
                          "calibrated on (sha256 differs)"), ""
        return x, f"{path} ({len(x)} inputs)", ""
    if kind == "random":
        g = torch.Generator().manual_seed(int(src["seed"]))
        x = torch.randn(n, *shape, generator=g).numpy()
        desc = f"{n} seeded N(0, 1) inputs (seed {src['seed']})"
    elif kind == "data":
        x = _data_images(src, n, shape, model)
        if x is None:
            return None, f"calibration data {src.get('data')} is not available", ""
        desc = f"{src['data']}/{src['split']}, first {n}"
    else:
        return None, f"unknown calibration source {src!r}", ""
    mismatch = "" if images_digest(x) == record.get("sha256") else \
        f"{desc} does not hash to the recorded sha256 (other data, or the data set changed)"
    return x, desc, mismatch


def _data_images(src: dict, n: int, shape: list[int], model: Any) -> np.ndarray | None:
    from farc.models.graph import GraphModel, sample_inputs

    data = src["data"]
    if data != "digits" and not Path(data).is_dir():
        return None
    if isinstance(model, GraphModel):
        return sample_inputs(model, data, src["split"], n)[0].numpy()
    from farc.data import load_split

    x, _ = load_split(data, src["split"], img_size=shape[1], in_chans=shape[0])
    return x[:n].float().numpy()


# ----------------------------------------------------------------------------- the inputs
def layer_inputs(model: nn.Module, names: set[str], images: np.ndarray,
                 batch: int = 64) -> dict[str, np.ndarray]:
    """What reaches each named crossbar module of the float model, [vectors, K] float32, in
    (sample, position) order: a Linear's input, the patch-embedding convolution's patches
    in (c, kh, kw) order, an LSTM's [x_t ; h_{t-1}] for every step (h_{-1}: the state it is
    called with, else 0), a GRU's [x_t ; h_{t-1}] and, for `<gru>.hidden`, what W_hn
    reads: r_t * h_{t-1} (h_{t-1} with linear_before_reset)."""
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    hooks = []
    for name, mod in model.named_modules():
        if name in names and isinstance(mod, GRU):
            hooks.append(_gru_hook(mod, seen[name], seen.get(name + GRU_HIDDEN, [])))
        elif name in names:
            hooks.append(_hook(mod, seen[name]))
    try:
        with torch.no_grad():
            for lo in range(0, len(images), batch):
                model(torch.from_numpy(np.asarray(images[lo:lo + batch], np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return {n: np.concatenate(v) if v else np.zeros((0, 0), np.float32)
            for n, v in seen.items()}


def _hook(mod: nn.Module, out: list) -> Any:
    def keep(x: torch.Tensor) -> None:
        out.append(x.reshape(-1, x.shape[-1]).float().numpy().copy())

    if isinstance(mod, nn.Conv1d | nn.Conv2d):
        def patches(m, args):
            # every output position's receptive field, (channel, kernel offset) order; a
            # 1-d convolution is a 2-d one over a height of 1
            one = isinstance(m, nn.Conv1d)
            lift = (lambda v, first: (first, *v)) if one else (lambda v, first: tuple(v))
            x = args[0].unsqueeze(2) if one else args[0]
            cols = nn.functional.unfold(x, lift(m.kernel_size, 1), lift(m.dilation, 1),
                                        lift(m.padding, 0), lift(m.stride, 1))
            keep(cols.transpose(1, 2))
        return mod.register_forward_pre_hook(patches)
    if isinstance(mod, nn.LSTM):
        def stacked(m, args, res):
            x, h = args[0], res[0]
            first = torch.zeros_like(h[:, :1]) if len(args) < 2 or args[1] is None else \
                args[1][0].reshape(h.shape[0], 1, -1).to(h.dtype)
            keep(torch.cat([x, torch.cat([first, h[:, :-1]], dim=1)], dim=-1))
        return mod.register_forward_hook(stacked)
    return mod.register_forward_pre_hook(lambda m, args: keep(args[0]))


GRU_HIDDEN = ".hidden"
"""A GRU's second crossbar layer is `<gru>.hidden` (docs/compiler.md, restated here)."""


def _gru_hook(mod: GRU, gates: list, hidden: list) -> Any:
    """A GRU's two crossbar inputs per step, from its input, outputs and own weights (ONNX
    GRU: r = sigmoid(W_ir x + b_ir + W_hr h + b_hr))."""
    def keep(out: list, x: torch.Tensor) -> None:
        out.append(x.reshape(-1, x.shape[-1]).float().numpy().copy())

    def stacked(m, args, res):
        x, k = args[0], m.hidden_size
        h0 = args[1] if len(args) > 1 and args[1] is not None else torch.zeros(k)
        prev = torch.cat([h0.reshape(1, 1, k).expand(res.shape[0], 1, k).to(res.dtype),
                          res[:, :-1]], dim=1)
        keep(gates, torch.cat([x, prev], dim=-1))
        if m.linear_before_reset:
            keep(hidden, prev)
            return
        r = torch.sigmoid(x @ m.weight_ih[:k].T + m.bias_ih[:k] + prev @ m.weight_hh[:k].T
                          + m.bias_hh[:k])
        keep(hidden, r * prev)
    return mod.register_forward_hook(stacked)


# ----------------------------------------------------------------------------- the numbers
def input_scale(x: np.ndarray, quant: dict) -> float:
    """s_x = float32(r / Qx), r = max |x| or the percentile of |x| (docs/numerics.md)."""
    qx = 2 ** (int(quant["input_bits"]) - 1) - 1
    mag = np.abs(x)
    pct = float(quant.get("percentile", 100.0))
    if not mag.size:
        r = 0.0
    elif quant["calibration"] == "percentile" and pct < 100.0:
        r = float(np.percentile(mag, pct))
    else:
        r = float(mag.max())
    return float(np.float32(r / qx if r > 0 else 1.0 / qx))


def adc_step(pmax: float, adc: dict, signed: bool) -> float:
    """The smallest step whose top code covers pmax: a power of two (pow2) or a multiple of
    1/256 (uniform), never below 1."""
    bits = int(adc["bits"])
    top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    if adc["step_rule"] == "uniform":
        return max(1.0, math.ceil(pmax / top * STEP_DENOM) / STEP_DENOM)
    step = 1
    while top * step < pmax:
        step *= 2
    return float(step)


def adc_ranges(layer: Any, x_int: np.ndarray, adc: dict, signed: bool) -> list:
    """Per row tile the partial-sum range (or per slice of it) of inputs x_int [V, K] on
    the reference layer's stored levels, capped at the physical maximum."""
    out = []
    with torch.no_grad():
        tiles = layer.partial_sums(torch.from_numpy(x_int.astype(np.float64)))
        for tile in tiles:
            p = np.abs(tile.numpy()) if signed else tile.numpy()
            groups = [p[:, layer.col_slice == s] for s in range(layer.slices)] \
                if adc["granularity"] == "slice" else [p]
            vals = [min(_statistic(g, adc, signed, float(layer.full_pmax)),
                        float(layer.full_pmax)) for g in groups]
            out.append(vals if adc["granularity"] == "slice" else vals[0])
    return out


def _statistic(p: np.ndarray, adc: dict, signed: bool, full: float) -> float:
    if not p.size:
        return 0.0
    if adc["statistic"] == "max":
        return float(p.max())
    if adc["statistic"] == "mse":
        return _least_squares_clip(p, adc, signed, full)
    return float(np.percentile(p, float(adc["percentile"])))


def _least_squares_clip(p: np.ndarray, adc: dict, signed: bool, full: float) -> float:
    """docs/numerics.md, statistic 'mse': of the clip points m * 2**(-k/8), k = 0, 1, ..., 40
    (m: the largest sum), the first whose ADC output (codes clipped to the ADC's range,
    times the step of that clip point) is closest to the sums in squared error."""
    sums = np.sort(p.astype(np.float64).ravel())
    m = float(sums[-1])
    if m <= 0:
        return 0.0
    bits = int(adc["bits"])
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    chosen, least = m, None
    for k in range(41):
        clip = m * 2.0 ** (-k / 8)
        step = adc_step(min(clip, full), adc, signed)
        out = np.clip(np.floor(sums / step + 0.5), lo, hi) * step
        err = float(np.sum((out - sums) ** 2))
        if least is None or err < least:
            chosen, least = clip, err
    return chosen


def kept_vectors(record: dict) -> dict[str, tuple[int, np.ndarray]]:
    """Layer -> (vectors seen, the sorted indices kept), drawn in the recorded order from
    one `np.random.default_rng(seed)`."""
    rng = np.random.default_rng(int(record["seed"]))
    keep = int(record["keep_vectors"])
    out = {}
    for name, n in record["draws"]:
        out[name] = (int(n), np.sort(rng.choice(int(n), size=min(keep, int(n)),
                                                replace=False)))
    return out


# ----------------------------------------------------------------------------- the check
def check_calibration(program: Any, model: nn.Module, reference: Any,
                      calib_npy: str | Path | None = None) -> CalibrationResult:
    """Calibrate every layer of `program` again from `model` (the float model it was
    compiled from) and compare; `reference` is verify's (its layers hold the stored levels)."""
    prov = program.manifest.get("model", {}).get("provenance", {}) or {}
    record = prov.get("calibration")
    if not isinstance(record, dict):
        return CalibrationResult(reason="the program records no calibration (compiled "
                                        "before compile recorded it): recompile it")
    images, desc, mismatch = rebuild_images(record, model, calib_npy)
    if images is None:
        return CalibrationResult(reason=desc)
    layers = program.manifest["layers"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny LSTM steps: a thread pool only costs
    try:
        seen = layer_inputs(model.eval(), {str(L["name"]) for L in layers}, images)
        kept = kept_vectors(record)
        result = CalibrationResult(ran=True, source=desc, data_mismatch=mismatch)
        for L in layers:
            result.layers.append(_layer(L, seen[str(L["name"])], kept, reference))
    finally:
        torch.set_num_threads(threads)
    return result


def _layer(L: dict, x: np.ndarray, kept: dict, reference: Any) -> LayerCalibration:
    name, quant, adc = str(L["name"]), L["quant"], L["adc"]
    s_ref = input_scale(x, quant)
    s_prog = float(L["in_scale"])
    qx = 2 ** (int(quant["input_bits"]) - 1) - 1
    res = LayerCalibration(name, (s_prog, s_ref),
                           scale_differs=abs(s_prog - s_ref) > SCALE_TOL / qx * s_ref)
    if adc["range"] != "calibrated":
        return res  # a full-range step is fixed by the hardware (the loader checks it)
    if name not in kept or kept[name][0] != len(x):
        seen = kept.get(name, (None,))[0]
        res.steps.append(("(all)", float("nan") if seen is None else seen, len(x)))
        return res  # the program saw another number of vectors: other data
    signed = quant["input_encoding"] == "bipolar"
    xk = np.asarray(x[kept[name][1]], np.float32)
    x_int = np.clip(np.rint(xk / np.float32(s_ref)), -qx, qx)
    ref_ranges = adc_ranges(reference.layers[name], x_int, adc, signed)
    recorded = (L.get("calib") or {}).get("adc_range")
    for r, (prog_r, ref_r) in enumerate(zip(L["adc_step"], ref_ranges)):
        progs = prog_r if isinstance(prog_r, list) else [prog_r]
        refs = ref_r if isinstance(ref_r, list) else [ref_r]
        recs = [None] * len(refs)
        if recorded is not None and r < len(recorded):
            recs = recorded[r] if isinstance(recorded[r], list) else [recorded[r]]
        for s, (a, ref_range, rec) in enumerate(zip(progs, refs, recs)):
            b = adc_step(ref_range, adc, signed)
            if float(a) == b or _explained(float(a), rec, ref_range, adc, signed, L):
                continue
            where = f"[{r}][{s}]" if isinstance(prog_r, list) else f"[{r}]"
            res.steps.append((where, float(a), b))
    return res


def _explained(step: float, recorded: Any, ref_range: float, adc: dict, signed: bool,
               L: dict) -> bool:
    """A step that is the step of the range the program records (capped at the physical
    maximum), that range within RANGE_TOL of the reference's own: float rounding moved a
    kept input by one LSB."""
    if recorded is None:
        return False
    rec = min(float(recorded), _full(L))
    return abs(rec - ref_range) <= RANGE_TOL * ref_range + 1.0 and \
        step == adc_step(rec, adc, signed)


def _full(L: dict) -> float:
    rows, cell = int(L["crossbar"]["rows"]), int(L["crossbar"]["cell_bits"])
    levels = rows * (2**cell - 1)
    return (2 ** int(L["dac"]["bits"]) - 1) * (levels // 2 if L["adc"]["flip"] else levels)
