"""neurosim_rram's constants against NeuroSim V1.4's own models, each recomputed here from
the raw parameters of Param.cpp and the formulas of SarADC.cpp / SubArray.cpp (restated in
this file), never from farc's constants."""

from __future__ import annotations

import math

import pytest
from farc.targets import load_target
from farc.targets.derived import adc_area_mm2, adc_conversion_pj, adc_gsps

F_M = 22e-9                 # Param.cpp technode = 22 (Technology featureSize)
ROWS = COLS = 128           # Param.cpp numRowSubArray, numColSubArray
CELL_H_F, CELL_W_F = 4, 12  # Param.cpp heightInFeatureSize1T1R, widthInFeatureSize1T1R
LEVEL_OUTPUT = 32           # Param.cpp levelOutput (5-bit ADC)
CLK_HZ = 1e9                # Param.cpp clkFreq
R_ON, ON_OFF, V_READ = 100e3, 17, 0.55  # Param.cpp resistanceOn, Roff / Ron, readVoltage


@pytest.fixture(scope="module")
def ns():
    return load_target("neurosim_rram")


def test_array_area_is_the_1t1r_cell(ns):
    # SubArray.cpp: lengthRow = numCol * widthInFeatureSize * F, lengthCol = numRow * height * F
    mm2 = (COLS * CELL_W_F * F_M) * (ROWS * CELL_H_F * F_M) * 1e6
    assert ns.area.crossbar_mm2 == pytest.approx(mm2, rel=0.01)


def test_adc_is_neurosims_sar_at_5_bits(ns):
    bits = int(math.log2(LEVEL_OUTPUT))
    assert (ns.adc.bits, ns.energy.adc_reference_bits, ns.energy.adc_law) == (bits, bits, "sar")
    # SarADC.cpp GetColumnPower, 22 nm LP fixed part, over (log2(levels) + 1) clock cycles
    fj = (0.538 * bits + 4.3753) * (bits + 1) / CLK_HZ * 1e9
    assert adc_conversion_pj(ns) == pytest.approx(fj / 1000, rel=0.01)
    assert adc_gsps(ns) == pytest.approx(CLK_HZ / 1e9 / (bits + 1), rel=1e-3)
    assert adc_area_mm2(ns) == pytest.approx(124e-6, rel=0.01)  # published-figures.md


def test_array_read_energy_is_the_sar_column_current_term(ns):
    # SarADC.cpp: 0.072341 * exp(-2.303 log10(R)) W per column during the conversion, R
    # scaled by 0.5 V / readVoltage; a quarter of the cells conducting (the file's assumption)
    bits = ns.adc.bits
    on = ROWS / 4
    r = 1 / (on / R_ON + (ROWS - on) / (R_ON * ON_OFF)) * 0.5 / V_READ
    watts = 0.072341 * math.exp(-2.303 * math.log10(r))
    pj = watts * (bits + 1) / CLK_HZ * 1e12 * COLS
    assert ns.energy.crossbar_cycle_pj == pytest.approx(pj, rel=0.01)


def test_write_energy_is_the_v14_cell(ns):
    assert ns.write.cell_pj == pytest.approx(2.0 ** 2 / R_ON * 10e-9 * 1e12, rel=0.01)


def test_tiles_talk_over_an_x_y_bus(ns):
    # Param.cpp globalBusType = false (X-Y bus): hops are tile pitches, no concentration
    ic = ns.interconnect
    assert (ic.topology, ic.tiles_per_router) == ("mesh", 1)
