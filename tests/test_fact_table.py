"""The "where each fact lives" table of docs/architecture.md, checked against the code: each
symbol is defined in the module the table names and in no other module of the tree (the
verification reference excepted, on purpose), and every file the table says uses it does.
A fact moved, copied or dropped without the table changing fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("runtime", "passes", "targets", "farc", "bench")
INDEPENDENT = {"farc/check/qdq.py", "farc/check/reference.py", "farc/check/calibration.py"}
"""The verification reference restates docs/numerics.md without importing it (docs/verify.md)."""


def fact_rows(doc: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(fact, module, symbols, users) for each row of the table."""
    section = doc.split("## Where each fact lives", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("Fact", "---"):
            continue
        ticks = [re.findall(r"`([^`]+)`", c) for c in cells[1:]]
        rows.append((cells[0], ticks[0][0], ticks[1], ticks[2]))
    return rows


def _defines(text: str, symbol: str) -> bool:
    """A top-level class, function or assignment of `symbol`."""
    return re.search(rf"^(?:class|def)\s+{symbol}\b|^{symbol}\s*(?::[^=\n]*)?=", text,
                     re.MULTILINE) is not None


def _sources(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text()
            for folder in FOLDERS for p in sorted((root / folder).rglob("*.py"))}


def table_violations(root: Path, doc: str) -> list[str]:
    """Every way the code departs from the table (empty when they agree)."""
    sources = _sources(root)
    out = []
    for fact, module, symbols, users in fact_rows(doc):
        if module not in sources:
            out.append(f"{fact[:40]}: module {module} does not exist")
            continue
        for sym in symbols:
            if not _defines(sources[module], sym):
                out.append(f"{sym}: not defined in {module}")
            out += [f"{sym}: defined again in {path} (lives in {module})"
                    for path, text in sources.items()
                    if path not in (module, *INDEPENDENT) and _defines(text, sym)]
        for user in users:
            text = sources.get(user, "")
            if not any(re.search(rf"\b{sym}\b", text) for sym in symbols):
                out.append(f"{user}: uses none of {', '.join(symbols)} ({fact[:40]})")
    return out


def test_the_table_has_the_facts_the_redesign_named():
    symbols = {s for _, _, syms, _ in fact_rows((ROOT / "docs/architecture.md").read_text())
               for s in syms}
    assert {"AdcSection", "XbarParams", "EncodingRule", "KEEP_VECTORS", "calibrated_ranges",
            "Geometry", "DEFAULT_PERCENTILE", "F32_EXACT", "OPS", "VERSION"} <= symbols


def test_every_fact_lives_where_the_table_says():
    assert table_violations(ROOT, (ROOT / "docs/architecture.md").read_text()) == []


def test_the_guard_finds_a_copy_a_move_and_a_missing_user(tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "farc").mkdir()
    (tmp_path / "runtime" / "numerics.py").write_text("KEEP_VECTORS = 256\n")
    (tmp_path / "farc" / "finetune.py").write_text("KEEP_VECTORS = 256  # a second copy\n")
    (tmp_path / "farc" / "other.py").write_text("x = 1\n")
    doc = ("## Where each fact lives\n| Fact | Lives in | Symbols | Used by |\n|---|---|---|---|\n"
           "| kept | `runtime/numerics.py` | `KEEP_VECTORS`, `gone` | `farc/other.py` |\n"
           "## Next\n")
    assert table_violations(tmp_path, doc) == [
        "KEEP_VECTORS: defined again in farc/finetune.py (lives in runtime/numerics.py)",
        "gone: not defined in runtime/numerics.py",
        "farc/other.py: uses none of KEEP_VECTORS, gone (kept)",
    ]


def test_the_default_percentile_is_written_once():
    hits = [path for path, text in _sources(ROOT).items()
            if "99.99" in text and path != "runtime/schema.py"]
    assert hits == []
