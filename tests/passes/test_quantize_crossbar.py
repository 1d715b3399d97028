"""QuantizeCrossbar: per-column integer weights and calibrated input scales."""

import dataclasses

import numpy as np
import pytest
from _pass_models import calibrated, partitioned
from farc.passes.partition_crossbar import crossbar_functions
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.runtime.builder import quantize_weights
from farc.targets import load_target

from farc.errors import PassError

pytestmark = pytest.mark.tvm


def _run(target, calib=None):
    store = {}
    mod = QuantizeCrossbar(target, calib or calibrated("far"), store)(partitioned("far"))
    return mod, store


def test_weights_per_column_and_input_scale_from_max():
    target = load_target("isaac").with_overrides(**{"quant.weight_bits": 6,
                                                    "quant.input_bits": 5})
    mod, store = _run(target)
    calib = calibrated("far")
    for _, func in crossbar_functions(mod):
        d = store[str(func.attrs["farc.layer"])]
        q, s_w = quantize_weights(d.weight, 6)
        np.testing.assert_array_equal(d.q, q)
        np.testing.assert_array_equal(d.w_scale, s_w)
        assert np.abs(d.q).max() <= 31
        assert float(func.attrs["farc.in_scale"]) == pytest.approx(calib[d.name].absmax / 15)
        assert int(func.attrs["farc.in_zero"]) == 16


def test_percentile_policy_uses_the_percentile():
    target = load_target("isaac").with_overrides(**{"quant.calibration": "percentile",
                                                    "quant.percentile": 90.0})
    calib = {k: dataclasses.replace(v, percentile=v.absmax / 2)
             for k, v in calibrated("far").items()}
    _, store = _run(target, calib)
    qx = 2 ** (target.quant.input_bits - 1) - 1
    for name, d in store.items():
        assert d.in_scale == pytest.approx(calib[name].absmax / 2 / qx, rel=1e-6)


def test_missing_calibration_is_a_pass_error():
    with pytest.raises(PassError, match="no calibration statistics for layer"):
        _run(load_target("isaac"), {"head": calibrated("far")["head"]})
