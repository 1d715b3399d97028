"""`farc distill TEACHER -o STUDENT`: DeiT -> FAR by block-wise distillation + fine-tune.

Runs as is on one process, or under `torchrun --nproc-per-node N farc distill ...`
(DDP; gloo on CPU, nccl on GPU). Only rank 0 prints and writes files."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from farc.commands._training import run_training, training_options
from farc.far.distill import SIMILARITIES, DistillOptions, TrainOptions


def print_accuracy(rows: list[tuple[str, float | None, float | None]]) -> None:
    """Accuracy table: model, val and test accuracy in percent, and test accuracy relative to
    the first row (the teacher) in points; blank where unknown."""
    from farc.progress import print_table

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.2f}%"

    ref = rows[0][2]

    def delta(v: float | None) -> str:
        return "" if v is None or ref is None else f"{100 * (v - ref):+.2f}"

    print_table("Accuracy", ["model", "val", "test", "test vs teacher (pt)"],
                [(m, pct(v), pct(t), delta(t)) for m, v, t in rows])


def print_preservation(fp: dict) -> None:
    """Function preservation: per head, cosine (free-running) before and after each stage,
    and the final relative MSE; the full table (forced too) is in the --report-dir files."""
    from farc.progress import print_table

    stages = fp["stages"]
    final = stages[-1]["free"]
    rows = [(f"b{b} h{h}", *(f"{s['free']['cosine'][b][h]:.3f}" for s in stages),
             f"{final['rel_mse'][b][h]:.3f}")
            for b in range(len(final["cosine"])) for h in range(len(final["cosine"][0]))]
    print_table(f"Function preservation per head (student vs teacher softmax(QK^T)V, "
                f"{fp['split']}, end to end)",
                ["head", *(f"cos after {s['after']}" for s in stages), "rel MSE"], rows)


def write_report(fp: dict, metrics: dict, folder: str | Path) -> list[Path]:
    """function_preservation.{json,md,png} in `folder`: both modes, every stage."""
    import json

    from farc.atomic import atomic_write
    from farc.far.preservation import heatmap, markdown_table

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "function_preservation.json", d / "function_preservation.md"]
    text = json.dumps({"metrics": metrics, **fp}, indent=1)
    md = (f"# Function preservation ({fp['split']} split)\n\n"
          "cos: cosine similarity of each FAR head's output to its attention head's "
          "softmax(QK^T)V (mean over images and tokens); rMSE: sum (s - t)^2 / sum t^2. "
          "free: both models end to end; forced: the student block reads the teacher's "
          "block input.\n\n" + markdown_table(fp["stages"]))
    atomic_write(paths[0], lambda tmp: tmp.write_text(text))
    atomic_write(paths[1], lambda tmp: tmp.write_text(md))
    paths.append(heatmap(fp["stages"], d / "function_preservation.png"))
    return paths


@click.command("distill")
@click.argument("teacher", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Student checkpoint to write (resume state goes to OUTPUT.resume).")
@click.option("--similarity", type=click.Choice(SIMILARITIES), default=DistillOptions.similarity,
              show_default=True,
              help="Per-head similarity: relative MSE or 1 - cosine (both stages).")
@click.option("--sim-weight", type=float, default=DistillOptions.sim_weight, show_default=True,
              help="Weight of the summed per-head similarity term in the fine-tune.")
@click.option("--epochs", type=int, default=DistillOptions.epochs, show_default=True,
              help="Block-wise distillation epochs (teacher-forced, mixers only).")
@click.option("--ft-epochs", type=int, default=DistillOptions.ft_epochs, show_default=True,
              help="End-to-end fine-tune epochs (all parameters).")
@click.option("--kd/--no-kd", default=DistillOptions.kd, show_default=True,
              help="Logit distillation from the teacher during the fine-tune.")
@click.option("--lr", type=float, default=DistillOptions.lr, show_default=True,
              help="Peak AdamW learning rate of stage 1 (warmup, then cosine).")
@click.option("--ft-lr", type=float, default=DistillOptions.ft_lr, show_default=True,
              help="Peak learning rate of the fine-tune.")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="Also write function_preservation.{json,md,png} (per-head table and "
                   "heat map, before and after each stage) into this folder.")
@training_options
def command(teacher, output, data, similarity, sim_weight, epochs, ft_epochs, kd, lr, ft_lr,
            report_dir, resize, batch_size, seed, resume, device, threads) -> None:
    """Distil DeiT checkpoint TEACHER into a FAR student (block-wise, then end-to-end)."""

    opts = DistillOptions(similarity=similarity, sim_weight=sim_weight, epochs=epochs,
                          ft_epochs=ft_epochs, lr=lr, ft_lr=ft_lr, kd=kd,
                          train=TrainOptions(batch_size=batch_size, seed=seed))
    run_training(opts, output, device,
                 lambda world: _distill(teacher, output, data, opts, resume, world, threads,
                                        report_dir, resize),
                 inputs={"TEACHER": teacher})


def _distill(teacher_path, output, data, opts, resume, world, threads, report_dir,
             resize=False) -> None:
    from farc import distributed as D
    from farc.far.distill import Run, freeze, run_distill, state_path_for
    from farc.far.provenance import environment
    from farc.models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
    from farc.models.far import FAR

    torch.manual_seed(opts.train.seed)
    ckpt = load_checkpoint(teacher_path, expect="deit")
    D.configure_threads(threads, ckpt.model)
    teacher = freeze(ckpt.model.to(world.device))
    train, val, test = _splits(data, teacher.cfg, resize)
    student = FAR.from_teacher(teacher).to(world.device)
    args = {"teacher": str(Path(teacher_path).resolve()), "seed": opts.train.seed,
            "similarity": opts.similarity, "data": data}
    run = Run(world, train, val, opts.train, state_path_for(output), args)
    if resume:
        run.resume()
    student, report = run_distill(teacher, student, run, opts, test)
    if world.is_main:
        prov = {"command": "distill", "teacher": {"path": args["teacher"],
                                                  "sha256": file_sha256(teacher_path)},
                "teacher_provenance": ckpt.provenance, "data": data, "seed": opts.train.seed,
                "environment": environment(world.device), **report}
        save_checkpoint(output, student.cpu(), prov)
        m = report["metrics"]
        print_accuracy([("teacher (DeiT)", m["teacher_val_acc"], m["teacher_test_acc"]),
                        ("student (FAR)", m["student_val_acc"], m["student_test_acc"])])
        print_preservation(report["function_preservation"])
        if report_dir:
            write_report(report["function_preservation"], m, report_dir)
    D.barrier(world)


def _splits(data: str, cfg, resize: bool = False):
    """The data at the model's size; a folder of another size only with --resize."""
    from farc.data import model_splits

    return model_splits(data, cfg.img_size, cfg.in_chans, resize)
