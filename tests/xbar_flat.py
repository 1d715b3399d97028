"""Tests build many small crossbar configurations; `xp(rows=8, adc_bits=5)` reads better in
a parametrize list than four nested sections. The flat names map onto the schema's
`section.key` overrides (runtime/schema.py); nothing here is used outside the tests."""

from __future__ import annotations

from typing import Any

from farc.runtime.numerics import XbarParams

FLAT = {"rows": "crossbar.rows", "cols": "crossbar.cols", "cell_bits": "crossbar.cell_bits",
        "dac_bits": "dac.bits", "adc_bits": "adc.bits", "adc_range": "adc.range",
        "adc_flip": "adc.flip", "adc_granularity": "adc.granularity",
        "adc_step_rule": "adc.step_rule", "adc_statistic": "adc.statistic",
        "adc_percentile": "adc.percentile", "columns_per_adc": "adc.columns_per_adc",
        "weight_bits": "quant.weight_bits", "input_bits": "quant.input_bits",
        "mapping": "quant.mapping", "input_encoding": "quant.input_encoding",
        "calibration": "quant.calibration"}


def xp_with(p: XbarParams, **flat: Any) -> XbarParams:
    """`p` with flat-named fields replaced (parsed like a target file's values)."""
    return p.with_overrides(**{FLAT[k]: v for k, v in flat.items()})


def xp(**flat: Any) -> XbarParams:
    """XbarParams from flat names, the rest at the schema defaults."""
    return xp_with(XbarParams(), **flat)
