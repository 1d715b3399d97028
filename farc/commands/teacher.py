"""`farc teacher -o teacher.pt`: train a small DeiT teacher and save it with provenance.

Trains on the train split, keeps the epoch with the best validation accuracy, reports test
accuracy once at the end (test never steers training), and records everything needed to
reproduce the run (data spec, seed, hyper-parameters, threads, seconds) in the checkpoint."""

from __future__ import annotations

import platform
import time

import click

from farc.models.deit import DEIT_PRESETS
from farc.train import TrainConfig

DEFAULT_PRESET = "deit_digits"


@click.command("teacher")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint file to write.")
@click.option("--data", default="digits", show_default=True,
              help="'digits' (bundled) or an ImageNet-style folder of class subfolders.")
@click.option("--preset", type=click.Choice(list(DEIT_PRESETS)), default=DEFAULT_PRESET,
              show_default=True, help="DeiT shape (farc.models.deit.DEIT_PRESETS).")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--shift", type=int, default=TrainConfig.shift, show_default=True,
              help="Random-translation augmentation in pixels (0: off).")
@click.option("--noise", type=float, default=TrainConfig.noise, show_default=True,
              help="Std of Gaussian pixel-noise augmentation (0: off).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds init, shuffling and augmentation: same seed, same checkpoint.")
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads (default 1: the digits model is too small to gain "
                   "from more, and extra threads spin when cores are shared).")
def command(output, data, preset, epochs, lr, batch_size, shift, noise, seed, threads) -> None:
    """Train a DeiT on a dataset's train split; pick by val; report test accuracy."""
    import torch

    from farc.checkpoint import save_checkpoint
    from farc.data import load_split
    from farc.progress import log, print_table
    from farc.train import evaluate, train_classifier

    cfg = _model_config(preset, data)
    tcfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, shift=shift, noise=noise,
                       seed=seed)
    _check_options(tcfg)
    threads = threads or 1
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train, val, test = (load_split(data, s, img_size=cfg.img_size, in_chans=cfg.in_chans)
                        for s in ("train", "val", "test"))
    from farc.models.deit import DeiT

    model = DeiT(cfg)
    log(f"teacher: {preset}, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"data {data} (train {len(train[0])} / val {len(val[0])} / test {len(test[0])})")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train_classifier(model, train, val, tcfg, description="teacher")
    test_acc = evaluate(model, *test)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    metrics = {"val_acc": result.best_val_acc, "test_acc": test_acc,
               "best_epoch": result.best_epoch, "train_seconds": wall, "train_cpu_seconds": cpu}
    save_checkpoint(output, model, _provenance(data, preset, tcfg, threads, metrics))
    print_table("Teacher", ["model", "val acc", "test acc", "best epoch", "wall s", "CPU s"],
                [(preset, f"{result.best_val_acc:.2%}", f"{test_acc:.2%}",
                  result.best_epoch + 1, f"{wall:.1f}", f"{cpu:.1f}")])
    log(f"wrote {output}")


def _model_config(preset: str, data: str):
    """The preset's config with num_classes set from the dataset."""
    from dataclasses import replace

    from farc.data import num_classes

    return replace(DEIT_PRESETS[preset], num_classes=num_classes(data))


def _check_options(cfg: TrainConfig) -> None:
    from farc.errors import ConfigError

    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.shift < 0:
        raise ConfigError(f"--shift must be >= 0, got {cfg.shift}")
    if cfg.noise < 0:
        raise ConfigError(f"--noise must be >= 0, got {cfg.noise}")


def _provenance(data: str, preset: str, cfg: TrainConfig, threads: int, metrics: dict) -> dict:
    from dataclasses import asdict

    import torch

    from farc import __version__

    return {"command": "teacher", "data": data, "preset": preset, "seed": cfg.seed,
            "train_config": asdict(cfg), "threads": threads, "metrics": metrics,
            "farc_version": __version__, "torch_version": torch.__version__,
            "machine": platform.machine(), "created_unix": int(time.time())}
