"""The target-override options `farc compile` and `farc finetune` share: one list, so a
program and the fine-tune that trains for it are described by the same flags and keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

OVERRIDES = {
    "weight_bits": "quant.weight_bits", "input_bits": "quant.input_bits",
    "mapping": "quant.mapping", "calibration": "quant.calibration",
    "adc_bits": "adc.bits", "adc_range": "adc.range", "cell_bits": "crossbar.cell_bits",
    "dac_bits": "dac.bits", "input_encoding": "quant.input_encoding",
    "adc_granularity": "adc.granularity", "adc_step_rule": "adc.step_rule",
    "adc_statistic": "adc.statistic", "adc_percentile": "adc.percentile",
}
"""Option name (as click passes it) -> the target key it overrides."""

_OPTIONS = [
    click.option("--weight-bits", type=int, default=None, help="Override quant.weight_bits."),
    click.option("--input-bits", type=int, default=None, help="Override quant.input_bits."),
    click.option("--adc-bits", type=int, default=None, help="Override adc.bits."),
    click.option("--cell-bits", type=int, default=None, help="Override crossbar.cell_bits."),
    click.option("--dac-bits", type=int, default=None, help="Override dac.bits."),
    click.option("--mapping", type=click.Choice(["differential", "offset"]), default=None,
                 help="Override quant.mapping (signed weights)."),
    click.option("--adc-range", type=click.Choice(["full", "calibrated"]), default=None,
                 help="Override adc.range."),
    click.option("--input-encoding", type=click.Choice(["offset", "sign_magnitude"]),
                 default=None, help="Override quant.input_encoding (docs/numerics.md)."),
    click.option("--adc-granularity", type=click.Choice(["tile", "slice"]), default=None,
                 help="Override adc.granularity: one ADC range per row tile or per weight "
                      "slice."),
    click.option("--adc-step-rule", type=click.Choice(["pow2", "uniform"]), default=None,
                 help="Override adc.step_rule."),
    click.option("--adc-statistic", type=click.Choice(["max", "percentile"]), default=None,
                 help="Override adc.statistic (what a calibrated ADC range covers)."),
    click.option("--adc-percentile", type=float, default=None,
                 help="Override adc.percentile (with --adc-statistic percentile)."),
    click.option("--calibration", type=click.Choice(["max", "percentile"]), default=None,
                 help="Override quant.calibration (input-range policy)."),
]


def target_override_options(fn: Callable) -> Callable:
    """Adds every option of OVERRIDES to a click command (in --help in this order)."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def overridden_target(target_name: str, overrides: dict[str, Any]) -> Any:
    """The target `target_name` with the options the user gave (None = not given)."""
    from farc.targets import load_target

    return load_target(target_name).with_overrides(
        **{OVERRIDES[k]: v for k, v in overrides.items() if v is not None})
