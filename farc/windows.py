"""The one closed form of a sliding window's output length: convolutions and pooling, floor
mode, as ONNX and torch define them. The model builder (farc/models/graph.py), the importer
and the opcode table's shape rules (runtime/isa.py) all call it; it needs only the standard
library, so the runtime may import it."""

from __future__ import annotations


def window_out(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """Output positions along one axis of `size` for a window of `kernel` taps `dilation`
    apart moved by `stride`, after `pad` zeros in all (both sides together)."""
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1
