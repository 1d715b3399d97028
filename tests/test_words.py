"""Issue 28 item 6: words that fit the model. Throughput in inferences/s (images/s only for
image models), the attention assumption only for programs with attention matmuls, the
pruning note only for pruned models, and tables wrapped rather than cut ("...") when
stdout is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from farc.targets import load_target

from farc.cli import cli
from tests.targets.handmade_programs import attention_program, far_program


def _run(*args) -> str:
    res = CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args],
                                                   catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    d = tmp_path_factory.mktemp("words")
    t = load_target("isaac")
    seq = far_program(t)  # a recurrent model of a [tokens, dim] sequence, not an image
    seq.manifest["model"] = {"kind": "graph", "name": "onnx-vad",
                             "config": {"input_shape": [8, 16]}, "provenance": {}}
    img = far_program(t)
    return {"seq": seq.save(d / "seq.farc"), "img": img.save(d / "img.farc"),
            "attn": attention_program(t).save(d / "attn.farc")}


def test_sequence_model_speaks_of_inferences_and_no_attention(progs) -> None:
    out = _run("report", progs["seq"])
    assert "inferences/s" in out and "per inference)" in out
    assert "image" not in out
    assert "assumption" not in out and "act x act" not in out


def test_image_model_keeps_images(progs) -> None:
    out = _run("report", progs["img"])
    assert "images/s" in out and "throughput (images in flight)" in out
    assert "assumption" not in out  # a FAR has no attention matmuls


def test_attention_model_states_its_assumption(progs, tmp_path) -> None:
    out = _run("report", progs["attn"], "--html", tmp_path / "r.html")
    assert "assumption" in out and "act x act matmuls" in out
    assert "digital matmul unit" in (tmp_path / "r.html").read_text()


def test_html_of_a_model_without_attention_assumes_nothing_about_it(progs, tmp_path) -> None:
    _run("report", progs["seq"], "--html", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "matmul unit" not in page and "Costs are per inference" in page


def test_compare_with_attention_shows_it_for_both(progs) -> None:
    out = _run("report", progs["img"], "--compare", progs["attn"])
    assert "assumption" in out and "act x act matmuls" in out


def test_inspect_unpruned_has_no_pruning_note(progs) -> None:
    assert "prun" not in _run("inspect", progs["seq"])


def test_inspect_pruned_without_sizes_says_so(tmp_path) -> None:
    p = far_program(load_target("isaac"))
    p.manifest["model"]["provenance"] = {"command": "prune"}
    out = _run("inspect", p.save(tmp_path / "p.farc"))
    assert "does not record unpruned LSTM sizes" in out


def _piped(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    return res.stdout


def test_piped_table_is_wrapped_not_cut() -> None:
    out = _piped("from farc.progress import print_table\n"
                 "print_table('t', ['check', 'detail'], [('c', 'x' * 150 + ' ' + 'y' * 300)])")
    assert "…" not in out and "..." not in out
    assert out.count("x") == 150 and out.count("y") == 300


def test_piped_report_is_not_cut(progs) -> None:
    out = _piped(f"from farc.cli import main\nmain(['report', {str(progs['seq'])!r}])")
    assert "…" not in out and "inferences/s" in out
