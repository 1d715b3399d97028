"""Target files: every shipped one loads; bad keys, types and values are refused with one
line naming the file, section, key and value."""

from __future__ import annotations

import pytest
from farc.targets import list_targets, load_target
from farc.targets.target import Target

from farc.errors import ConfigError


def test_shipped_targets_load():
    assert {"isaac", "puma", "neurosim_rram"} <= set(list_targets())
    for name in list_targets():
        t = load_target(name)
        assert t.name == name and t.crossbars > 0


def test_round_trip_keeps_cost_sections():
    t = load_target("puma")
    again = Target.from_dict(t.to_dict())
    assert again == t
    assert again.latency.mvm_pipeline_cycles == 2


def test_with_overrides_reaches_cost_sections():
    t = load_target("isaac").with_overrides(**{"energy.adc_conversion_pj": 2.0})
    assert t.energy.adc_conversion_pj == 2.0


def _data(**sections):
    d = load_target("isaac").to_dict()
    for sec, vals in sections.items():
        d.setdefault(sec, {}).update(vals)
    return d


def test_unknown_key_suggests_typo():
    with pytest.raises(ConfigError, match=r"unknown key 'adc_conversoin_pj' in \[energy\].*"
                                          r"adc_conversion_pj"):
        Target.from_dict(_data(energy={"adc_conversoin_pj": 1.0}), source="x.toml")


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"x.toml: unknown section \[laytency\].*latency"):
        Target.from_dict({**_data(), "laytency": {}}, source="x.toml")


def test_wrong_type():
    with pytest.raises(ConfigError, match=r"\[latency\] crossbar_read_ns = 'fast' must be float"):
        Target.from_dict(_data(latency={"crossbar_read_ns": "fast"}))


def test_negative_value():
    with pytest.raises(ConfigError, match=r"\[area\] adc_mm2 = -1.0 must be finite and >= 0"):
        Target.from_dict(_data(area={"adc_mm2": -1.0}))


def test_zero_where_positive_needed():
    with pytest.raises(ConfigError, match=r"\[latency\] adc_gsps = 0.0 must be > 0"):
        Target.from_dict(_data(latency={"adc_gsps": 0.0}))


def test_section_must_be_table():
    with pytest.raises(ConfigError, match=r"\[write\] must be a table"):
        Target.from_dict({**_data(), "write": 3})


def test_file_error_names_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[target]\nname = "bad"\n[digital]\nvector_lanes = -4\n')
    with pytest.raises(ConfigError, match=r"bad.toml: \[digital\] vector_lanes = -4 must be > 0"):
        load_target(f)


def test_str_shows_only_non_default_values():
    assert str(load_target("isaac").with_overrides(**{"adc.bits": 6})).startswith(
        "Target('isaac', ")
    assert "adc.bits=6" in str(load_target("isaac").with_overrides(**{"adc.bits": 6}))
    assert str(Target(name="plain")) == "Target('plain')"
