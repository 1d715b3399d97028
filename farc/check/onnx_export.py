"""Export a DeiT or FAR model to ONNX: the float golden model that onnxruntime runs.

Exporter choice (measured with torch 2.13 on the digits FAR): the TorchScript exporter
(`dynamo=False`) emits every nn.LSTM as one ONNX `LSTM` node in about 1 s; the dynamo
exporter also keeps LSTM nodes but takes about 30 s. We use the TorchScript exporter and
check the result: a FAR graph must hold exactly one LSTM node per head and direction, so a
future exporter that unrolls recurrences fails here, loudly, not in a later comparison.

Graph contract (what farc.check.ort, farc verify and the QDQ builder rely on):
  input  "image"  float32 [batch, in_chans, img_size, img_size]  (batch is dynamic)
  output "logits" float32 [batch, num_classes]
The backward LSTM of each head is a forward ONNX LSTM between two sequence flips (Slice with
step -1), exactly as the PyTorch model computes it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from farc.atomic import atomic_write
from farc.errors import ConfigError, PassError

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (DeiT or FAR) as ONNX to `path` atomically; returns the path."""
    import onnx

    path = Path(path)
    cfg = _deit_config(model)
    _check_opset(opset)
    device = next(model.parameters()).device
    example = torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    was_training = model.training
    model.eval()
    try:
        atomic_write(path, lambda tmp: _torchscript_export(model, example, tmp, opset))
    except torch.onnx.errors.OnnxExporterError as exc:  # e.g. an op missing at this opset
        raise PassError(f"ONNX export at opset {opset} failed: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        model.train(was_training)
    _check_lstm_nodes(onnx.load(str(path), load_external_data=False), model, path)
    return path


def _check_opset(opset: int) -> None:
    """The TorchScript exporter's opset range (torch raises a bare RuntimeError otherwise)."""
    try:
        from torch.onnx import _constants as c

        lo = c.ONNX_MIN_OPSET
        hi = getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        lo, hi = 7, 20
    if not lo <= opset <= hi:
        raise ConfigError(f"ONNX opset {opset} is not supported; expected {lo}..{hi}")


def expected_lstm_nodes(model: nn.Module) -> int:
    """LSTM nodes the graph must hold: one per head and direction for FAR, none for DeiT."""
    return sum(isinstance(m, nn.LSTM) for m in model.modules())


def _deit_config(model: nn.Module):
    cfg = getattr(model, "cfg", None)
    if getattr(model, "kind", None) == "far":
        return cfg.deit
    if getattr(model, "kind", None) == "deit":
        return cfg
    raise PassError(f"cannot export a {type(model).__name__} to ONNX: not a DeiT or FAR model")


def _torchscript_export(model: nn.Module, example: torch.Tensor, out: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )


def _check_lstm_nodes(proto, model: nn.Module, path: Path) -> None:
    found = sum(n.op_type == "LSTM" for n in proto.graph.node)
    want = expected_lstm_nodes(model)
    if found != want:
        path.unlink(missing_ok=True)
        raise PassError(
            f"ONNX export of {type(model).__name__} produced {found} LSTM nodes, expected {want} "
            "(the exporter unrolled or fused the recurrences)"
        )
