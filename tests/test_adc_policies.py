"""ADC and input-encoding policies below a lossless ADC (docs/numerics.md): sign-magnitude
inputs, per-slice ranges, uniform steps, percentile calibration. Checked three ways: the
emulator's integers against the independent reference (farc.check.reference) on every
policy combination; the program validator's rules; and the single-MVM error figures that
the policies exist for (K=128, N=64, seeded Gaussian and ReLU inputs)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from farc.runtime.emulator import Emulator
from farc.runtime.numerics import input_planes
from xbar_flat import xp

from farc.check import reference
from farc.check.adc_error import one_layer_program, single_mvm_rms
from farc.check.reference import CrossbarMatmul, LayerChoice
from farc.errors import ConfigError, ProgramError

K, N = 40, 6
BASE = dict(rows=16, cols=32, cell_bits=2, dac_bits=1, weight_bits=8, input_bits=8)


POLICIES = list(itertools.product(["offset", "sign_magnitude", "bipolar"], ["tile", "slice"],
                                  ["pow2", "uniform"], [False, True],
                                  ["differential", "offset"]))


@pytest.mark.parametrize(("encoding", "granularity", "rule", "flip", "mapping"), POLICIES)
def test_emulator_integers_equal_the_reference(encoding, granularity, rule, flip, mapping,
                                               monkeypatch):
    rng = np.random.default_rng(7)
    W = rng.normal(size=(K, N)).astype(np.float32)
    calib = rng.normal(size=(64, K)).astype(np.float32)
    x = rng.normal(size=(9, K)).astype(np.float32)
    p = xp(**BASE, adc_bits=4, mapping=mapping, adc_flip=flip, adc_range="calibrated",
                   input_encoding=encoding, adc_granularity=granularity, adc_step_rule=rule,
                   adc_statistic="percentile", adc_percentile=99.0)
    prog = one_layer_program(W, p, calib, float(np.float32(np.abs(calib).max() / p.qx)))
    assert not Emulator(prog).layers[0].lossless  # a 4-bit ADC loses information here
    ref = CrossbarMatmul(W, None, LayerChoice.of(prog.layers[0], prog.arrays))
    assert ref.work == torch.float32  # small sums, dyadic steps: the fast path is proven
    monkeypatch.setattr(reference, "_float32_is_exact", lambda *a, **k: False)
    ref64 = CrossbarMatmul(W, None, LayerChoice.of(prog.layers[0], prog.arrays))
    assert ref64.work == torch.float64
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[1].numpy()
        np.testing.assert_array_equal(ref64(torch.from_numpy(x))[1].numpy(), want)
    for path in ("auto", "bitlevel"):
        emu = Emulator(prog, mvm_path=path, trace=True)
        emu.run({"x": x})
        np.testing.assert_array_equal(emu.traces[0][0].y_int, want)


def test_reference_adc_takes_float32_only_where_it_is_proven_exact():
    """The reference's bit-level ADC runs in float32 only when float32 is shown to give the
    float64 codes for every partial sum the layer can produce."""
    planes = np.array([1.0, 2.0, 4.0])
    fits = dict(peak=384.0, low=0.0, top=63.0, plane_w=planes, drive_max=128, signed=False)
    assert reference._float32_is_exact(steps=np.array([[0.75, 6.5]]), **fits)
    # 1.2 is no float32 (nor float64) number: P = 9 gives 7.5 -> 8 in float64, 7 in float32
    assert not reference._float32_is_exact(steps=np.array([[0.75, 1.2]]), **fits)
    # partial sums past 2**24 are not exact float32 integers
    assert not reference._float32_is_exact(steps=np.array([[1.0]]),
                                           **{**fits, "peak": float(2**24)})


def test_sign_magnitude_takes_twice_the_magnitude_cycles():
    p = xp(**BASE, input_encoding="sign_magnitude")
    assert (p.cycles, p.in_zero) == (14, 0)  # 2 phases x 7 magnitude bits
    x = np.array([[5, -3, 0]])
    planes = input_planes(x, 8, 1, "sign_magnitude")
    assert planes.shape == (14, 1, 3)
    assert planes[:3, 0].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]     # 5 = 101b
    assert planes[7:9, 0].tolist() == [[0, 1, 0], [0, 1, 0]]               # -3: phase 2


def test_bipolar_takes_the_magnitude_cycles_once_with_signed_pulses_and_a_signed_adc():
    p = xp(**BASE, input_encoding="bipolar")
    assert (p.cycles, p.in_zero, p.adc_signed) == (7, 0, True)  # one phase of 7 bits
    planes = input_planes(np.array([[5, -3, 0]]), 8, 1, "bipolar")
    assert planes.shape == (7, 1, 3)
    assert planes[:3, 0].tolist() == [[1, -1, 0], [0, -1, 0], [1, 0, 0]]  # 5 = 101b, -3 = -11b
    # 16 rows x 3 levels = 48: an 8-bit signed ADC (top code 127) is lossless, 6 bits is not
    assert xp(**BASE, input_encoding="bipolar", adc_bits=7).full_range_lossless
    assert not xp(**BASE, input_encoding="bipolar", adc_bits=6).full_range_lossless
    assert xp(**BASE, adc_bits=6).full_range_lossless  # unsigned: 63 >= 48
    from farc.runtime.numerics import adc, adc_codes

    assert adc_codes(4, signed=True) == (-7, 7) and adc_codes(4) == (0, 15)
    sums = np.array([-20.0, -7.0, -2.5, 0.0, 2.5, 9.0])
    assert adc(sums.copy(), 1, 4, signed=True).tolist() == [-7, -7, -2, 0, 3, 7]
    assert adc(sums.copy(), 2, 4, signed=True).tolist() == [-14, -6, -2, 0, 2, 10]


def test_uniform_steps_are_dyadic_and_never_below_one():
    p = xp(**BASE, adc_bits=5, adc_step_rule="uniform", adc_range="calibrated")
    assert p.step_for(40.0) == np.ceil(40 / 31 * 256) / 256
    assert p.step_for(100.0) == p.full_step  # capped at the physical maximum
    assert p.step_for(10.0) == 1.0
    assert p.full_step == np.ceil(48 / 31 * 256) / 256  # 16 rows x 3 levels


@pytest.mark.parametrize(("change", "message"), [
    ({"quant.input_encoding": "gray"}, r"\[quant\] input_encoding = 'gray' must be one of"),
    ({"adc.granularity": "slice"}, r"adc_step\[0\] must list one step per weight slice"),
    ({"adc.step_rule": "uniform", "adc_step": [1.001, 1.0, 1.0]},
     r"adc_step\[0\] = 1.001 must be a multiple of 1/256"),
    ({"adc.bitz": 4}, r"unknown key 'bitz' in \[adc\] \(did you mean 'bits'\?\)"),
])
def test_validator_refuses_bad_policies(change, message):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(K, N)).astype(np.float32)
    p = xp(**BASE, adc_bits=4, adc_range="calibrated")
    prog = one_layer_program(W, p, rng.normal(size=(16, K)).astype(np.float32), 0.01)
    layer = json.loads(json.dumps(prog.manifest["layers"][0]))
    for key, value in change.items():
        section, _, field = key.rpartition(".")
        (layer[section] if section else layer)[field] = value
    with pytest.raises(ProgramError, match=message):
        type(prog)({**prog.manifest, "layers": [layer]}, prog.arrays).validate()


def test_target_refuses_unknown_policies():
    from farc.targets import load_target

    with pytest.raises(ConfigError, match=r"\[adc\] granularity = 'column' must be one of"):
        load_target("isaac").with_overrides(**{"adc.granularity": "column"})
    with pytest.raises(ConfigError, match=r"\[quant\] input_encoding = 'x' must be one of"):
        load_target("isaac").with_overrides(**{"quant.input_encoding": "x"})
    with pytest.raises(ConfigError, match=r"\[adc\] percentile = 20 must be in \(50, 100\]"):
        load_target("isaac").with_overrides(**{"adc.percentile": 20})


# ---------------------------------------------------------------- what the policies buy
TODAY = dict(adc_range="calibrated")
BEST = dict(adc_range="calibrated", input_encoding="sign_magnitude", adc_granularity="slice",
            adc_step_rule="uniform", adc_statistic="percentile", adc_percentile=99.9)


@pytest.mark.parametrize(("kind", "bits"), [("gauss", 4), ("gauss", 5), ("relu", 4),
                                            ("relu", 5)])
def test_best_policy_cuts_the_single_mvm_error_tenfold(kind, bits):
    base = dict(rows=128, cols=128, cell_bits=2, dac_bits=1, weight_bits=8, input_bits=8,
                adc_bits=bits)
    today = single_mvm_rms(xp(**base, **TODAY), kind)
    best = single_mvm_rms(xp(**base, **BEST), kind)
    assert best * 10 <= today, (today, best)


@pytest.mark.slow
def test_compile_cli_selects_the_policies_and_verify_holds(far_checkpoint, far_digits, tmp_path):
    """`farc compile` options reach every layer; the compiled program's integers equal the
    independent reference's on both MVM paths."""
    from farc.runtime.program import Program

    from farc.check.verify import Tolerances, resolve_references, verify
    from farc.cli import main

    out = tmp_path / "far.farc"
    main(["compile", str(far_checkpoint), "--weight-bits", "8", "--input-bits", "8",
          "--adc-bits", "5", "--adc-range", "calibrated", "--input-encoding", "sign_magnitude",
          "--adc-granularity", "slice", "--adc-step-rule", "uniform", "--adc-statistic",
          "percentile", "--adc-percentile", "99.9", "--calib-samples", "16", "-o", str(out)])
    prog = Program.load(out)
    layer = prog.layers[1]
    assert (layer["quant"]["input_encoding"], layer["adc"]["granularity"],
            layer["adc"]["step_rule"], layer["adc"]["bits"]) == \
        ("sign_magnitude", "slice", "uniform", 5)
    assert len(layer["adc_step"][0]) == 4 and 0 <= layer["adc_calib_clipped"] < 1  # 7 / 2 bits
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    r = verify(prog, x, None, resolve_references(prog, out, model=far_digits),
               tol=Tolerances(min_agreement=0.0, exact_rel=1.0), bitlevel_samples=4)
    assert all(it.ok for path in ("fast", "bitlevel") for it in r.layers[path])


# ---------------------------------------------------------------- the default below lossless
def test_lowering_the_adc_picks_the_calibrated_per_slice_policy(capsys, tmp_path):
    from farc.targets.target import TARGET_DIR

    from farc.commands._target_options import overridden_target

    t = overridden_target("isaac", {"adc_bits": 5, "weight_bits": 8})
    assert (t.adc.bits, t.adc.range, t.adc.granularity, t.adc.step_rule, t.adc.statistic,
            t.quant.input_encoding) == \
        (5, "calibrated", "slice", "uniform", "mse", "sign_magnitude")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a 5-bit ADC cannot resolve partial sums up to 192 " \
        "(lossless needs 8 bits): using the calibrated per-slice ADC policy" in err
    assert "statistic=mse" in err and "input_encoding" not in err  # isaac's are signed
    kept = overridden_target("isaac", {"adc_bits": 5, "input_encoding": "bipolar"})
    assert (kept.adc.range, kept.quant.input_encoding) == ("calibrated", "bipolar")
    # a target with offset inputs is taken to sign-magnitude ones, and says so
    text = (TARGET_DIR / "isaac.toml").read_text()
    offset = tmp_path / "isaac_offset.toml"
    offset.write_text(text.replace('input_encoding = "sign_magnitude"',
                                   'input_encoding = "offset"'))
    t = overridden_target(str(offset), {"adc_bits": 5, "weight_bits": 8})
    assert t.quant.input_encoding == "sign_magnitude"
    assert "input_encoding=sign_magnitude" in capsys.readouterr().err


@pytest.mark.parametrize("given", [{"adc_bits": 5, "adc_range": "full"},
                                   {"adc_bits": 5, "adc_statistic": "max"},
                                   {"adc_bits": 8}, {"weight_bits": 8}])
def test_a_chosen_policy_or_a_lossless_adc_is_left_alone(given, capsys):
    from farc.targets import load_target

    from farc.commands._target_options import OVERRIDES, overridden_target

    want = load_target("isaac").with_overrides(**{OVERRIDES[k]: v for k, v in given.items()})
    assert overridden_target("isaac", given) == want
    assert capsys.readouterr().err == ""


def test_a_sweep_below_lossless_uses_the_policy_and_says_so():
    from farc.targets import load_target

    from farc.explore.grid import expand, parse_grid, point_targets

    base = load_target("isaac")
    notes: list[str] = []
    targets = point_targets(base, expand(parse_grid(["adc.bits=6..8"], base)), notes)
    assert [(t.adc.bits, t.adc.range) for t in targets] == \
        [(6, "calibrated"), (7, "calibrated"), (8, "full")]
    assert notes == ["2 point(s) below a lossless ADC width use the calibrated per-slice ADC "
                     "policy (adc.bits=6, adc.bits=7); sweep adc.range to compare"]
    chosen = point_targets(base, expand(parse_grid(["adc.bits=6", "adc.range=full"], base)))
    assert chosen[0].adc.range == "full"


@pytest.mark.parametrize(("encoding", "rule"), [("sign_magnitude", "uniform"),
                                                ("bipolar", "pow2"), ("offset", "uniform")])
def test_mse_clip_points_are_the_least_squares_ones(encoding, rule):
    """statistic 'mse': every step the compiler chose gives no larger squared ADC error on
    the calibration sums than the full range or the 99.9th percentile would, and the
    emulator's integers still equal the independent reference's."""
    from farc.runtime.numerics import adc_codes, mse_range

    rng = np.random.default_rng(11)
    W = rng.normal(size=(K, N)).astype(np.float32)
    calib = (rng.standard_t(3, size=(64, K)) * 0.3).astype(np.float32)  # heavy tails
    p = xp(**BASE, adc_bits=4, adc_range="calibrated", input_encoding=encoding,
           adc_granularity="slice", adc_step_rule=rule, adc_statistic="mse")
    prog = one_layer_program(W, p, calib, float(np.float32(np.abs(calib).max() / p.qx)))
    ref = CrossbarMatmul(W, None, LayerChoice.of(prog.layers[0], prog.arrays))
    x = rng.normal(size=(9, K)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[1].numpy()
    emu = Emulator(prog, trace=True)
    emu.run({"x": x})
    np.testing.assert_array_equal(emu.traces[0][0].y_int, want)

    low, top = adc_codes(4, p.adc_signed)

    def sq_err(sums: np.ndarray, step: float) -> float:  # restated from docs/numerics.md
        return float(((np.clip(np.floor(sums / step + 0.5), low, top) * step - sums) ** 2).sum())

    sums = np.minimum(np.abs(rng.standard_t(3, size=5000)) * p.pmax / 12, p.pmax)  # a sum
    # never exceeds the physical maximum; most are far below it
    chosen = p.step_for(mse_range(sums, p.step_for, 4, p.adc_signed))
    for other in (sums.max(), np.percentile(sums, 99.9), np.percentile(sums, 90)):
        assert sq_err(sums, chosen) <= sq_err(sums, p.step_for(other))
    assert chosen < p.step_for(sums.max())  # the heavy tail is clipped, not covered
