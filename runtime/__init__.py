"""farc.runtime: the tile-program format and the functional ReRAM emulator (numpy only).

Public API: `Program` (format), `Emulator` (execution), `NoiseConfig` (device
non-idealities), `Counters` / `static_counts` (events for the cost model), and the hand
builder `pack_layer` / `make_program` / `XbarParams`."""

from .builder import XbarParams, make_program, pack_layer
from .counters import Counters, static_counts
from .emulator import Emulator
from .noise import NoiseConfig
from .program import Program

__all__ = ["Counters", "Emulator", "NoiseConfig", "Program", "XbarParams", "make_program",
           "pack_layer", "static_counts"]
