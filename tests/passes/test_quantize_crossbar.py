"""QuantizeCrossbar: per-column integer weights and calibrated input scales."""

import dataclasses
import json

import numpy as np
import pytest
from _pass_models import calibrated, partitioned
from farc.passes._crossbar_ir import attr_array, const_value, crossbar_functions
from farc.passes.partition_crossbar import composite_parts
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.runtime.builder import quantize_weights
from farc.targets import load_target

from farc.errors import PassError

pytestmark = pytest.mark.tvm


def _run(target, calib=None):
    return QuantizeCrossbar(target, calib or calibrated("far"))(partitioned("far"))


def test_weights_per_column_and_input_scale_from_max():
    target = load_target("isaac").with_overrides(**{"quant.weight_bits": 6,
                                                    "quant.input_bits": 5})
    mod = _run(target)
    calib = calibrated("far")
    for _, func in crossbar_functions(mod):
        q, s_w = quantize_weights(const_value(composite_parts(func)[0]), 6)
        np.testing.assert_array_equal(attr_array(func, "q"), q)
        np.testing.assert_array_equal(attr_array(func, "w_scale"), s_w)
        assert attr_array(func, "q").dtype == np.int64
        assert np.abs(q).max() <= 31
        absmax = calib[str(func.attrs["farc.layer"])].absmax
        assert float(func.attrs["farc.calib_range"]) == absmax  # the decision's input, in the IR
        assert float(func.attrs["farc.in_scale"]) == pytest.approx(absmax / 15)
        sections = json.loads(str(func.attrs["farc.xbar"]))  # what every later stage reads
        assert (sections["quant"]["weight_bits"], sections["quant"]["input_bits"]) == (6, 5)


def test_percentile_policy_uses_the_percentile():
    target = load_target("isaac").with_overrides(**{"quant.calibration": "percentile",
                                                    "quant.percentile": 90.0})
    calib = {k: dataclasses.replace(v, percentile=v.absmax / 2)
             for k, v in calibrated("far").items()}
    qx = 2 ** (target.quant.input_bits - 1) - 1
    for _, func in crossbar_functions(_run(target, calib)):
        name = str(func.attrs["farc.layer"])
        assert float(func.attrs["farc.in_scale"]) == pytest.approx(calib[name].absmax / 2 / qx,
                                                                    rel=1e-6)


def test_missing_calibration_is_a_pass_error():
    with pytest.raises(PassError, match="no calibration statistics for layer"):
        _run(load_target("isaac"), {"head": calibrated("far")["head"]})
