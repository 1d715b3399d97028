"""TileCrossbar: dense column packing; reported crossbars equal the closed form."""

import math

import numpy as np
import pytest
from _pass_models import calibrated, partitioned
from farc.passes._crossbar_ir import attr_array, crossbar_functions
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.passes.tile_crossbar import TileCrossbar, crossbars_needed
from farc.targets import load_target

pytestmark = pytest.mark.tvm


def _tile(kind, target):
    calib = calibrated(kind)
    mod = TileCrossbar(target, calib)(QuantizeCrossbar(target, calib)(partitioned(kind)))
    return {str(f.attrs["farc.layer"]): f for _, f in crossbar_functions(mod)}


def _kn(func) -> tuple[int, int]:
    return int(func.attrs["farc.K"]), int(func.attrs["farc.N"])


def _small(mapping: str, **kw):
    return load_target("isaac").with_overrides(**{
        "crossbar.rows": 8, "crossbar.cols": 16, "quant.weight_bits": 8,
        "quant.mapping": mapping, **kw})


@pytest.mark.parametrize("kind", ["deit", "far", "pruned"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_crossbar_total_equals_closed_form(kind, mapping):
    target = _small(mapping)
    layers = _tile(kind, target)
    slices = math.ceil((7 if mapping == "differential" else 8) / target.crossbar.cell_bits)
    signs = 2 if mapping == "differential" else 1
    closed = sum(math.ceil(k / 8) * math.ceil(n * slices * signs / 16)
                 for k, n in map(_kn, layers.values()))
    reported = sum(int(f.attrs["farc.row_tiles"]) * int(f.attrs["farc.col_tiles"])
                   for f in layers.values())
    assert reported == closed
    assert closed == sum(crossbars_needed(*_kn(f), target) for f in layers.values())


def test_codes_decode_back_to_integer_weights():
    target = _small("differential")
    for f in _tile("far", target).values():
        codes = attr_array(f, "codes").astype(np.int64)
        rt, ct, rows, cols = codes.shape
        q = attr_array(f, "q")
        k, n = q.shape
        slices = 4  # ceil(7 magnitude bits / 2-bit cells)
        flat = codes.transpose(0, 2, 1, 3).reshape(rt * rows, ct * cols)
        lv = flat[:k, : n * 2 * slices].reshape(k, n, 2, slices)
        mags = (lv << (np.arange(slices) * 2)).sum(-1)
        np.testing.assert_array_equal(mags[..., 0] - mags[..., 1], q)
        assert not flat[k:].any() and not flat[:, n * 2 * slices:].any()


def test_calibrated_adc_step_not_coarser_than_full_scale():
    full = _tile("far", _small("differential", **{"adc.bits": 4}))
    cal = _tile("far", _small("differential", **{"adc.bits": 4, "adc.range": "calibrated"}))
    for name, f in cal.items():
        steps, full_steps = f.attrs["farc.adc_step"], full[name].attrs["farc.adc_step"]
        assert len(steps) == len(f.attrs["farc.adc_pmax"]) == int(f.attrs["farc.row_tiles"])
        assert "farc.adc_pmax" not in full[name].attrs  # full scale: nothing was measured
        assert all(1 <= s <= fs for s, fs in zip(steps, full_steps))
