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
