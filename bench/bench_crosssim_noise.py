"""Cross-check of farc's programming-noise models against Sandia's CrossSim, an outside
reference (never vendored, never a dependency: it is imported only when the user puts it on
the path). docs/crosssim-check.md has the table, the matched settings and the differences.

One 128 x 128 weight matrix, 8-bit weights cut into four 2-bit slices on differential pairs
(8 physical 128 x 128 arrays in both tools), 8-bit signed inputs, an ideal ADC; programming
noise state-independent (G + N(0, s), CrossSim NormalIndependentDevice) and proportional
(G (1 + N(0, s)), NormalProportionalDevice) at s = 1, 2, 5 %. Per chip: a fresh W and 256
Gaussian input vectors (the same in both tools), one programming draw; the figure is the
relative RMS error of y = W x against the same tool's noise-free result, sqrt(sum |dy|^2 /
sum |y|^2); mean and std over chips. Three columns besides CrossSim's:
- farc, no ADC: farc's programmed conductances (runtime/noise.py), partial sums and
  shift-add (runtime/crossbar.py) without the ADC's rounding: CrossSim's IdealADC;
- farc, 9-bit ADC: the emulator's own path, a lossless 9-bit ADC with step 1 that rounds
  every noisy partial sum to an integer, as farc's chips do;
- closed form: the expected error from the clipped-Gaussian mean and variance of every cell
  (conductances cannot go negative in either tool), computed here from the codes alone.

A second table gives farc's figure for every device preset of runtime/devices.py on the
same problem (no CrossSim counterpart: its calibrated devices are other fits, see
docs/devices.md).

Run: python -m bench.bench_crosssim_noise [--chips 20] [--crosssim DIR]
(DIR: a checkout of github.com/sandialabs/cross-sim, the folder holding `simulator/`)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np

from bench._common import md_table, pin_threads

K = N = 128
VECTORS = 256
SIGMAS = (0.01, 0.02, 0.05)
MODELS = {"independent": "NormalIndependentDevice", "proportional": "NormalProportionalDevice"}
WEIGHT_BITS, CELL_BITS, SLICES = 8, 2, 4


def problem(chip: int) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] in [-1, 1] with every column reaching |w| = 1 (so farc's per-column weight
    scale equals CrossSim's per-matrix one and both quantize to the same integers), and
    x [VECTORS, K] Gaussian."""
    rng = np.random.default_rng(1000 + chip)
    W = rng.uniform(-1.0, 1.0, size=(K, N))
    W[rng.integers(0, K, size=N), np.arange(N)] = rng.choice([-1.0, 1.0], size=N)
    return W.astype(np.float32), rng.normal(size=(VECTORS, K)).astype(np.float32)


def rel_rms(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(((y - ref) ** 2).sum() / (ref ** 2).sum()))


# ---------------------------------------------------------------- farc
def farc_layer(W: np.ndarray, x: np.ndarray) -> Any:
    """W on one crossbar layer as the compiler packs it (sign-magnitude inputs: CrossSim's
    signed DAC; 9-bit full-range ADC: lossless for 128 rows of 2-bit cells)."""
    from farc.runtime.builder import make_program, pack_layer, scale_for_inputs
    from farc.runtime.crossbar import prepare_layer
    from farc.runtime.numerics import XbarParams

    p = XbarParams().with_overrides(**{
        "crossbar.rows": 128, "crossbar.cols": 128, "crossbar.cell_bits": CELL_BITS,
        "dac.bits": 1, "adc.bits": 9, "quant.weight_bits": WEIGHT_BITS, "quant.input_bits": 8,
        "quant.mapping": "differential", "quant.input_encoding": "sign_magnitude"})
    layer, arrays = pack_layer(W, None, scale_for_inputs(x, p.quant.input_bits), p)
    prog = make_program([{"op": "input", "name": "x", "out": "x"},
                         {"op": "mvm", "layer": 0, "in": ["x"], "out": "y"},
                         {"op": "output", "name": "y", "in": ["y"]}],
                        {"x": [K]}, {"y": [None]}, [(layer, arrays)])
    prog.validate()
    return prepare_layer(0, prog.layers[0], prog.arrays)


def farc_side(W: np.ndarray, x: np.ndarray, model: str, sigma: float,
              chip: int) -> tuple[float, float, float]:
    """(no-ADC error, 9-bit-ADC error, closed-form expectation) of one chip."""
    from farc.runtime.schema import DeviceSection

    pl, x_int, ideal = farc_problem(W, x)
    analog, adc = farc_errors(pl, x_int, ideal, DeviceSection(prog_sigma=sigma, prog_model=model),
                              chip)
    return analog, adc, expected_rel_rms(pl, x_int, ideal, model, sigma)


def farc_problem(W: np.ndarray, x: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """(prepared layer, input integers, exact integer result x_int @ q)."""
    from farc.runtime import crossbar as xb

    pl = farc_layer(W, x)
    x_int = xb.quantize_input(x, pl.in_scale, pl.input_bits)
    return pl, x_int, x_int.astype(np.float64) @ pl.q.astype(np.float64)


def farc_errors(pl: Any, x_int: np.ndarray, ideal: np.ndarray, cfg: Any,
                chip: int) -> tuple[float, float]:
    """(no-ADC error, 9-bit-ADC error) of one chip programmed with `cfg` (seed `chip`)."""
    from farc.runtime import crossbar as xb
    from farc.runtime.noise import noisy_partial_sums, program_layer

    rng = np.random.default_rng(chip)
    chip_layer = program_layer(pl.levels, CELL_BITS, cfg, rng)
    ps = noisy_partial_sums(pl, chip_layer, CELL_BITS, cfg, rng)
    return (rel_rms(analog_mvm(pl, x_int, ps), ideal),
            rel_rms(xb.mvm_bitlevel(pl, x_int, ps), ideal))


def preset_rows(chips: int) -> list[list[str]]:
    """Every device preset of runtime/devices.py on the same problem, farc only."""
    from farc.runtime.devices import DEVICE_PRESETS

    rows = []
    for name, cfg in DEVICE_PRESETS.items():
        if not cfg.enabled:
            continue
        cols: dict[str, list[float]] = {"none": [], "adc": []}
        for chip in range(chips):
            pl, x_int, ideal = farc_problem(*problem(chip))
            a, b = farc_errors(pl, x_int, ideal, cfg, chip)
            cols["none"].append(a)
            cols["adc"].append(b)
        rows.append([name, fmt(cols["none"]), fmt(cols["adc"])])
    return rows


def analog_mvm(pl: Any, x_int: np.ndarray, ps: Any) -> np.ndarray:
    """runtime/crossbar.py's bit-level MVM with the ADC left out: partial sums of every
    cycle, shift-added over cycles and slices (sign-magnitude, differential: no digital
    correction to subtract)."""
    from farc.runtime.crossbar import shift_add_columns
    from farc.runtime.numerics import input_planes

    planes = input_planes(x_int, pl.input_bits, pl.dac_bits, pl.encoding).astype(np.float32)
    total = sum(ps(r, planes[:, :, r * pl.rows:(r + 1) * pl.rows].reshape(-1, pl.rows)
                   .astype(np.float32)).astype(np.float64) for r in range(pl.row_tiles))
    per_col = np.tensordot(pl.cycle_w, total.reshape(pl.cycles, len(x_int), pl.J), axes=(0, 0))
    return shift_add_columns(pl, per_col)


def clipped_moments(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean error and variance of max(t + s Z, 0) - t, Z standard normal (s > 0)."""
    from scipy.special import ndtr

    a = t / s
    phi = np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    cdf = ndtr(a)
    mean = t * cdf + s * phi
    second = (t * t + s * s) * cdf + t * s * phi
    return mean - t, second - mean * mean


def expected_rel_rms(pl: Any, x_int: np.ndarray, ideal: np.ndarray, model: str,
                     sigma: float) -> float:
    """E sum|dy|^2 = sum_n (x . bias_n)^2 + sum_n sum_k x_k^2 var_kn, each weight's bias and
    variance summed over its 4 slices x 2 signs with the shift-add weights 4**s; the cells'
    levels are recomputed here from the integer weights (|q| in base 4 on its sign's side)."""
    q = np.rint(pl.q.astype(np.float64)).astype(np.int64)
    bias = np.zeros(q.shape)
    var = np.zeros(q.shape)
    for s in range(SLICES):
        digit = (np.abs(q) >> (CELL_BITS * s)) & 3
        for sign, level in ((1, np.where(q > 0, digit, 0)), (-1, np.where(q < 0, digit, 0))):
            t = level.astype(np.float64)
            sd = sigma * 3 * np.ones_like(t) if model == "independent" else sigma * t
            m, v = clipped_moments(t, np.maximum(sd, 1e-300))
            bias += sign * 4 ** s * m
            var += 16 ** s * v
    xf = x_int.astype(np.float64)
    err2 = ((xf @ bias) ** 2).sum() + ((xf * xf) @ var).sum()
    return math.sqrt(err2 / (ideal ** 2).sum())


# ---------------------------------------------------------------- CrossSim
def crosssim_importable(path: str | None) -> tuple[Any, str]:
    """CrossSim's `simulator` package, or None and why not."""
    if path:
        sys.path.insert(0, path)
    try:
        import simulator
        from simulator import AnalogCore, CrossSimParameters  # noqa: F401
    except ImportError as e:
        return None, f"CrossSim not importable ({e}); give --crosssim DIR"
    return simulator, getattr(simulator, "__file__", "?")


def crosssim_side(sim: Any, W: np.ndarray, x: np.ndarray, model: str, sigma: float,
                  chip: int) -> float:
    """CrossSim's bit-sliced balanced core: weight_bits 8 in 4 slices (2 bits each, the
    same integers as farc's differential slices), infinite on/off ratio (G_min = 0, so s
    is a fraction of the conductance range as in farc), 8-bit sign-magnitude DAC without
    input bit slicing (with an ideal ADC the sum is linear in the input: bit slicing
    changes nothing), ideal ADC. Its noise draws come from numpy's global generator."""
    p = sim.CrossSimParameters()
    p.core.style = "BITSLICED"
    p.core.bit_sliced.style = "BALANCED"
    p.core.bit_sliced.num_slices = SLICES
    p.core.weight_bits = WEIGHT_BITS
    p.core.rows_max = p.core.cols_max = 128
    p.xbar.device.cell_bits = CELL_BITS
    p.xbar.device.infinite_on_off_ratio = True
    p.xbar.dac.mvm.model = "SignMagnitudeDAC"
    p.xbar.dac.mvm.bits = 8
    p.xbar.dac.mvm.signed = True
    p.xbar.adc.mvm.bits = 0
    r = float(np.abs(x).max())
    p.core.mapping.inputs.mvm.min, p.core.mapping.inputs.mvm.max = -r, r
    xt = x.T.astype(np.float64)
    ideal = sim.AnalogCore(W.T.astype(np.float64), p) @ xt
    p.xbar.device.programming_error.enable = True
    p.xbar.device.programming_error.model = MODELS[model]
    p.xbar.device.programming_error.magnitude = sigma
    np.random.seed(chip)
    noisy = sim.AnalogCore(W.T.astype(np.float64), p) @ xt
    return rel_rms(np.asarray(noisy), np.asarray(ideal))


# ---------------------------------------------------------------- table
def fmt(v: list[float]) -> str:
    return f"{100 * np.mean(v):.3f} ± {100 * np.std(v):.3f}" if v else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--crosssim", default=None, metavar="DIR")
    args = ap.parse_args()
    pin_threads(1)
    sim, where = crosssim_importable(args.crosssim)
    print(f"CrossSim: {where}")
    rows = []
    t0 = time.time()
    for model in MODELS:
        for sigma in SIGMAS:
            cols: dict[str, list[float]] = {"none": [], "adc": [], "cf": [], "cs": []}
            for chip in range(args.chips):
                W, x = problem(chip)
                a, b, c = farc_side(W, x, model, sigma, chip)
                cols["none"].append(a)
                cols["adc"].append(b)
                cols["cf"].append(c)
                if sim is not None:
                    cols["cs"].append(crosssim_side(sim, W, x, model, sigma, chip))
            ratio = f"{np.mean(cols['none']) / np.mean(cols['cs']):.3f}" if cols["cs"] \
                else "n/a"
            rows.append([model, f"{100 * sigma:g} %", fmt(cols["cs"]), fmt(cols["none"]),
                         ratio, fmt(cols["adc"]), fmt(cols["cf"])])
    print(md_table(["programming noise", "sigma", "CrossSim (ideal ADC)", "farc, no ADC",
                    "farc / CrossSim", "farc, 9-bit ADC (step 1)", "closed form"], rows))
    print(f"\nrelative RMS error of y = W x in %, mean ± std over {args.chips} chips; "
          f"{time.time() - t0:.0f} s\n")
    print(md_table(["device preset (runtime/devices.py)", "farc, no ADC",
                    "farc, 9-bit ADC (step 1)"], preset_rows(args.chips)))


if __name__ == "__main__":
    main()
