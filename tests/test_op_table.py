"""docs/byom.md's op table is what the importers accept and refuse (issue 24, item 6)."""

from __future__ import annotations

from farc.compiler import op_table
from farc.models import onnx_scan, pt2_scan


def test_docs_hold_the_generated_op_table() -> None:
    """Regenerate with `python -m farc.compiler.op_table --write` after changing an
    importer's list."""
    assert op_table.in_docs(op_table.DOC.read_text()) == op_table.markdown()


def test_table_lists_every_accepted_and_refused_op() -> None:
    text = op_table.markdown()
    for op in (*onnx_scan.SUPPORTED, *pt2_scan.SHOWN, *onnx_scan.ALTERNATIVES,
               *pt2_scan.ALTERNATIVES):
        assert f"`{op}`" in text, op
    assert "`im2col`" in text and "`pool`" in text  # the opcodes they lower to
