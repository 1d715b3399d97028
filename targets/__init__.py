"""Hardware targets: TOML descriptions of crossbar accelerators, their loader, and the cost
model that turns event counts into latency, energy and area. Each TOML file here is the single
source of hardware numbers for the compiler, the emulator and the cost model."""

from farc.targets.target import Target, list_targets, load_target

__all__ = ["Target", "list_targets", "load_target"]
