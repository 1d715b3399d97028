"""`farc prune STUDENT -o PRUNED`: Hoyer-Square structured pruning of FAR LSTM hidden units.

Runs on one process or under torchrun, like `farc distill`. The saved checkpoint is
physically smaller: its config holds each block's, head's and direction's hidden size."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from farc.commands._training import run_training, training_options
from farc.commands.distill import print_accuracy
from farc.far.distill import TrainOptions
from farc.far.prune import PruneOptions
from farc.models.checkpoint import file_sha256


def print_units(rows: list[dict], heads: int) -> None:
    """Units kept per block (rows) and head (columns), each cell 'fwd / bwd'."""
    from farc.progress import print_table

    blocks = sorted({r["block"] for r in rows})
    kept = {(r["block"], r["head"], r["direction"]): r["after"] for r in rows}
    size = max(r["before"] for r in rows)
    table = [(b, *(f"{kept[(b, h, 'fwd')]} / {kept[(b, h, 'bwd')]}" for h in range(heads)),
              f"{sum(r['after'] for r in rows if r['block'] == b)}/"
              f"{sum(r['before'] for r in rows if r['block'] == b)}") for b in blocks]
    print_table(f"LSTM hidden units kept, fwd / bwd (of {size} each)",
                ["block", *(f"head {h}" for h in range(heads)), "block total"], table)


def print_params(report: dict) -> None:
    from farc.progress import print_table

    p, u = report["params"], report["units"]
    rows = [("LSTM hidden units", u["before"], u["after"], f"{100 * u['removed_share']:.1f}%"),
            ("LSTM + head_proj params", p["lstm_before"], p["lstm_after"],
             f"{100 * (1 - p['lstm_after'] / p['lstm_before']):.1f}%"),
            ("all params", p["before"], p["after"],
             f"{100 * (1 - p['after'] / p['before']):.1f}%")]
    print_table("Size before and after pruning", ["", "before", "after", "removed"], rows)


@click.command("prune")
@click.argument("student", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Pruned checkpoint to write (resume state goes to OUTPUT.resume).")
@click.option("--target-sparsity", type=float, default=None,
              help=f"Share of LSTM hidden units to remove, globally "
                   f"(default {PruneOptions.target_sparsity} unless --threshold is given).")
@click.option("--threshold", type=float, default=None,
              help="Remove units whose group norm is below this (instead of a sparsity).")
@click.option("--hoyer-weight", type=float, default=PruneOptions.hoyer_weight, show_default=True,
              help="Weight of the summed Hoyer-Square terms against CE + KD.")
@click.option("--epochs", type=int, default=PruneOptions.epochs, show_default=True,
              help="Hoyer-Square regularised training epochs.")
@click.option("--ft-epochs", type=int, default=PruneOptions.ft_epochs, show_default=True,
              help="Fine-tune epochs after the units are removed.")
@click.option("--kd/--no-kd", default=PruneOptions.kd, show_default=True,
              help="Logit distillation from the unpruned student.")
@click.option("--lr", type=float, default=PruneOptions.lr, show_default=True,
              help="Peak learning rate of the Hoyer stage.")
@click.option("--ft-lr", type=float, default=PruneOptions.ft_lr, show_default=True,
              help="Peak learning rate of the fine-tune after removal.")
@training_options
def command(student, output, data, target_sparsity, threshold, hoyer_weight, epochs, ft_epochs,
            kd, lr, ft_lr, resize, batch_size, seed, resume, device, threads) -> None:
    """Prune FAR checkpoint STUDENT's LSTM units with Hoyer-Square, remove them, fine-tune."""

    if target_sparsity is None and threshold is None:
        target_sparsity = PruneOptions.target_sparsity
    opts = PruneOptions(target_sparsity=target_sparsity, threshold=threshold,
                        hoyer_weight=hoyer_weight, epochs=epochs, ft_epochs=ft_epochs, lr=lr,
                        ft_lr=ft_lr, kd=kd, train=TrainOptions(batch_size=batch_size, seed=seed))
    run_training(opts, output, device,
                 lambda world: _prune(student, output, data, opts, resume, world, threads,
                                      resize),
                 inputs={"STUDENT": student})


def _prune(student_path, output, data, opts, resume, world, threads, resize=False) -> None:
    from farc import distributed as D
    from farc.commands.distill import _splits
    from farc.far.distill import Run, state_path_for
    from farc.far.prune import run_prune
    from farc.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(opts.train.seed)
    ckpt = load_checkpoint(student_path, expect="far")
    D.configure_threads(threads, ckpt.model)
    student = ckpt.model.to(world.device)
    train, val, test = _splits(data, student.cfg.deit, resize)
    args = {"student": str(Path(student_path).resolve()), "seed": opts.train.seed,
            "data": data}
    run = Run(world, train, val, opts.train, state_path_for(output), args)
    if resume:
        run.resume()
    pruned, report = run_prune(student, run, opts, test)
    if world.is_main:
        from farc.far.provenance import environment

        m = report["metrics"]
        teacher_m = ckpt.provenance.get("metrics", {})
        m["teacher_val_acc"] = teacher_m.get("teacher_val_acc")
        m["teacher_test_acc"] = teacher_m.get("teacher_test_acc")
        prov = {"command": "prune", "student": {"path": args["student"],
                                                "sha256": file_sha256(student_path)},
                "student_provenance": ckpt.provenance, "data": data, "seed": opts.train.seed,
                "hidden": pruned.cfg.to_dict()["hidden"],
                "environment": environment(world.device), **report}
        save_checkpoint(output, pruned.cpu(), prov)
        print_accuracy([("teacher (DeiT)", m["teacher_val_acc"], m["teacher_test_acc"]),
                        ("student (FAR)", m["student_val_acc"], m["student_test_acc"]),
                        ("pruned FAR", m["pruned_val_acc"], m["pruned_test_acc"])])
        print_units(report["units_kept"], student.cfg.deit.num_heads)
        print_params(report)
    D.barrier(world)
