"""`farc teacher -o teacher.pt`: train (or import) a DeiT teacher and save it with provenance.

Trains on the train split, keeps the epoch with the best validation accuracy, reports test
accuracy once at the end (test never steers training), and records everything needed to
reproduce the run (data spec, seed, hyper-parameters, threads, seconds) in the checkpoint.
`--weights FILE` starts from a timm / facebookresearch state dict instead of random init;
with `--epochs 0` that just imports and evaluates the weights."""

from __future__ import annotations

import platform
import time

import click

from farc.far.train import TrainConfig
from farc.models.deit import DEIT_PRESETS

DEFAULT_PRESET = "deit_digits"


@click.command("teacher")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint file to write.")
@click.option("--data", default="digits", show_default=True,
              help="'digits' (bundled) or an ImageNet-style folder of class subfolders.")
@click.option("--preset", type=click.Choice(list(DEIT_PRESETS)), default=DEFAULT_PRESET,
              show_default=True, help="DeiT shape (farc.models.deit.DEIT_PRESETS).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Start from a timm/facebookresearch DeiT state dict (.pth/.safetensors); "
                   "its shape comes from the file, its heads from an explicit --preset.")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True,
              help="Training epochs (0 only with --weights: import and evaluate).")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--shift", type=int, default=TrainConfig.shift, show_default=True,
              help="Random-translation augmentation in pixels (0: off).")
@click.option("--noise", type=float, default=TrainConfig.noise, show_default=True,
              help="Std of Gaussian pixel-noise augmentation (0: off).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds init, shuffling and augmentation: same seed, same checkpoint.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads (default 1: the digits model is too small to gain "
                   "from more, and extra threads spin when cores are shared).")
@click.option("--img-size", type=click.IntRange(min=1), default=None,
              help="Image side the model takes (default: a folder's own image size; the "
                   "preset's for digits).")
@click.option("--patch-size", type=click.IntRange(min=1), default=None,
              help="Patch side (default: the preset's token grid kept, e.g. 28x28 images on "
                   "deit_digits' 4x4 grid -> 7x7 patches).")
@click.option("--in-chans", type=click.Choice(["1", "3"]), default=None,
              help="Image channels (default: a folder's own, 1 for grey images; the preset's "
                   "for digits).")
@click.option("--resize", is_flag=True,
              help="Allow converting the data to a model of another size or channel count "
                   "(refused otherwise).")
@click.pass_context
def command(ctx, output, data, preset, weights, epochs, lr, batch_size, shift, noise, seed,
            threads, img_size, patch_size, in_chans, resize) -> None:
    """Train a DeiT on a dataset's train split; pick by val; report test accuracy."""
    import torch

    from farc.atomic import check_outputs
    from farc.models.checkpoint import save_checkpoint
    from farc.progress import log

    tcfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, shift=shift, noise=noise,
                       seed=seed)
    _check_options(tcfg, weights)
    check_outputs({"-o": output}, {"--weights": weights})
    threads = threads or 1
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    explicit = ctx.get_parameter_source("preset") != click.core.ParameterSource.DEFAULT
    shape = {"img_size": img_size, "patch_size": patch_size,
             "in_chans": int(in_chans) if in_chans else None}
    model = _build(preset, data, weights, explicit, shape)
    cfg = model.cfg
    log(f"teacher: the model takes {cfg.img_size}x{cfg.img_size} images, {cfg.in_chans} "
        f"channel(s), {cfg.patch_size}x{cfg.patch_size} patches "
        f"({cfg.img_size // cfg.patch_size}x{cfg.img_size // cfg.patch_size} grid)")
    splits = _splits(data, cfg, resize)
    log(f"teacher: {_describe(preset, weights)}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, data {data} "
        f"(train {len(splits[0][0])} / val {len(splits[1][0])} / test {len(splits[2][0])})")
    metrics = _fit(model, splits, tcfg)
    prov = _provenance(data, preset, weights, tcfg, threads, metrics)
    save_checkpoint(output, model, prov)
    _print_result(_describe(preset, weights), metrics)
    log(f"wrote {output}")


def _build(preset: str, data: str, weights: str | None, explicit_preset: bool,
           shape: dict | None = None):
    """A fresh preset DeiT with the dataset's class count at the data's own size (or the
    explicit `shape`), or the imported weights (their own size)."""
    from dataclasses import replace

    from farc.data import num_classes
    from farc.errors import ConfigError
    from farc.models.deit import DeiT

    classes = num_classes(data)
    if weights is None:
        return DeiT(replace(model_shape(DEIT_PRESETS[preset], data, shape or {}),
                            num_classes=classes))
    from farc.models.loading import load_deit_state_dict

    heads = DEIT_PRESETS[preset].num_heads if explicit_preset else None
    model = load_deit_state_dict(weights, num_heads=heads)
    if model.cfg.num_classes != classes:
        raise ConfigError(f"--weights {weights} classify {model.cfg.num_classes} classes, "
                          f"dataset {data} has {classes}")
    return model


def model_shape(cfg, data: str, shape: dict):
    """`cfg` (a preset) at the data's own image size and channels (a folder; digits keep
    the preset's), each overridden by an explicit --img-size / --in-chans; the patch keeps
    the preset's token grid unless --patch-size is given."""
    from dataclasses import replace

    from farc.data import native_shape
    from farc.errors import ConfigError

    side, chans = native_shape(data) if data != "digits" else (cfg.img_size, cfg.in_chans)
    img = shape.get("img_size") or side
    grid = cfg.img_size // cfg.patch_size
    patch = shape.get("patch_size") or (img // grid if img % grid == 0 else None)
    if patch is None:
        raise ConfigError(f"{img}x{img} images do not split into the preset's {grid}x{grid} "
                          f"patch grid; pass --patch-size (a divisor of {img})")
    if img % patch:
        raise ConfigError(f"--patch-size {patch} does not divide the image side {img}")
    return replace(cfg, img_size=img, patch_size=patch,
                   in_chans=shape.get("in_chans") or chans)


def _splits(data: str, cfg, resize: bool = False):
    from farc.data import model_splits

    return model_splits(data, cfg.img_size, cfg.in_chans, resize)


def _fit(model, splits, tcfg: TrainConfig) -> dict:
    """Train (unless epochs == 0), then evaluate; metrics with CPU and wall seconds."""
    from farc.far.train import evaluate, train_classifier

    train, val, test = splits
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if tcfg.epochs > 0:
        result = train_classifier(model, train, val, tcfg, description="teacher")
        val_acc, best_epoch = result.best_val_acc, result.best_epoch
    else:
        val_acc, best_epoch = evaluate(model, *val), None
    test_acc = evaluate(model.eval(), *test)
    return {"val_acc": val_acc, "test_acc": test_acc, "best_epoch": best_epoch,
            "train_seconds": time.perf_counter() - wall0,
            "train_cpu_seconds": time.process_time() - cpu0}


def _print_result(name: str, m: dict) -> None:
    from farc.progress import print_table

    best = "" if m["best_epoch"] is None else m["best_epoch"] + 1
    print_table("Teacher", ["model", "val acc", "test acc", "best epoch", "wall s", "CPU s"],
                [(name, f"{m['val_acc']:.2%}", f"{m['test_acc']:.2%}", best,
                  f"{m['train_seconds']:.1f}", f"{m['train_cpu_seconds']:.1f}")])


def _describe(preset: str, weights: str | None) -> str:
    return preset if weights is None else f"weights {weights}"


def _check_options(cfg: TrainConfig, weights: str | None) -> None:
    from farc.errors import ConfigError

    if cfg.epochs < 0 or (cfg.epochs == 0 and weights is None):
        raise ConfigError(f"--epochs must be >= 1 (0 only with --weights), got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.shift < 0:
        raise ConfigError(f"--shift must be >= 0, got {cfg.shift}")
    if cfg.noise < 0:
        raise ConfigError(f"--noise must be >= 0, got {cfg.noise}")


def _provenance(data: str, preset: str, weights: str | None, cfg: TrainConfig, threads: int,
                metrics: dict) -> dict:
    from dataclasses import asdict
    from pathlib import Path

    import torch

    from farc import __version__
    from farc.far.provenance import environment

    prov = {"command": "teacher", "data": data, "preset": preset, "seed": cfg.seed,
            "train_config": asdict(cfg), "threads": threads, "metrics": metrics,
            "farc_version": __version__, "torch_version": torch.__version__,
            "machine": platform.machine(), "environment": environment(),
            "created_unix": int(time.time())}
    if weights is not None:
        prov["weights"] = {"path": str(Path(weights).resolve()), "sha256": _sha256(weights)}
        del prov["preset"]
    return prov


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
