"""`farc targets`, `farc inspect` and `farc report` on hand-built programs: tables print,
the PNGs are PNGs, the HTML page is self-contained (charts inline, no scripts, no network)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from farc.targets import load_target
from handmade_programs import attention_program, far_program

from farc.cli import cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("progs")
    t = load_target("isaac")
    far, attn = far_program(t), attention_program(t)
    far.manifest["model"]["config"] = {"deit": {"embed_dim": 8, "num_heads": 2},
                                       "hidden": [[[3, 2], [4, 1]]]}
    far.manifest["model"]["provenance"] = {"unpruned_hidden": [[[4, 4], [4, 4]]]}
    return far.save(d / "far.farc"), attn.save(d / "deit.farc")


def _run(*args):
    res = CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args],
                                                   catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_targets_lists_every_shipped_target():
    out = _run("targets")
    for name in ("isaac", "puma", "neurosim_rram"):
        assert name in out
    # isaac's sign-magnitude 2 x 15 cycles (its paper's 1.6 us: tests/targets/test_anchors.py);
    # puma's bipolar 15 + 2 cycles
    assert "3 us" in out and "1.7 us" in out


def test_targets_detail_shows_sources():
    out = _run("targets", "isaac")
    assert "adc_conversion_pj" in out and "Table 6" in out and "[energy]" in out


def test_inspect_table_pruning_and_map(programs, tmp_path):
    png = tmp_path / "map.png"
    out = _run("inspect", programs[0], "--plot", png)
    assert "pre_proj" in out and "total" in out and "units saved" in out
    assert png.read_bytes().startswith(PNG)


def test_pruning_from_prune_provenance_rows():
    from farc.report.tiling import pruning_rows

    far = far_program(load_target("isaac"))
    far.manifest["model"]["config"] = {"deit": {"embed_dim": 8, "num_heads": 2},
                                       "hidden": [[[3, 2], [4, 1]]]}
    far.manifest["model"]["provenance"] = {"units_kept": [
        {"block": 0, "head": h, "direction": d, "before": 4, "after": a}
        for h, pair in enumerate([(3, 2), (4, 1)]) for d, a in zip(("fwd", "bwd"), pair)]}
    (row,) = pruning_rows(far)
    assert (row["units_before"], row["units_after"], row["units_saved"]) == (16, 10, 6)


def test_report_compare_html_is_self_contained(programs, tmp_path):
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    out = _run("report", programs[0], "--compare", programs[1], "--attention", "rewrite",
               "--html", html, "--json", js)
    assert "lifetime (inferences)" in out and "crossbar rewrites" not in out
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "<script" not in page and not re.search(r"(src|href)=\"https?:", page)
    assert "attention" in page and "program their right operand" in page
    data = json.loads(js.read_text())
    assert set(data) == {"FAR", "DeiT"}
    assert data["DeiT"]["rewrite"]["cell_writes"] > 0


def test_report_refuses_bad_attention_mode(programs):
    res = CliRunner().invoke(cli, ["report", str(programs[0]), "--attention", "analog"])
    assert res.exit_code != 0 and "analog" in res.output


def test_report_set_overrides_cost_constants(programs):
    base = _run("report", programs[0])
    out = _run("report", programs[0], "--set", "energy.adc_conversion_pj=0")
    assert base != out
    res = CliRunner().invoke(cli, ["report", str(programs[0]), "--set", "adc.bits=4"])
    assert res.exit_code != 0


def test_parse_overrides_errors():
    from farc.errors import ConfigError
    from farc.report.build import parse_overrides

    assert parse_overrides(["latency.mvm_pipeline_cycles=2"]) == {
        "latency.mvm_pipeline_cycles": 2}
    with pytest.raises(ConfigError, match=r"only cost sections .* not \[adc\]"):
        parse_overrides(["adc.bits=4"])
    with pytest.raises(ConfigError, match=r"expected SECTION\.KEY=VALUE"):
        parse_overrides(["energy"])
    with pytest.raises(ConfigError, match="'fast' is not a number"):
        parse_overrides(["latency.crossbar_read_ns=fast"])


def test_tiling_rows_full_crossbar_is_fully_used():
    from farc.runtime.builder import make_program, pack_layer

    from farc.report.tiling import tiling_rows

    t = load_target("isaac")
    w = np.random.default_rng(0).normal(size=(128, 16)).astype(np.float32)
    lay = pack_layer(w, None, 0.01, t.xbar, name="fc", replicas=2)
    prog = make_program([{"op": "input", "in": [], "out": "x", "name": "x"},
                         {"op": "mvm", "in": ["x"], "out": "y", "layer": 0},
                         {"op": "output", "in": ["y"], "name": "y"}],
                        {"x": [128]}, {"y": [16]}, [lay], target=t.to_dict())
    fc, total = tiling_rows(prog)
    assert (fc["row_tiles"], fc["col_tiles"], fc["crossbars"], fc["replicas"]) == (1, 1, 2, 2)
    assert fc["utilization"] == total["utilization"] == 1.0  # 16 outputs x 8 slices = 128


def test_targets_detail_of_a_toml_file(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[target]\nname = "mine"\n[adc]\nbits = 6  # my ADC\n')
    out = _run("targets", f)
    assert "my ADC" in out and "mine" in out


def test_targets_show_chip_totals_beside_the_papers():
    out = _run("targets")
    assert "chip power" in out and "chip area" in out
    assert "paper 65.8 W" in out and "paper 85.4 mm²" in out  # ISAAC Table 6
    assert "paper 62.5 W" in out  # PUMA Table 3


def test_report_shows_throughput_and_replica_verdicts(tmp_path):
    t = load_target("isaac")
    p = far_program(t, replicas=2).save(tmp_path / "rep.farc")
    out = _run("report", p, "--json", tmp_path / "r.json")
    assert "images/s" in out and "throughput bottleneck" in out
    assert "pre_proj" in out and "cuts latency" in out
    data = json.loads((tmp_path / "r.json").read_text())
    (r,) = data.values()
    assert r["images_per_s"] > 0 and r["throughput"]["bottleneck"].startswith("crossbars ")
    assert r["replication"][0]["layer"] == "pre_proj"
