"""The ADC cost law (targets/derived.py): both laws equal the published ADC at its own width;
"walden" doubles energy and area per bit; "sar" follows NeuroSim's SarADC.cpp, whose
formulas are restated here from the source (22 nm LP), never from farc's constants."""

from __future__ import annotations

import pytest
from farc.targets import load_target
from farc.targets.derived import adc_area_mm2, adc_conversion_pj, adc_gsps
from farc.targets.mvm import Geometry, cycle_ns

from farc.errors import ConfigError


def _neurosim_sar_fj(bits: int) -> float:
    """SarADC.cpp GetColumnPower at 22 nm LP, fixed part: (0.538 log2(levels) + 4.3753) uW
    for (log2(levels) + 1) ns."""
    return (0.538 * bits + 4.3753) * (bits + 1)


NEUROSIM_SAR_UM2 = {4: 105.0, 5: 124.0, 6: 143.0, 7: 162.0, 8: 180.0}
"""SarADC.cpp CalculateUnitArea at 22 nm (shared/references/published-figures.md)."""


def _sar(name: str = "isaac", bits: int | None = None):
    t = load_target(name).with_overrides(**{"energy.adc_law": "sar"})
    return t if bits is None else t.with_overrides(**{"adc.bits": bits})


@pytest.mark.parametrize("law", ["walden", "sar"])
def test_both_laws_equal_the_published_adc_at_its_width(law):
    t = load_target("isaac").with_overrides(**{"energy.adc_law": law})
    assert adc_conversion_pj(t) == pytest.approx(16.0 / 8 / 1.28)  # Table 6
    assert adc_area_mm2(t) == pytest.approx(0.0096 / 8)
    assert adc_gsps(t) == pytest.approx(1.28)


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
def test_sar_energy_per_bit_follows_neurosim(bits):
    t = _sar()
    ratio = adc_conversion_pj(t, bits) / adc_conversion_pj(t, 8)
    assert ratio == pytest.approx(_neurosim_sar_fj(bits) / _neurosim_sar_fj(8), rel=1e-3)


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
def test_sar_area_per_bit_follows_neurosim_within_2_percent(bits):
    t = _sar()
    ratio = adc_area_mm2(t, bits) / adc_area_mm2(t, 8)
    assert ratio == pytest.approx(NEUROSIM_SAR_UM2[bits] / NEUROSIM_SAR_UM2[8], rel=0.02)


def test_sar_rate_is_one_clock_per_bit_plus_one():
    t = _sar()  # reference: 8 bits at 1.28 GS/s
    assert adc_gsps(t, 4) == pytest.approx(1.28 * 9 / 5)


def test_a_sar_bit_costs_less_than_a_walden_bit():
    sar, walden = _sar(), load_target("isaac")
    for b in (4, 5, 6, 7):
        assert adc_conversion_pj(sar, b) > adc_conversion_pj(walden, b)
        assert adc_conversion_pj(sar, b + 1) / adc_conversion_pj(sar, b) < 1.31
    assert adc_conversion_pj(walden, 6) == pytest.approx(adc_conversion_pj(walden, 8) / 4)


def test_the_bits_argument_equals_the_targets_own_bits():
    for b in (3, 6, 10):
        t = _sar(bits=b)
        assert adc_conversion_pj(t) == pytest.approx(adc_conversion_pj(_sar(), b))
        assert adc_area_mm2(t) == pytest.approx(adc_area_mm2(_sar(), b))


def test_a_slower_sar_adc_sets_the_cycle():
    t = _sar("isaac", bits=12)  # 1.28 GS/s x 9/13 = 0.886 GS/s: 128 columns take 144 ns
    g = Geometry.for_matrix(t, 128, 128)
    assert cycle_ns(t, g) == pytest.approx(128 / (1.28 * 9 / 13))


def test_unknown_law_is_one_line_error():
    with pytest.raises(ConfigError, match=r"adc_law = 'schreier' must be one of 'walden', 'sar'"):
        load_target("isaac").with_overrides(**{"energy.adc_law": "schreier"})
