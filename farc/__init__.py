"""farc: compile FAR vision transformers onto ReRAM crossbars, emulate and cost them."""

__version__ = "0.1.0"
