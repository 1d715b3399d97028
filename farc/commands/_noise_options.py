"""The `--device-model NAME` option of the commands that run a program on noisy devices
(run, verify): one definition, its help listing the presets of runtime/devices.py; and the
one rule for which device model such a run uses."""

from __future__ import annotations

from typing import Any

import click

from farc.runtime.devices import DEVICE_PRESETS

device_model_option = click.option(
    "--device-model", default=None, metavar="NAME",
    help="Named device model (" + ", ".join(DEVICE_PRESETS) + "; docs/devices.md); "
         "--noise KEY=VALUE then overrides its fields. Default: the [device] the program's "
         "target records, else the ideal chip.")


def chip_device(program: Any, device_model: str | None, noise: tuple[str, ...]) -> Any:
    """The device model a run of `program` uses (runtime/devices.noise_from_options): the
    named preset, else the one its target recorded, then --noise over it; None for the
    ideal chip. A recorded model that applies unasked is said in one line on stderr."""
    from farc.runtime.devices import describe, noise_from_options

    recorded = program.device
    cfg = noise_from_options(device_model, noise, recorded)
    if recorded is not None and device_model is None:
        click.echo(f"device model from the program's target: {describe(recorded)} "
                   "(--device-model ideal for the ideal chip)", err=True)
    return cfg
