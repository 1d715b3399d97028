"""`farc finetune CKPT --target T --teacher TEACHER -o OUT`: hardware-aware fine-tuning.

Trains the FAR checkpoint CKPT through the differentiable numerics of the program
`farc compile CKPT --target T` would produce (farc/far/crossbar_torch.py): the same bit
widths, mapping, DAC, ADC policy and, with `--noise`, a freshly programmed noisy chip on
every step. The result is an ordinary FAR checkpoint (same shape, provenance added) that
`farc compile` takes like any other. Runs on one process or under torchrun, resumes with
`--resume`, same seed same weights (farc/commands/_training.py). docs/finetune.md."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from farc.commands._target_options import overridden_target, target_override_options
from farc.commands._training import run_training, training_options
from farc.far.distill import TrainOptions
from farc.far.finetune import FinetuneOptions
from farc.models.checkpoint import file_sha256


@click.command("finetune")
@click.argument("checkpoint", metavar="CKPT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Fine-tuned checkpoint to write (resume state goes to OUTPUT.resume).")
@click.option("--target", "target_name", default="isaac", show_default=True,
              help="Shipped target name or a .toml file (the program to train for).")
@click.option("--teacher", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint whose logits are distilled (default: CKPT itself, float).")
@click.option("--noise", multiple=True, metavar="KEY=VALUE",
              help="Device model sampled every step, e.g. prog_sigma=0.02, over the "
                   "target's [device] (docs/devices.md).")
@target_override_options
@click.option("--epochs", type=int, default=FinetuneOptions.epochs, show_default=True)
@click.option("--lr", type=float, default=FinetuneOptions.lr, show_default=True,
              help="Peak learning rate (warmup, cosine decay).")
@click.option("--kd/--no-kd", default=FinetuneOptions.kd, show_default=True,
              help="Logit distillation from --teacher.")
@click.option("--recalibrate-every", type=int, default=FinetuneOptions.recalibrate_every,
              show_default=True,
              help="Steps between input-scale recalibrations (0: every epoch).")
@click.option("--calib-samples", type=int, default=FinetuneOptions.calib_samples,
              show_default=True, help="Calibration images, as `farc compile --calib-samples`.")
@click.option("--eval-seeds", type=int, default=FinetuneOptions.eval_seeds, show_default=True,
              help="Device seeds of the before/after noisy accuracy (torch numerics).")
@training_options
def command(checkpoint, output, target_name, teacher, noise, epochs, lr, kd, recalibrate_every,
            calib_samples, eval_seeds, data, batch_size, seed, resume, device, threads,
            **overrides) -> None:
    """Fine-tune FAR checkpoint CKPT through the crossbar numerics of its program."""
    from farc.errors import ConfigError
    from farc.runtime.devices import noise_from_options

    target = overridden_target(target_name, overrides)
    cfg = noise_from_options(None, noise, target.device)  # the target's [device], then --noise
    if cfg is not None and cfg.beyond_twin:
        where = "--noise" if noise else f"the target's [device] ({target_name})"
        raise ConfigError(f"{where} {', '.join(cfg.beyond_twin)}: fine-tuning's torch numerics "
                          "do not model it yet (docs/devices.md); farc run does")
    opts = FinetuneOptions(epochs=epochs, lr=lr, kd=kd, recalibrate_every=recalibrate_every,
                           calib_samples=calib_samples, eval_seeds=eval_seeds,
                           train=TrainOptions(batch_size=batch_size, seed=seed))
    tgt_file = target_name if Path(target_name).suffix == ".toml" else None
    run_training(opts, output, device,
                 lambda world: _finetune(checkpoint, teacher, output, data, target, cfg, opts,
                                         resume, world, threads),
                 inputs={"CKPT": checkpoint, "--teacher": teacher, "--target": tgt_file})


def _finetune(ckpt_path, teacher_path, output, data, target, noise, opts, resume, world,
              threads) -> None:
    from farc import distributed as D
    from farc.commands.distill import _splits, print_accuracy
    from farc.far.distill import Run, freeze, state_path_for
    from farc.far.finetune import run_finetune
    from farc.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(opts.train.seed)
    ckpt = load_checkpoint(ckpt_path, expect="far")
    D.configure_threads(threads, ckpt.model)
    student = ckpt.model.to(world.device)
    teacher = None
    if opts.kd:  # without --teacher, the float student is its own teacher: a copy
        from farc.models.far import FAR

        teacher = load_checkpoint(teacher_path).model if teacher_path else FAR(student.cfg)
        if not teacher_path:
            teacher.load_state_dict(student.state_dict())
        teacher = freeze(teacher.to(world.device))
    train, val, test = _splits(data, student.cfg.deit)
    args = {"student": str(Path(ckpt_path).resolve()), "seed": opts.train.seed, "data": data,
            "teacher": str(Path(teacher_path).resolve()) if teacher_path else None}
    run = Run(world, train, val, opts.train, state_path_for(output), args)
    if resume:
        run.resume()
    model, report = run_finetune(student, teacher, target.xbar, noise, run, opts, test,
                                 train[0][:opts.calib_samples])
    if world.is_main:
        from farc.far.provenance import environment

        prov = {"command": "finetune",
                "student": {"path": args["student"], "sha256": file_sha256(ckpt_path)},
                "student_provenance": ckpt.provenance, "data": data, "seed": opts.train.seed,
                "teacher": None if not teacher_path else
                {"path": args["teacher"], "sha256": file_sha256(teacher_path)},
                "target": target.name, "target_config": target.to_dict(),
                "environment": environment(world.device), **report}
        save_checkpoint(output, model.cpu(), prov)
        _print(report, noise is not None and noise.enabled, print_accuracy)
    D.barrier(world)


def _print(report: dict, noisy: bool, print_accuracy) -> None:
    b, a = report["metrics"]["before"], report["metrics"]["after"]
    rows = [("float (torch)", None, b["float_test_acc"]),
            ("float, after", None, a["float_test_acc"]),
            ("crossbar numerics, noise-free", None, b["numerics_test_acc"]),
            ("crossbar numerics, noise-free, after", None, a["numerics_test_acc"])]
    if noisy and "noisy_test_acc" in a:
        rows += [("crossbar numerics, noisy (mean of seeds)", None, b["noisy_test_acc"]),
                 ("crossbar numerics, noisy, after", None, a["noisy_test_acc"])]
    print_accuracy(rows)
    from farc.progress import log

    log(f"fine-tuned in {report['seconds']:.1f} s ({report['recalibrations']} input-scale "
        "recalibrations)")
