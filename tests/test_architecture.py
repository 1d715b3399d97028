"""The import arrows of docs/architecture.md, checked on the source: every import (module
level or inside a function) of every package goes only where the drawing says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"farc", "farc.errors", "farc.atomic", "farc.data", "farc.distributed",
        "farc.progress", "farc.limits", "farc.npyio", "farc.windows"}
PACKAGES = {  # package -> its folder
    "farc.models": "farc/models", "farc.far": "farc/far", "farc.compiler": "farc/compiler",
    "farc.check": "farc/check", "farc.report": "farc/report", "farc.explore": "farc/explore",
    "farc.commands": "farc/commands", "farc.passes": "passes", "farc.targets": "targets",
    "farc.runtime": "runtime"}
ALLOWED = {  # package -> the packages it may import (besides itself and the core)
    "farc.models": set(),
    "farc.far": {"farc.models", "farc.runtime"},  # finetune: the crossbar numerics
    "farc.compiler": {"farc.models", "farc.passes", "farc.targets", "farc.runtime"},
    "farc.passes": {"farc.targets", "farc.runtime"},
    "farc.targets": {"farc.runtime"},
    "farc.runtime": set(),
    "farc.check": {"farc.models", "farc.runtime"},
    "farc.report": {"farc.targets", "farc.runtime"},
    "farc.explore": {"farc.compiler", "farc.models", "farc.targets", "farc.runtime",
                     "farc.report"},
    "farc.commands": {*PACKAGES, "farc.cli"},
}
RUNTIME_CORE = {"farc.errors", "farc.atomic", "farc.limits",  # stdlib (+ numpy): a .farc
                "farc.npyio", "farc.windows"}                 # runs without torch/tvm
REFERENCES = ("farc/check/qdq.py", "farc/check/reference.py", "farc/check/calibration.py")
"""The independent references import none of farc's numerics, compiler or runtime."""


def _package_of(module: str) -> str:
    for pkg in PACKAGES:
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return module


def imports_of(path: Path) -> set[str]:
    """Absolute farc modules a file imports (relative imports stay inside its package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "farc":  # from farc import distributed
                out.update(f"farc.{a.name}" for a in node.names)
            elif node.module.split(".")[0] == "farc":
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "farc")
    return out


def arrow_violations(root: Path) -> list[str]:
    bad = []
    for pkg, folder in PACKAGES.items():
        for path in sorted((root / folder).glob("*.py")):
            for mod in imports_of(path):
                target = _package_of(mod)
                if target == pkg or target in ALLOWED[pkg]:
                    continue
                core = "farc" if mod.startswith("farc.__") else mod  # farc.__version__
                if core in CORE and (pkg != "farc.runtime" or core in RUNTIME_CORE):
                    continue
                bad.append(f"{path.relative_to(root)} imports {mod}")
    for ref in REFERENCES:
        if not (root / ref).exists():
            continue
        for mod in imports_of(root / ref):
            if _package_of(mod) in ("farc.compiler", "farc.passes", "farc.targets",
                                    "farc.runtime"):
                bad.append(f"{ref} imports {mod}")
    return bad


def test_imports_follow_the_architecture():
    assert arrow_violations(ROOT) == []


@pytest.mark.parametrize(("file", "line"), [
    ("runtime/x.py", "from farc.targets import load_target\n"),
    ("targets/x.py", "def f():\n    from farc.passes.tile_crossbar import TileCrossbar\n"),
    ("runtime/x.py", "import farc.data\n"),
    ("farc/check/qdq.py", "from farc.runtime.numerics import qmax\n"),
])
def test_an_upward_import_is_caught(tmp_path, file, line):
    for folder in PACKAGES.values():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "farc/check/qdq.py").write_text("")
    (tmp_path / file).write_text(line)
    assert arrow_violations(tmp_path) == [f"{file} imports {imports_of(tmp_path / file).pop()}"]
