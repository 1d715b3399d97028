"""docs/targets.md lists every section and key of the target schema."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from farc.targets.target import ALL_SECTIONS

DOC = Path(__file__).parents[2] / "docs" / "targets.md"


def test_every_key_is_documented():
    text = DOC.read_text()
    for sec, cls in ALL_SECTIONS.items():
        assert f"### [{sec}]" in text, sec
        for f in fields(cls):
            assert f"| `{f.name}` |" in text, f"[{sec}] {f.name}"


def test_crossbar_section_values_are_the_shipped_ones():
    """The isaac / puma / neurosim_rram columns of the crossbar sections' tables are the
    values the shipped files give (a target file changed without its page fails here)."""
    import re

    from farc.runtime.schema import XBAR_SECTIONS
    from farc.targets import load_target

    text = DOC.read_text()
    targets = [load_target(n) for n in ("isaac", "puma", "neurosim_rram")]
    for sec, cls in XBAR_SECTIONS.items():
        block = text.split(f"### [{sec}]", 1)[1].split("\n### ", 1)[0]
        for f in fields(cls):
            row = re.search(rf"^\| `{f.name}` \|.*\| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", block,
                            re.MULTILINE)
            assert row, f"[{sec}] {f.name}"
            want = [str(getattr(getattr(t, sec), f.name)) for t in targets]
            assert [c.strip() for c in row.groups()] == want, f"[{sec}] {f.name}"
