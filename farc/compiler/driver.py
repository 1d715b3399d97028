"""`compile_checkpoint`: every compile stage in order, one line each.

    checkpoint/model -> load data -> calibrate (torch, float) -> import (torch.export -> Relax)
      -> LegalizeLSTM, LegalizeGRU -> PartitionCrossbar -> QuantizeCrossbar -> TileCrossbar
      -> ScheduleCrossbar -> emit_tile_program (codegen) -> Program (validated)

Each pass returns a new module and leaves its input unchanged; everything a later stage
needs travels in the IR (`farc.*` attributes of the crossbar functions, passes/_crossbar_ir.py).
With `dump_dir`, the IR after each stage is written as numbered files (01-import.py,
02-legalize.py, ...; TVMScript without the weight metadata), beside each a
`NN-<stage>.state.json` once the module has crossbar functions (every layer's `farc.*`
attributes, tensors as shape, dtype and sha256), and the manifest last."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
from torch import nn

from farc.compiler.calibrate import calibrate
from farc.compiler.importer import import_model
from farc.errors import ConfigError, PassError
from farc.passes._crossbar_ir import crossbar_state
from farc.passes.emit_tile_program import emit_tile_program
from farc.passes.legalize_gru import LegalizeGRU
from farc.passes.legalize_lstm import LegalizeLSTM
from farc.passes.partition_crossbar import PartitionCrossbar
from farc.passes.quantize_crossbar import QuantizeCrossbar
from farc.passes.schedule_crossbar import ScheduleCrossbar
from farc.passes.tile_crossbar import TileCrossbar
from farc.runtime.numerics import KEEP_VECTORS
from farc.runtime.program import Program
from farc.targets import Target


@dataclass
class CompileOptions:
    """Knobs of one compile (hardware numbers come from the Target, not from here)."""

    calib_samples: int = 64
    """Calibration images (the first N of the split)."""
    data: str | None = "digits"
    """Calibration data: 'digits', an image folder, or None for seeded N(0, 1) images."""
    calib_images: torch.Tensor | None = None
    """Explicit calibration images [N, C, H, W]; overrides `data`."""
    calib_source: str | None = None
    """The file `calib_images` were read from (`--calib-npy`), recorded in the provenance
    so that `farc verify` can read them again (their sha256 is checked)."""
    replicate: bool = False
    """Give spare crossbars to the busiest layers."""
    dump_dir: Path | None = None
    """Write the IR (and the crossbar state) after every stage here."""
    checkpoint_path: str | None = None
    """Recorded in the manifest's provenance."""
    seed: int = 0
    validate: bool = True
    """Validate the program on exit (Program.save validates again before writing)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Filled with seconds per stage."""


def compile_checkpoint(model_or_ckpt: Any, target: Target,
                       options: CompileOptions | None = None) -> Program:
    """Compile a DeiT/FAR model or a loaded Checkpoint (or a checkpoint path) for `target`.

    Returns the validated tile Program (docs/tile-program.md)."""
    opts = options or CompileOptions()
    model, model_info = _model_and_info(model_or_ckpt, opts)
    dump, clock = _Dumper(opts.dump_dir), _Clock(opts.timings)
    # Float ranges first: every later stage needs them, and they come from torch, not TVM.
    images = clock("load data", lambda: _calib_images(model, opts))
    pct = target.quant.percentile if target.quant.calibration == "percentile" else 100.0
    draws: list = []
    calib = clock("calibrate", lambda: calibrate(model, images, pct, seed=opts.seed,
                                                 draws=draws))
    # What verify needs to calibrate again, independently (docs/verify.md).
    model_info["provenance"]["calibration"] = _calibration_record(images, opts, target, draws)
    # torch.export + Relax import, one node per LSTM: IR size independent of length.
    mod = clock("import", lambda: _well_formed(import_model(model).mod, "import"))
    dump("import", mod)
    stages = [
        # LSTM and GRU -> scans over crossbar cells
        ("legalize", tvm.transform.Sequential([LegalizeLSTM(), LegalizeGRU()])),
        ("partition", PartitionCrossbar()),        # constant matmuls -> farc.* composites
        ("quantize", QuantizeCrossbar(target, calib)),  # integer weights, input scales
        ("tile", TileCrossbar(target, calib)),     # slices, signs, codes, ADC steps
        ("schedule", ScheduleCrossbar(target, opts.replicate)),  # place, order
    ]
    for name, stage in stages:
        mod = clock(name, lambda stage=stage, mod=mod: stage(mod))
        dump(name, mod)
    _well_formed(mod, "schedule")  # the module codegen reads
    # Codegen: instructions, layers and constants, every number read from the IR.
    program = clock("emit", lambda: _name_interface(
        emit_tile_program(mod, target, model_info), model))
    if opts.validate:  # the tile-program invariants on exit
        clock("validate", program.validate)
    dump.manifest(program)
    return program


def _well_formed(mod: tvm.IRModule, stage: str) -> tvm.IRModule:
    """Relax's own IR invariants, checked where the module enters and leaves the passes."""
    try:
        tvm.relax.analysis.well_formed(mod)
    except Exception as exc:  # TVM raises its own error types
        raise PassError(f"IR after {stage} is not well formed: {exc}") from None
    return mod


def _model_and_info(obj: Any, opts: CompileOptions) -> tuple[nn.Module, dict]:
    from farc.models.graph import GraphModel, is_user_model_file, load_user_model

    if isinstance(obj, str | Path):
        opts.checkpoint_path = opts.checkpoint_path or str(Path(obj).resolve())
        if is_user_model_file(obj):  # .pt2 / .onnx: rebuilt from farc modules, never run
            obj = load_user_model(obj)
        else:
            from farc.models.checkpoint import load_checkpoint

            obj = load_checkpoint(obj)
    if isinstance(obj, GraphModel):
        return obj.eval(), _graph_info(obj, opts)
    if isinstance(obj, nn.Module) and not hasattr(obj, "cfg"):
        raise ConfigError(f"cannot compile a {type(obj).__name__}: not a farc DeiT/FAR "
                          "model; save it with torch.export.save (.pt2) or as ONNX and "
                          "compile that file")
    if isinstance(obj, nn.Module):
        model, kind, prov = obj, obj.kind, {}
    elif hasattr(obj, "model"):
        model, kind, prov = obj.model, obj.kind, dict(obj.provenance or {})
    else:
        raise ConfigError(f"cannot compile a {type(obj).__name__}; expected a model or "
                          "checkpoint")
    if opts.checkpoint_path:
        prov["checkpoint"] = opts.checkpoint_path
    config = model.cfg.to_dict()
    name = prov.get("name") or f"{kind}-{_shape_name(model)}"
    return model.eval(), {"kind": kind, "name": str(name), "config": config,
                          "provenance": _jsonable(prov)}


def _graph_info(model: Any, opts: CompileOptions) -> dict:
    """The manifest's model entry for a user's .pt2/.onnx model: the file it came from
    (path and sha256: what `farc verify` rebuilds its reference from) and its interface."""
    src = dict(model.source)
    prov = {"checkpoint": opts.checkpoint_path or src.get("path"),
            "model_format": src.get("format"), "model_sha256": src.get("sha256")}
    stem = Path(str(src.get("path") or "model")).stem
    config = {"input": model.input_name, "input_shape": list(model.input_shape[1:]),
              "outputs": model.output_names,
              "layers": sorted(n.attrs["module"] for n in model.nodes if "module" in n.attrs)}
    return {"kind": "graph", "name": f"{src.get('format', 'graph')}-{stem}",
            "config": config, "provenance": _jsonable(prov)}


def _name_interface(program: Program, model: nn.Module) -> Program:
    """Inputs and outputs of a user's model keep the model's own names."""
    from farc.models.graph import GraphModel

    if not isinstance(model, GraphModel):
        return program
    outs = dict(zip((o["name"] for o in program.manifest["outputs"]), model.output_names))
    for ins in program.manifest["instructions"]:
        if ins["op"] == "input":
            ins["name"] = model.input_name
        elif ins["op"] == "output":
            ins["name"] = outs[ins["name"]]
    program.manifest["inputs"][0]["name"] = model.input_name
    for spec in program.manifest["outputs"]:
        spec["name"] = outs[spec["name"]]
    for spec in program.manifest["inputs"] + program.manifest["outputs"]:
        if model.batch_axes.get(spec["name"]):  # a time-major model's layout, for run/verify
            spec["batch_axis"] = model.batch_axes[spec["name"]]
    return program


def _shape_name(model: nn.Module) -> str:
    d = getattr(model.cfg, "deit", model.cfg)
    return f"D{d.embed_dim}-L{d.depth}-H{d.num_heads}-T{d.num_tokens}"


def _jsonable(d: dict) -> dict:
    """Provenance as strict JSON: a program's manifest refuses non-finite numbers (the
    loader's rule), so an infinite setting in a checkpoint's provenance (e.g. an on/off
    ratio of inf) is recorded as the string 'inf' rather than written as Infinity."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v
    return finite(json.loads(json.dumps(d, default=str)))


def _calibration_record(images: torch.Tensor, opts: CompileOptions, target: Target,
                        draws: list) -> dict:
    """The provenance's `calibration` entry (docs/verify.md, "Calibration check"): where the
    images came from and their sha256 (float32, C order), the count, the subsample seed and
    rule, the policies, and the order in which layers drew their kept vectors."""
    x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
    if opts.calib_images is not None:
        source = {"kind": "npy", "path": opts.calib_source} if opts.calib_source else \
            {"kind": "array"}
    elif opts.data is None:
        source = {"kind": "random", "seed": opts.seed}
    else:
        data = opts.data if opts.data == "digits" else str(Path(opts.data).resolve())
        source = {"kind": "data", "data": data, "split": "train"}
    q, a = target.quant, target.adc
    return {"source": source, "samples": len(x), "shape": list(x.shape[1:]),
            "sha256": hashlib.sha256(x.tobytes()).hexdigest(), "seed": opts.seed,
            "input": {"calibration": str(q.calibration), "percentile": float(q.percentile)},
            "adc": {"range": str(a.range), "statistic": str(a.statistic),
                    "percentile": float(a.percentile), "granularity": str(a.granularity),
                    "step_rule": str(a.step_rule)},
            "keep_vectors": KEEP_VECTORS, "draws": draws}


def _calib_images(model: nn.Module, opts: CompileOptions) -> torch.Tensor:
    from farc.models.graph import GraphModel, sample_inputs

    if isinstance(model, GraphModel):
        shape = model.input_shape[1:]
    else:
        d = getattr(model.cfg, "deit", model.cfg)
        shape = (d.in_chans, d.img_size, d.img_size)
    if opts.calib_images is not None:
        x = opts.calib_images[: opts.calib_samples].float()
        if tuple(x.shape[1:]) != tuple(shape):
            raise ConfigError(f"calibration inputs are {list(x.shape[1:])} per sample; the "
                              f"model takes {list(shape)}")
        return x
    if opts.data is None:
        g = torch.Generator().manual_seed(opts.seed)
        return torch.randn(opts.calib_samples, *shape, generator=g)
    if isinstance(model, GraphModel):
        return sample_inputs(model, opts.data, "train", opts.calib_samples)[0]
    from farc.data import load_split

    x, _ = load_split(opts.data, "train", img_size=shape[1], in_chans=shape[0])
    return x[: opts.calib_samples].float()


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, name: str, fn):
        t = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - t
        return out


class _Dumper:
    """Numbered IR files after each stage, when a dump directory is given: TVMScript, plus
    the crossbar functions' attributes as JSON (the TVMScript shows tensors only as
    metadata references)."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root else None
        self.n = 0
        if self.root:
            self.root.mkdir(parents=True, exist_ok=True)

    def __call__(self, stage: str, mod: tvm.IRModule) -> None:
        if not self.root:
            return
        self.n += 1
        stem = self.root / f"{self.n:02d}-{stage}"
        stem.with_suffix(".py").write_text(mod.script(show_meta=False))
        state = crossbar_state(mod)
        if state:
            stem.with_suffix(".state.json").write_text(json.dumps(state, indent=1))

    def manifest(self, program: Program) -> None:
        if self.root:
            self.n += 1
            (self.root / f"{self.n:02d}-program.json").write_text(
                json.dumps(program.manifest, indent=1, default=str))
