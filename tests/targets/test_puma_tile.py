"""PUMA's tile against the anchor derived from the published node totals (Ankit et al.,
ASPLOS 2019: 62.5 W, 90.638 mm^2, 138 tiles) less the authors' simulator's network
(puma-simulator include/constants.py, include/config.py): 34.5 concentrated-mesh routers
(138 tiles / cmesh_c = 4) of 16.13 + 0.41 mW and 0.047 mm^2, and the HyperTransport link
of 10.4 W and 22.88 mm^2. Every expected figure is computed here from those raw published
numbers, never from farc's constants; docs/targets.md ("PUMA's tile") explains the area."""

from __future__ import annotations

import pytest
from farc.targets import load_target
from farc.targets.chip import chip_totals
from farc.targets.derived import adcs_per_crossbar

NODE_MW, NODE_MM2, TILES = 62_500.0, 90.638, 138        # paper Table 3 / abstract
CMESH_C = 4                                             # config.py cmesh_c
ROUTER_MW, ROUTER_MM2 = 16.13 + 0.41, 0.047             # constants.py noc_pow_dyn + leak, noc_area
HT_MW, HT_MM2 = 10_400.0, 22.88                         # constants.py noc_inter_pow_dyn, _area
ROUTERS = TILES / CMESH_C
TILE_MW = (NODE_MW - HT_MW - ROUTERS * ROUTER_MW) / TILES      # 373.4 mW
TILE_MM2 = (NODE_MM2 - HT_MM2 - ROUTERS * ROUTER_MM2) / TILES  # 0.4793 mm^2
CORES_PER_TILE = 8                                       # config.py num_ima
SIM_ADCS_PER_CORE = 2 * 2                                # config.py num_adc_per_matrix x num_matrix
SIM_ADC_MM2 = 0.0012                                     # constants.py adc_area_dict['8']
SIM_NODE_MM2 = 87.3  # the simulator's own constants summed over 138 tiles (published-figures.md)
SIM_TILE_MM2 = (SIM_NODE_MM2 - HT_MM2 - ROUTERS * ROUTER_MM2) / TILES  # 0.4551 mm^2


@pytest.fixture(scope="module")
def puma():
    return load_target("puma")


def test_the_anchor_is_what_the_issue_states():
    assert TILE_MW == pytest.approx(373.4, abs=0.05)
    assert TILE_MM2 == pytest.approx(0.4793, abs=0.00005)


def test_tile_power_within_5_percent(puma):
    c = chip_totals(puma)
    # like for like: the anchor holds no router, farc's tile carries a quarter of one
    model = c.total_power_mw("tile") - c.power_mw["tile"]["router"]
    assert model == pytest.approx(TILE_MW, rel=0.05)
    assert c.total_power_mw("tile") == pytest.approx(TILE_MW, rel=0.05)


def test_tile_area_differs_by_the_extra_adcs_and_the_papers_gap_to_its_simulator(puma):
    model = chip_totals(puma).total_area_mm2("tile") - ROUTER_MM2 / CMESH_C
    assert model > TILE_MM2 * 1.10  # 17 % over: not within 5 %, explained below
    # (1) farc gives each crossbar its own ADC (the 100 ns cycle of the 1.8 us MVM needs
    # 128 columns per 100 ns per crossbar); the simulator's config has 4 per core
    farc_adcs = puma.chip.crossbars_per_ima * adcs_per_crossbar(puma)
    extra = CORES_PER_TILE * (farc_adcs - SIM_ADCS_PER_CORE) * SIM_ADC_MM2
    assert extra == pytest.approx(0.1152)
    # (2) without them farc's tile is the simulator's own tile within 3 % ...
    assert model - extra == pytest.approx(SIM_TILE_MM2, rel=0.03)
    # (3) ... and the simulator's own constants sum 5 % below the paper's node (Table 3 is
    # not a simulator printout), which is the rest of the difference
    assert SIM_TILE_MM2 / TILE_MM2 == pytest.approx(0.95, abs=0.01)
    assert model - extra == pytest.approx(TILE_MM2, rel=0.08)
