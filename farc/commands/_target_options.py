"""The target-override options `farc compile` and `farc finetune` share, generated from the
crossbar schema (runtime/schema.py): every field of [crossbar] [dac] [adc] [quant] becomes
one option, its type and choices from the field's type and enum, its help from the field's
docstring. A new field or policy member reaches the CLI without an edit here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from enum import StrEnum
from typing import Any

import click

from farc.runtime.schema import XBAR_SECTIONS, field_docs, field_types

_PREFIX = {"crossbar": "", "dac": "dac_", "adc": "adc_", "quant": ""}
"""Option name = prefix + field (`--cell-bits`, `--dac-bits`, `--adc-range`, `--mapping`)."""


def _overrides() -> dict[str, str]:
    out = {}
    for section, cls in XBAR_SECTIONS.items():
        for f in fields(cls):
            out[f"{_PREFIX[section]}{f.name}"] = f"{section}.{f.name}"
    return out


OVERRIDES = _overrides()
"""Option name (as click passes it) -> the target key it overrides."""


def _option(name: str, key: str) -> Callable:
    section, field = key.split(".")
    cls = XBAR_SECTIONS[section]
    want = field_types(cls)[field]
    flag = "--" + name.replace("_", "-")
    help_text = f"Override {key}: {field_docs(cls).get(field, '')}"
    if want is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if isinstance(want, type) and issubclass(want, StrEnum):
        return click.option(flag, name, type=click.Choice([m.value for m in want]),
                            default=None, help=help_text)
    return click.option(flag, name, type=want, default=None, help=help_text)


_OPTIONS = [_option(name, key) for name, key in OVERRIDES.items()]


def target_override_options(fn: Callable) -> Callable:
    """Adds every option of OVERRIDES to a click command (in --help in schema order)."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def overridden_target(target_name: str, overrides: dict[str, Any]) -> Any:
    """The target `target_name` with the options the user gave (None = not given). When
    they lower the ADC below its lossless width without choosing an ADC policy, the
    calibrated per-slice policy applies (targets.target.lossy_adc_default), said in one
    line on stderr."""
    from farc.targets import load_target
    from farc.targets.target import lossy_adc_default

    given = {OVERRIDES[k]: v for k, v in overrides.items() if k in OVERRIDES and v is not None}
    base = load_target(target_name)
    target, note = lossy_adc_default(base, base.with_overrides(**given), given)
    if note:
        click.echo(f"farc: {note}", err=True)
    return target
