"""`farc import-far FILE -o far.pt`: a FAR checkpoint of the paper's reference implementation
(github aliothren/FAR, MultiHeadLstm or ParallelLSTM blocks on a timm DeiT) as a farc
checkpoint, ready for `farc compile`.

The file is read without running any of its code (farc.models.reference_far); every check
(keys, shapes, block-diagonal masks, heads) runs before anything is written, and the
checkpoint is written atomically, so a bad file ends in one line, exit 1 and no output.
Before writing, the imported model is compared with the file's own formulation on a seeded
random batch; the figure is printed and kept in the provenance. Format: docs/import-far.md."""

from __future__ import annotations

import click


@click.command("import-far")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="farc checkpoint to write.")
@click.option("--preset", default=None,
              help="DeiT shape to check the file against (farc.models.deit.DEIT_PRESETS, e.g. "
                   "deit_tiny_patch16_224); default: inferred from the tensor shapes.")
@click.option("--heads", type=int, default=None,
              help="Number of heads (overrides the preset's; needed for a MultiHeadLstm file "
                   "without --preset, whose shapes do not show it).")
@click.option("--key", default=None,
              help="Take the state dict under this key of a training checkpoint (e.g. "
                   "model_ema); default: model, state_dict or model_state_dict.")
@click.option("--offmask-tol", type=float, default=0.0, show_default=True,
              help="Largest |weight| outside MultiHeadLstm's block-diagonal masks that is "
                   "dropped (with a note) rather than refused.")
@click.option("--drop-bias-only-units", is_flag=True,
              help="Also remove pruned units that keep only their biases (the reference's "
                   "pruning leaves them); this changes outputs, and the change is reported.")
@click.option("--max-change", type=float, default=1e-4, show_default=True,
              help="Largest |imported - file| logit accepted by the self-check (ignored "
                   "with --drop-bias-only-units, whose change is only reported).")
def command(source, output, preset, heads, key, offmask_tol, drop_bias_only_units,
            max_change) -> None:
    """Import reference-implementation FAR checkpoint FILE as a farc checkpoint."""
    from pathlib import Path

    import torch

    from farc import __version__
    from farc.atomic import check_outputs
    from farc.errors import CheckpointError, ConfigError
    from farc.models.checkpoint import file_sha256, save_checkpoint
    from farc.models.reference_far import import_reference_far, source_logits_change
    from farc.progress import log, print_table

    check_outputs({"-o": output}, {"FILE": source})
    if heads is not None and heads < 1:
        raise ConfigError(f"--heads must be >= 1, got {heads}")
    if not offmask_tol >= 0:
        raise ConfigError(f"--offmask-tol must be >= 0, got {offmask_tol}")
    got = import_reference_far(source, preset, heads, offmask_tol, drop_bias_only_units, key)
    change = source_logits_change(got)
    if change > max_change and not drop_bias_only_units:
        raise CheckpointError(f"{source}: the imported model differs from the file's own "
                              f"formulation by {change:.3g} > --max-change {max_change:g}")
    cfg = got.model.cfg
    forms = sorted(set(got.forms))
    provenance = {
        "command": "import-far", "source": str(Path(source).resolve()),
        "source_sha256": file_sha256(source), "source_form": "+".join(forms),
        "preset": preset, "key": key, "notes": got.notes, "max_logit_change": change,
        "lstm_units": {"source": got.units_before, "imported": got.units_after},
        "farc_version": __version__, "torch_version": torch.__version__,
    }
    save_checkpoint(output, got.model, provenance)
    d = cfg.deit
    rows = [("form", ", ".join(forms)),
            ("shape", f"dim {d.embed_dim}, depth {d.depth}, heads {d.num_heads}, "
                      f"{d.img_size}x{d.img_size}x{d.in_chans}, {d.num_classes} classes"),
            ("LSTM units", f"{got.units_before} -> {got.units_after}"),
            ("hidden per head", _hidden(cfg.hidden)),
            ("max |imported - file| logit", f"{change:.2e} (4 random images)")]
    rows += [("note", n) for n in got.notes]
    print_table("FAR import", ["", "value"], rows)
    log(f"wrote {output}")


def _hidden(hidden) -> str:
    """Block by block, each head's (fwd, bwd) sizes, with a single size where they agree."""
    return "; ".join(" ".join(str(f) if f == b else f"{f}/{b}" for f, b in blk)
                     for blk in hidden)
