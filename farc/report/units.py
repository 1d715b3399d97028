"""Engineering-unit formatting for tables and charts."""

from __future__ import annotations

import math


def _eng(value: float, units: list[tuple[float, str]]) -> str:
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return f"{value:g}"
    for scale, unit in reversed(units):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / units[0][0]:.3g} {units[0][1]}"


def ns(value: float) -> str:
    """A time given in ns: '1.6 us'."""
    if value == math.inf:
        return "∞"
    if math.isfinite(value) and 60e9 <= value < 3600e9:
        return f"{value / 60e9:.3g} min"
    if math.isfinite(value) and value >= 3600e9:
        return f"{value / 3600e9:.3g} h" if value < 86400e9 * 2 else \
            f"{value / 86400e9:.3g} days"
    return _eng(value, [(1.0, "ns"), (1e3, "us"), (1e6, "ms"), (1e9, "s")])


def pj(value: float) -> str:
    """An energy given in pJ: '27.4 nJ'."""
    return _eng(value, [(1e-3, "fJ"), (1.0, "pJ"), (1e3, "nJ"), (1e6, "uJ"), (1e9, "mJ")])


def mm2(value: float) -> str:
    return f"{value:.4g} mm²"


def mw(value: float) -> str:
    """A power given in mW: '65.8 W', '330.0 mW' (one decimal, beside a paper's total)."""
    return f"{value / 1000:.1f} W" if value >= 1000 else f"{value:.1f} mW"


def count(value: float) -> str:
    if value == math.inf:
        return "∞"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.3g}"
