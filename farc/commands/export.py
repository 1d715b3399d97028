"""`farc export CKPT -o model.onnx`: the float golden ONNX model of a DeiT or FAR checkpoint.

The checkpoint is validated first (farc.models.checkpoint), so a bad file fails with one line and
no output; the ONNX file is written atomically and checked to keep LSTMs as LSTM nodes. With
--check, onnxruntime runs it on a random batch and the result is compared with PyTorch."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset version.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the ONNX model with onnxruntime and compare with PyTorch.")
@click.option("--atol", type=float, default=1e-5, show_default=True,
              help="Largest absolute logit difference --check accepts.")
def command(checkpoint, output, opset, check, atol) -> None:
    """Export DeiT or FAR checkpoint CHECKPOINT to ONNX (LSTMs as ONNX LSTM nodes)."""
    from farc.atomic import check_outputs
    from farc.check.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
    from farc.models.checkpoint import load_checkpoint
    from farc.progress import log, print_table

    check_outputs({"-o": output}, {"CHECKPOINT": checkpoint})  # before loading or exporting
    ckpt = load_checkpoint(checkpoint)
    path = export_onnx(ckpt.model, output, opset=opset)
    rows = [("kind", ckpt.kind), ("file", str(path)), ("input", INPUT_NAME),
            ("output", OUTPUT_NAME), ("LSTM nodes", _count_lstm(path))]
    if check:
        diff = _max_diff(ckpt.model, path)
        rows.append(("max |ORT - torch|", f"{diff:.2e}"))
        if not diff <= atol:
            from farc.errors import PassError

            path.unlink(missing_ok=True)
            raise PassError(f"onnxruntime differs from PyTorch by {diff:.2e} > atol {atol:g}; "
                            f"{path} removed")
    print_table("ONNX export", ["", "value"], rows)
    log(f"wrote {path}")


def _count_lstm(path) -> int:
    import onnx

    return sum(n.op_type == "LSTM" for n in onnx.load(str(path)).graph.node)


def _max_diff(model, path) -> float:
    """Largest |onnxruntime - PyTorch| logit difference on a seeded random batch of 4."""
    import numpy as np
    import torch

    from farc.check.ort import OrtRunner

    cfg = model.cfg.deit if model.kind == "far" else model.cfg
    x = torch.randn(4, cfg.in_chans, cfg.img_size, cfg.img_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    return float(np.abs(OrtRunner(path).run(x.numpy()) - ref).max())
