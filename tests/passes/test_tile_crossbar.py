"""TileCrossbar: dense column packing; reported crossbars equal the closed form."""

import math

import numpy as np
import pytest
from _pass_models import calibrated, partitioned
from farc.passes.partition_crossbar import crossbar_functions
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.passes.tile_crossbar import TileCrossbar, crossbars_needed
from farc.targets import load_target

pytestmark = pytest.mark.tvm


def _tile(kind, target):
    store, calib = {}, calibrated(kind)
    mod = QuantizeCrossbar(target, calib, store)(partitioned(kind))
    return TileCrossbar(target, store, calib)(mod), store


def _small(mapping: str, **kw):
    return load_target("isaac").with_overrides(**{
        "crossbar.rows": 8, "crossbar.cols": 16, "quant.weight_bits": 8,
        "quant.mapping": mapping, **kw})


@pytest.mark.parametrize("kind", ["deit", "far", "pruned"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_crossbar_total_equals_closed_form(kind, mapping):
    target = _small(mapping)
    mod, store = _tile(kind, target)
    slices = math.ceil((7 if mapping == "differential" else 8) / target.crossbar.cell_bits)
    signs = 2 if mapping == "differential" else 1
    closed = sum(math.ceil(d.weight.shape[0] / 8) * math.ceil(d.weight.shape[1] * slices
                                                               * signs / 16)
                 for d in store.values())
    reported = sum(int(f.attrs["farc.row_tiles"]) * int(f.attrs["farc.col_tiles"])
                   for _, f in crossbar_functions(mod))
    assert reported == closed
    assert closed == sum(crossbars_needed(*d.weight.shape, target) for d in store.values())


def test_codes_decode_back_to_integer_weights():
    target = _small("differential")
    _, store = _tile("far", target)
    for d in store.values():
        codes = d.arrays["codes"].astype(np.int64)
        rt, ct, rows, cols = codes.shape
        k, n = d.q.shape
        flat = codes.transpose(0, 2, 1, 3).reshape(rt * rows, ct * cols)
        lv = flat[:k, : n * 2 * d.info["slices"]].reshape(k, n, 2, d.info["slices"])
        mags = (lv << (np.arange(d.info["slices"]) * 2)).sum(-1)
        np.testing.assert_array_equal(mags[..., 0] - mags[..., 1], d.q)
        assert not flat[k:].any() and not flat[:, n * 2 * d.info["slices"]:].any()


def test_calibrated_adc_step_not_coarser_than_full_scale():
    full = _tile("far", _small("differential", **{"adc.bits": 4}))[1]
    cal = _tile("far", _small("differential", **{"adc.bits": 4, "adc.range": "calibrated"}))[1]
    for name, d in cal.items():
        assert d.info["adc_range"] == "calibrated"
        assert all(1 <= s <= f for s, f in zip(d.info["adc_step"],
                                                 full[name].info["adc_step"]))
