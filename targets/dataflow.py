"""The cost model's view of a tile program's dataflow: the one static walk of
`farc.runtime.walk` for ONE inference (batch = 1).

Shapes come from the opcode table's shape rules (runtime/isa.py), the same walk the
runtime's static counters use; it reads only the manifest (dicts), never arrays."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from farc.runtime import walk as _walk
from farc.runtime.walk import Shape, Step, loop_count, manifest_of, numel

__all__ = ["Shape", "Step", "loop_count", "manifest_of", "numel", "walk"]


def walk(program: Any) -> Iterator[Step]:
    """Every instruction of one inference (batch 1) in order; loop bodies once with `trips`
    = T, a loop's own step after its body (see farc.runtime.walk.walk)."""
    return _walk.walk(program, batch=1)
