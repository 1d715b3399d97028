"""farc.runtime: the tile-program format and the functional ReRAM emulator (numpy only).

Public API: `Program` (format), `Emulator` (execution), `DeviceSection` (device
non-idealities), `Counters` / `static_counts` (events for the cost model), and the hand
builder `pack_layer` / `make_program` / `XbarParams`. They are imported on first use, so
`farc.runtime.schema` (standard library only) is read without numpy: the CLI builds its
options from it and answers `--help` or a refusal before anything heavy loads."""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"XbarParams": "builder", "make_program": "builder", "pack_layer": "builder",
         "Counters": "counters", "static_counts": "counters", "Emulator": "emulator",
         "DeviceSection": "schema", "Program": "program"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
