"""Options every training command shares (`farc distill`, `farc prune`), declared once so
their names, defaults and help cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable

import click

from farc.far.distill import TrainOptions


def run_training(opts, output: str, device: str | None, body: Callable,
                 inputs: dict[str, str | None] | None = None) -> None:
    """Check the options and that `output` can be written and is none of `inputs` (before
    minutes of training), join the torchrun world (a world of one without torchrun), run
    body(world), leave it."""
    from farc import distributed as D
    from farc.atomic import check_outputs

    opts.validate()
    check_outputs({"-o": output}, inputs)
    world = D.setup(device)
    try:
        body(world)
    finally:
        D.teardown()


def training_options(command: Callable) -> Callable:
    """Add --data, --resize, --batch-size, --seed, --resume, --device and --threads to `command`."""
    options = [
        click.option("--data", default="digits", show_default=True,
                     help="'digits' or an ImageNet-style folder (its images at the model's "
                          "size, or --resize)."),
        click.option("--resize", is_flag=True,
                     help="Convert a folder's images of another size or channel count to "
                          "the model's (refused otherwise; docs/data.md)."),
        click.option("--batch-size", type=int, default=TrainOptions.batch_size,
                     show_default=True, help="Global batch size (split over torchrun "
                                             "processes)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds init, shuffling and augmentation: same seed, same "
                          "checkpoint."),
        click.option("--resume", is_flag=True,
                     help="Continue from OUTPUT.resume if it exists."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                     help="Where to train (default: cuda when available)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="torch CPU threads (default: 1 for models under 1M parameters)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
