"""Compile time against model size and against sequence length.

Models are built from the presets with random weights (seed 0) and compiled in this process
by `farc.compiler.compile_checkpoint` (the code `farc compile` runs) for ISAAC with 8-bit
weights and inputs; calibration uses 2 seeded N(0, 1) images. The chip is enlarged
(`chip.tiles`) so that DeiT-B fits: the point is compiler time, not whether one ISAAC chip
holds the model. Each row reports the per-stage seconds of `CompileOptions.timings`, the
Relax bindings right after import, and the tile program's size (instructions, loop bodies
counted once): neither may grow with the number of tokens.

Run alone:  python -m bench.bench_compile_scaling [--quick]"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import replace

from bench._common import Section

SIZE_MODELS = {  # label -> (kind, preset)
    "digits FAR": ("far", "deit_digits"),
    "FAR-T": ("far", "deit_tiny_patch16_224"),
    "FAR-S": ("far", "deit_small_patch16_224"),
    "FAR-B": ("far", "deit_base_patch16_224"),
    "DeiT-T": ("deit", "deit_tiny_patch16_224"),
    "DeiT-S": ("deit", "deit_small_patch16_224"),
    "DeiT-B": ("deit", "deit_base_patch16_224"),
}
QUICK_SIZE_MODELS = ("digits FAR", "FAR-T", "DeiT-T")
SEQ_IMG_SIZES = (64, 128, 224)
"""FAR-T with 16x16 patches at these image sizes: 17, 65 and 197 tokens."""
OVERRIDES = {"quant.weight_bits": 8, "quant.input_bits": 8, "chip.tiles": 4000}
STAGES = ("calibrate", "import", "legalize", "partition", "quantize", "tile", "schedule",
          "emit", "validate")


def build(kind: str, cfg):
    """A DeiT or dense FAR of DeiT shape `cfg` with seeded random weights."""
    import torch

    from farc.models.deit import DeiT
    from farc.models.far import FAR, FARConfig

    torch.manual_seed(0)
    return (FAR(FARConfig.dense(cfg)) if kind == "far" else DeiT(cfg)).eval()


def bindings(mod) -> int:
    """Relax bindings over every function of `mod` (the IR size)."""
    return sum(len(blk.bindings) for _, f in mod.functions.items()
               if hasattr(f, "body") and hasattr(f.body, "blocks") for blk in f.body.blocks)


@contextlib.contextmanager
def _capture_import(seen: list) -> Iterator[None]:
    """Keep the module `import_model` returns inside the driver (for its binding count)."""
    from farc.compiler import driver

    orig = driver.import_model

    def wrapped(model):
        out = orig(model)
        seen.append(out.mod)
        return out

    driver.import_model = wrapped
    try:
        yield
    finally:
        driver.import_model = orig


def compile_one(label: str, kind: str, cfg) -> dict:
    """Compile one model; returns timings, sizes and counts."""
    from farc.targets import load_target

    from farc.commands.compile import op_counts
    from farc.compiler.driver import CompileOptions, compile_checkpoint

    target = load_target("isaac").with_overrides(**OVERRIDES)
    model = build(kind, cfg)
    params = sum(p.numel() for p in model.parameters())
    opts, seen = CompileOptions(calib_samples=2, data=None), []
    t0 = time.perf_counter()
    with _capture_import(seen):
        program = compile_checkpoint(model, target, opts)
    total = time.perf_counter() - t0
    row = {"model": label, "kind": kind, "tokens": cfg.num_tokens, "D": cfg.embed_dim,
           "heads": cfg.num_heads, "depth": cfg.depth, "params": params, "total_s": total,
           "stages": dict(opts.timings), "bindings": bindings(seen[0]) if seen else None,
           "instructions": sum(op_counts(program.instructions).values()),
           "layers": len(program.layers),
           "crossbars": program.manifest["schedule"]["crossbars_used"]}
    del program, model
    gc.collect()
    print(f"  compiled {label} ({cfg.num_tokens} tokens) in {total:.1f} s", flush=True)
    return row


def _warm_up() -> None:
    """One throw-away compile so torch.export/TVM one-time start-up is not billed to row 1."""
    from farc.models.deit import DeiTConfig

    compile_one("warm-up", "far", DeiTConfig(img_size=8, patch_size=2, in_chans=1,
                                             num_classes=3, embed_dim=16, depth=1,
                                             num_heads=2, mlp_ratio=2.0))


def _fmt_row(r: dict) -> list:
    s = r["stages"]
    other = r["total_s"] - s.get("calibrate", 0) - s.get("import", 0)
    return [r["model"], r["tokens"], f"{r['params'] / 1e6:.2f} M", r["layers"],
            f"{r['crossbars']:,}", f"{r['total_s']:.1f}", f"{s.get('calibrate', 0):.1f}",
            f"{s.get('import', 0):.1f}", f"{other:.1f}", r["bindings"], r["instructions"]]


HEADER = ["model", "tokens", "params", "xbar layers", "crossbars", "total s", "calibrate s",
          "import s", "passes+emit s", "Relax bindings", "program instrs"]


def run(quick: bool, command: str) -> Section:
    from farc.models.deit import DEIT_PRESETS

    sec = Section("Compile time vs model size and sequence length", __doc__.split("\n\n")[1])
    _warm_up()
    labels = QUICK_SIZE_MODELS if quick else tuple(SIZE_MODELS)
    rows = [compile_one(lb, *_kind_cfg(lb, DEIT_PRESETS)) for lb in labels]
    sec.add("### vs model size (ISAAC, 8-bit weights/inputs, random weights)")
    sec.table(HEADER, [_fmt_row(r) for r in rows])
    sec.load()
    tiny = DEIT_PRESETS["deit_tiny_patch16_224"]
    seq = []
    for img in SEQ_IMG_SIZES:
        done = [r for r in rows if r["model"] == "FAR-T" and img == tiny.img_size]
        seq.append(done[0] if done else compile_one("FAR-T", "far", replace(tiny, img_size=img)))
    sec.add("### vs sequence length (FAR-T shape, 16x16 patches, image 64/128/224 px)")
    sec.table(HEADER, [_fmt_row(r) for r in seq],
              "The 197-token row is the FAR-T row above (same model, same run).")
    sec.load()
    sec.add("Stage seconds are wall time of one compile (no repeat). `import` is "
            "torch.export + the Relax importer; `passes+emit` is legalize through validate.")
    sec.command(command, "# one row by hand (checkpoint from `farc teacher`/`distill`):",
                "farc compile CKPT --target isaac --weight-bits 8 --input-bits 8 -o m.farc")
    sec.raw = {"size": rows, "seq": seq}
    return sec


def _kind_cfg(label: str, presets: dict):
    kind, preset = SIZE_MODELS[label]
    return kind, presets[preset]


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv, "python -m bench.bench_compile_scaling").markdown())
