"""`farc report --trace`: the cost model's schedule as a Chrome trace-event file. The trace
is read back as JSON and checked against the report's own latency and throughput (from
`--json`), and against the program's loops (one gather/scatter span per step)."""

from __future__ import annotations

import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "targets"))
from farc.targets import load_target
from farc.targets.cost import cost_program
from handmade_programs import attention_program, far_program

from farc.cli import cli, main


@pytest.fixture(scope="module")
def far_path(tmp_path_factory):
    return far_program(load_target("isaac")).save(tmp_path_factory.mktemp("p") / "far.farc")


def _report(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def traced(far_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("t")
    res = _report(far_path, "--trace", d / "t.json", "--json", d / "r.json")
    assert res.exit_code == 0, res.output
    rep = next(iter(json.loads((d / "r.json").read_text()).values()))
    return json.loads((d / "t.json").read_text()), rep


def _spans(trace, image=None, cat=None):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] != "image"
            and (image is None or e["args"]["image"] == image)
            and (cat is None or e["cat"] == cat)]


def test_the_schedule_ends_at_the_latency():
    t = load_target("isaac")
    for prog in (far_program(t), attention_program(t)):
        r = cost_program(prog, t, schedule=True)
        assert r.schedule and max(s.end_ns for s in r.schedule) == pytest.approx(r.latency_ns)
        assert min(s.start_ns for s in r.schedule) == 0.0
        assert cost_program(prog, t).latency_ns == r.latency_ns  # detail changes nothing


def test_trace_span_equals_the_reported_latency(traced):
    trace, rep = traced
    first = _spans(trace, image=0)
    start = min(e["ts"] for e in first)
    end = max(e["ts"] + e["dur"] for e in first)
    assert (end - start) * 1000 == pytest.approx(rep["latency_ns"], abs=0.01)  # ts: 1 ps
    assert trace["otherData"]["latency_ns"] == rep["latency_ns"]


def test_images_enter_one_interval_apart_at_the_reported_throughput(traced):
    trace, rep = traced
    other = trace["otherData"]
    assert other["images_drawn"] >= 2
    assert other["images_per_s"] == pytest.approx(rep["images_per_s"])
    interval = 1e9 / rep["images_per_s"]
    images = sorted((e for e in trace["traceEvents"] if e.get("cat") == "image"),
                    key=lambda e: e["ts"])
    assert len(images) == other["images_drawn"]
    for k, e in enumerate(images):
        assert e["ts"] * 1000 == pytest.approx(k * interval, abs=0.01)
        assert e["dur"] * 1000 == pytest.approx(rep["latency_ns"], abs=0.01)
    shifted = _spans(trace, image=1)
    assert min(e["ts"] for e in shifted) * 1000 == pytest.approx(interval, abs=0.01)


def test_every_loop_step_is_drawn(traced, far_path):
    from farc.runtime.program import Program
    from farc.targets.dataflow import walk

    trace, _ = traced
    loops = {s.path: s.count for s in walk(Program.load(far_path)) if s.instr["op"] == "loop"}
    assert loops
    io = defaultdict(set)
    for e in _spans(trace, image=0):
        if e["name"] == "loop io":
            io[tuple(e["args"]["instruction"])].add(e["args"]["step"])
    assert {p: len(steps) for p, steps in io.items()} == loops


def test_kinds_and_tracks(traced):
    trace, _ = traced
    cats = {e["cat"] for e in _spans(trace)}
    assert {"mvm", "move"} <= cats and cats & {"sigmoid", "tanh", "mul", "add"}
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert any(n.startswith("tile ") and "crossbars" in n for n in names.values())
    # spans never overlap within one track (overlapping work goes to numbered lanes)
    by_track = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            by_track[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-9


def test_trace_over_the_program_is_refused(far_path, capsys):
    before = far_path.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(far_path), "--trace", str(far_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("farc: error: --trace ")
    assert far_path.read_bytes() == before
