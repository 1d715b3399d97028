"""`farc sweep`: the grid syntax and its errors, the table / Pareto plot / HTML writers, bad
input (one line, exit 1, nothing written), one small end-to-end sweep over a process pool,
and resumability (a rerun does no work; changed settings or --force redo points)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from farc.targets import load_target

from farc.errors import ConfigError
from farc.explore import sweep as sweep_mod
from farc.explore.grid import (
    check_disjoint,
    expand,
    fixed_base,
    grid_keys,
    parse_grid,
    point_slug,
    point_targets,
)
from farc.explore.sweep import Job, SweepOptions, load_finished, my_share, plan_jobs
from farc.report.sweep import SweepRow, pareto_front, pareto_png, to_csv, to_markdown

PNG = b"\x89PNG\r\n\x1a\n"
OUTPUTS = {"sweep.csv", "sweep.md", "sweep.json", "pareto.png", "sweep.html", "points"}


@pytest.fixture(scope="module")
def isaac():
    return load_target("isaac")


# ----------------------------------------------------------------------------- grid
@pytest.mark.parametrize(("items", "want"), [
    (["adc.bits=4..6"], [{"adc.bits": 4}, {"adc.bits": 5}, {"adc.bits": 6}]),
    (["adc.bits=4..5,8"], [{"adc.bits": 4}, {"adc.bits": 5}, {"adc.bits": 8}]),
    (["adc.bits=6,8", "crossbar.cell_bits=1,2"],  # the first --grid varies slowest
     [{"adc.bits": 6, "crossbar.cell_bits": 1}, {"adc.bits": 6, "crossbar.cell_bits": 2},
      {"adc.bits": 8, "crossbar.cell_bits": 1}, {"adc.bits": 8, "crossbar.cell_bits": 2}]),
    (["adc.flip=false, true"], [{"adc.flip": False}, {"adc.flip": True}]),
    (["adc.range=full,calibrated"], [{"adc.range": "full"}, {"adc.range": "calibrated"}]),
    (["energy.adc_conversion_pj=1,0.5"],  # typed like the target's value: floats
     [{"energy.adc_conversion_pj": 1.0}, {"energy.adc_conversion_pj": 0.5}]),
    (["adc.bits+energy.adc_conversion_pj=6:0.42,8:1.67"],  # linked keys move together
     [{"adc.bits": 6, "energy.adc_conversion_pj": 0.42},
      {"adc.bits": 8, "energy.adc_conversion_pj": 1.67}]),
])
def test_grid_expands_ranges_lists_and_linked_keys(isaac, items, want):
    points = expand(parse_grid(items, isaac))
    assert points == want
    assert all(type(v) is type(w) for p, q in zip(points, want) for v, w in
               zip(p.values(), q.values()))
    targets = point_targets(isaac, points)
    assert [t.adc.bits for t in targets] == [p.get("adc.bits", 8) for p in points]


def test_grid_keys_are_columns_in_order(isaac):
    grid = parse_grid(["crossbar.cell_bits=1", "adc.bits+adc.flip=6:true"], isaac)
    assert grid_keys(grid) == ["crossbar.cell_bits", "adc.bits", "adc.flip"]


@pytest.mark.parametrize(("items", "match"), [
    ([], "give at least one --grid"),
    (["adcbits=4"], "expected SECTION.KEY=V1,V2"),
    (["adc.bits"], "expected SECTION.KEY=V1,V2"),
    (["adc.bitz=4"], r"--grid adc.bitz: unknown key .bitz. in \[adc\] \(did you mean"),
    (["adcc.bits=4"], r"unknown section \[adcc\] \(did you mean 'adc'\?\)"),
    (["adc.bits=9..4"], r"range 9..4 is empty \(write 4..9\)"),
    (["adc.bits=4.5..6"], "must be two integers a..b"),
    (["adc.bits=1..99999"], "more than the 4096 points"),
    (["adc.bits=six"], "'six' is not an int"),
    (["adc.flip=maybe"], "'maybe' is not true or false"),
    (["adc.bits=4,,5"], "empty value"),
    (["adc.bits=4,4"], "value 4 appears twice"),
    (["adc.bits=4", "adc.bits=5"], "adc.bits is swept twice"),
    (["adc.bits+adc.flip=4"], "must give 2 values joined by ':'"),
    (["adc.bits=1..64", "crossbar.cell_bits=1..8", "dac.bits=1..8", "quant.weight_bits=2..3"],
     "8,192 points, more than the 4096"),
])
def test_grid_errors_are_one_line(isaac, items, match):
    with pytest.raises(ConfigError, match=match):
        expand(parse_grid(items, isaac))


@pytest.mark.parametrize(("item", "match"), [
    ("adc.bits=8,99", r"--grid point adc.bits=99: \[adc\] bits = 99 must be in 1..16"),
    ("crossbar.rows=100", "rows = 100 must be a power of two"),
    ("adc.range=full,wide", "range = 'wide' must be one of 'full', 'calibrated'"),
    ("energy.adc_conversion_pj=-1", "adc_conversion_pj = -1.0 must be finite and >= 0"),
])
def test_every_point_target_is_checked_up_front(isaac, item, match):
    with pytest.raises(ConfigError, match=match):
        point_targets(isaac, expand(parse_grid([item], isaac)))


def test_set_fixes_keys_for_every_point(isaac):
    base, fixed = fixed_base(["quant.weight_bits=8", "adc.flip=false"], isaac)
    assert fixed == {"quant.weight_bits": 8, "adc.flip": False}
    assert (base.quant.weight_bits, base.adc.flip) == (8, False)
    grid = parse_grid(["adc.bits=6"], base)
    check_disjoint(fixed, grid)
    assert point_targets(base, expand(grid))[0].quant.weight_bits == 8
    assert fixed_base([], isaac) == (isaac, {})


@pytest.mark.parametrize(("items", "match"), [
    (["adc.bits=6,8"], "--set adc.bits: takes one value, got 2"),
    (["adc.bitz=6"], "--set adc.bitz: unknown key 'bitz'"),
    (["adc.bits=17"], r"--set adc.bits=17: \[adc\] bits = 17 must be in 1..16"),
    (["adc.bits=6", "adc.bits=7"], "adc.bits is swept twice"),
])
def test_set_errors(isaac, items, match):
    with pytest.raises(ConfigError, match=match):
        fixed_base(items, isaac)


def test_a_key_is_fixed_or_swept_not_both(isaac):
    with pytest.raises(ConfigError, match=r"--set adc\.bits: also swept by --grid"):
        check_disjoint({"adc.bits": 6}, parse_grid(["adc.bits+adc.flip=6:true"], isaac))


def test_point_slugs_are_file_names():
    assert point_slug({"adc.bits": 6, "adc.flip": True}) == "adc.bits-6_adc.flip-true"
    assert "/" not in point_slug({"target.name": "a/b c"})
    long_a, long_b = ({f"adc.k{i}": 10 ** 9 + j for i in range(20)} for j in (1, 2))
    assert len(point_slug(long_a)) == 160 and point_slug(long_a) != point_slug(long_b)


# ----------------------------------------------------------------------------- writers
def _row(acc, energy, **point):
    return SweepRow(point, {"accuracy": acc, "energy_pj": energy, "latency_ns": 1e3,
                            "area_mm2": 0.5, "crossbars": 3, "samples": 10})


def test_pareto_front_keeps_only_undominated_points():
    rows = [_row(0.9, 10.0, p=0), _row(0.8, 10.0, p=1), _row(0.95, 20.0, p=2),
            _row(0.5, 5.0, p=3), _row(0.5, 6.0, p=4), SweepRow({"p": 5}, None, "boom")]
    assert pareto_front(rows) == {0, 2, 3}


def test_table_csv_markdown_and_plot(tmp_path):
    rows = [_row(0.9, 2e6, bits=6), _row(0.95, 4e6, bits=8), SweepRow({"bits": 7}, None,
                                                                       "compile failed")]
    text = to_csv(["bits"], rows)
    got = list(csv.DictReader(text.splitlines()))
    assert [r["pareto"] for r in got] == ["1", "1", "0"]
    assert got[2]["error"] == "compile failed" and got[0]["energy_pj"] == "2000000.0"
    md = to_markdown(["bits"], rows).splitlines()
    assert md[0].startswith("| bits | accuracy | energy |") and len(md) == 5
    assert "| 6 | 90.00% | 2 uJ |" in md[2] and md[4].endswith("compile failed |")
    assert pareto_png(["bits"], rows, "t", reference=0.97).startswith(PNG)


# ----------------------------------------------------------------------------- planning
def test_saved_points_are_reused_only_under_the_same_settings(tmp_path, isaac,
                                                              pruned_far_checkpoint):
    points = expand(parse_grid(["adc.bits=6,8"], isaac))
    targets = point_targets(isaac, points)
    jobs = plan_jobs(pruned_far_checkpoint, points, targets, tmp_path, SweepOptions(samples=5))
    path = tmp_path / "points" / "adc.bits-6.json"
    assert jobs[0].path == str(path)
    path.parent.mkdir()
    path.write_text(json.dumps({"settings": jobs[0].settings, "result": {"accuracy": 1.0}}))
    assert load_finished(jobs[0]) == {"accuracy": 1.0}
    assert load_finished(jobs[1]) is None  # not saved
    other = plan_jobs(pruned_far_checkpoint, points, targets, tmp_path, SweepOptions(samples=6))
    assert load_finished(other[0]) is None  # --samples changed: redone
    path.write_text("{ truncated")
    assert load_finished(jobs[0]) is None


def _stub_run(job: Job):
    """Stands in for a point in the pool test (module level, so spawned workers import it)."""
    return job.index, {"pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS")}, \
        ("odd" if job.index % 2 else None)


def test_pool_runs_every_job_in_spawned_single_thread_workers():
    jobs = [Job(i, {"i": i}, {}, "", "", {}, 1) for i in range(4)]
    got = {}
    sweep_mod.run_jobs(jobs, 2, lambda job, r, e: got.setdefault(job.index, (r, e)),
                       run=_stub_run)
    assert sorted(got) == [0, 1, 2, 3]
    assert {got[i][1] for i in got} == {None, "odd"}
    assert all(r["pid"] != os.getpid() and r["threads"] == "1" for r, _ in got.values())


def test_points_are_dealt_round_robin_over_ranks():
    jobs = [Job(i, {}, {}, "", "", {}, 1) for i in range(5)]
    assert [[j.index for j in my_share(jobs, r, 2)] for r in range(2)] == [[0, 2, 4], [1, 3]]


# ----------------------------------------------------------------------------- CLI
def farc_error(capsys, *args: object) -> str:
    """Run the CLI in this process (no interpreter start-up); its one stderr line."""
    from farc.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("farc: error:"), lines
    return lines[0]


@pytest.mark.parametrize(("args", "match"), [
    (["--grid", "adc.bitz=4..6"], "unknown key 'bitz' in [adc] (did you mean 'bits'?)"),
    (["--grid", "adc.bits=4..6", "--grid", "adc.bits=99"], "adc.bits is swept twice"),
    (["--grid", "adc.bits=6,17"], "--grid point adc.bits=17: [adc] bits = 17 must be in 1..16"),
    (["--grid", "adc.bits=9..4"], "range 9..4 is empty"),
    ([], "give at least one --grid"),
    (["--grid", "adc.bits=6", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["--grid", "adc.bits=6", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["--grid", "adc.bits=6", "--target", "nosuch"], "nosuch"),
    (["--grid", "adc.bits=6", "--data", "no_such_folder"], "no_such_folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, pruned_far_checkpoint,
                                                  args, match):
    line = farc_error(capsys, "sweep", pruned_far_checkpoint, *args, "-o", tmp_path / "out")
    assert match in line
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoint_and_output_write_nothing(tmp_path, capsys, pruned_far_checkpoint):
    (tmp_path / "file").write_text("x")
    line = farc_error(capsys, "sweep", tmp_path / "nope.pt", "--grid", "adc.bits=6", "-o",
                      tmp_path / "out")
    assert "no such checkpoint file" in line
    line = farc_error(capsys, "sweep", pruned_far_checkpoint, "--grid", "adc.bits=6", "-o",
                      tmp_path / "file")
    assert "is a file, expected a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path, pruned_far_checkpoint):
    res = subprocess.run([sys.executable, "-m", "farc", "sweep", str(pruned_far_checkpoint),
                          "--grid", "adc.bitz=4", "-o", str(tmp_path / "o")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("farc: error: --grid adc.bitz: unknown key 'bitz'")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_far_checkpoint(tmp_path_factory):
    """A one-block, 16-wide FAR (digits-shaped input): a compile takes about a second."""
    import dataclasses

    import torch

    from farc.models.checkpoint import save_checkpoint
    from farc.models.deit import DEIT_PRESETS
    from farc.models.far import FAR, FARConfig

    cfg = dataclasses.replace(DEIT_PRESETS["deit_digits"], depth=1, embed_dim=16, num_heads=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny_far.pt"
    save_checkpoint(path, FAR(FARConfig.dense(cfg, 3)).eval(), {"note": "tiny random FAR"})
    return path


def test_small_sweep_end_to_end_then_resumed(tmp_path, tiny_far_checkpoint, monkeypatch,
                                             capsys):
    """Two points, 8 images: every file written, the points saved; a rerun reuses both
    (run_point would fail if called), --force runs them again. (One process: the pool is
    tested on its own below, without paying a compile per spawned worker.)"""
    from farc.cli import main

    out = tmp_path / "sw"
    args = ["sweep", str(tiny_far_checkpoint), "--target", "isaac",
            "--grid", "quant.weight_bits=8", "--grid", "quant.input_bits=8",
            "--grid", "adc.bits=6,8", "--samples", "8", "--calib-samples", "8",
            "--workers", "1", "-o", str(out)]
    main(args)
    assert {p.name for p in out.iterdir()} == OUTPUTS
    saved = sorted(p.name for p in (out / "points").iterdir())
    assert saved == ["quant.weight_bits-8_quant.input_bits-8_adc.bits-6.json",
                     "quant.weight_bits-8_quant.input_bits-8_adc.bits-8.json"]
    data = json.loads((out / "sweep.json").read_text())
    assert [p["point"]["adc.bits"] for p in data["points"]] == [6, 8]
    for p in data["points"]:
        r = p["result"]
        assert r["samples"] == 8 and 0 <= r["accuracy"] <= 1 and r["energy_pj"] > 0
        assert r["latency_ns"] > 0 and r["area_mm2"] > 0 and r["crossbars"] > 0
    assert (out / "pareto.png").read_bytes().startswith(PNG)
    page = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page
    assert len((out / "sweep.csv").read_text().splitlines()) == 3

    calls = []
    monkeypatch.setattr(sweep_mod, "run_point", lambda job: calls.append(job) or 1 / 0)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    main(args)  # finished points: no work at all
    assert calls == []
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(calls) == 2
    assert err[-1].startswith("farc: error: 2 of 2 points failed") and "ZeroDivision" in err[-1]
