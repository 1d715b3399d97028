"""The `--device-model NAME` option of the commands that run a program on noisy devices
(run, verify): one definition, its help listing the presets of runtime/devices.py."""

from __future__ import annotations

import click

from farc.runtime.devices import DEVICE_PRESETS

device_model_option = click.option(
    "--device-model", default=None, metavar="NAME",
    help="Named device model (" + ", ".join(DEVICE_PRESETS) + "; docs/devices.md); "
         "--noise KEY=VALUE then overrides its fields.")
