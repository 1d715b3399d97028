"""Crossbars, latency and energy against the LSTM pruning ratio.

Digits (trained): the FAR student of bench_accuracy is pruned by the CLI
(`farc prune --target-sparsity R`, Hoyer-Square then removal then fine-tune) at each ratio
with fewer epochs than the defaults (below), compiled for ISAAC at W8/X8, 2-bit cells,
9-bit full-range ADC (lossless), costed by `farc.targets.cost.cost_program` (what
`farc report` prints, batch 1, attention n/a) and run on the digits test split.

FAR-T shape (random weights, no training): units are removed by the same selection rule
(`farc.far.prune.select_units(target_sparsity=R)` + `remove_units`: globally weakest group norm
first) and the smaller model is compiled and costed: the hardware effect at a realistic
width, where one LSTM direction of a head ((64 + 64) x 256 weights, 4 slices) spans 8
crossbars.

Each LSTM direction's cell `[W_ih | W_hh]` is ((d + H) x 4H); removing units shrinks H,
hence its rows and columns, so crossbars fall once a layer drops below a tile boundary.
Latency is the cost model's critical path (batch 1): the serial LSTM time steps, each one
MVM whose duration does not depend on how many rows and columns are in use, so on a
weight-stationary chip pruning buys crossbars, area and energy rather than latency."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench._common import CACHE, Section, farc_cli, rel

RATIOS = (0.0, 0.25, 0.5, 0.75)
QUICK_RATIOS = (0.0, 0.5)
PRUNE_EPOCHS = (2, 2)
"""Hoyer epochs and fine-tune epochs (CLI defaults are 10 and 10)."""
QUICK_PRUNE_EPOCHS = (1, 1)
TINY_RATIOS = (0.0, 0.25, 0.5, 0.75)
QUICK_TINY_RATIOS = (0.0, 0.5)
OVERRIDES = {"quant.weight_bits": 8, "quant.input_bits": 8, "crossbar.cell_bits": 2,
             "adc.bits": 9, "adc.range": "full"}


def prune_cached(far: Path, ratio: float, epochs: tuple[int, int], quick: bool) -> Path:
    """The digits student pruned to `ratio` by the CLI (cached by ratio and epochs)."""
    # keyed by the student's content, so a different --artifacts student never reuses these
    digest = hashlib.sha256(Path(far).read_bytes()).hexdigest()[:12]
    d = CACHE / ("quick" if quick else "") / "pruned" / digest
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"far_r{round(100 * ratio):02d}_e{epochs[0]}-{epochs[1]}.pt"
    if not out.is_file():
        print(f"  pruning to {ratio:.2f} ({epochs[0]}+{epochs[1]} epochs)", flush=True)
        farc_cli(["prune", far, "-o", out, "--target-sparsity", ratio, "--epochs", epochs[0],
                  "--ft-epochs", epochs[1]], d / "prune.log")
    return out


def cost_row(label: str, model_or_ckpt, target, calib_images=None, data="digits") -> dict:
    """Compile + cost one model; returns crossbars, latency, energy, LSTM units, program."""
    from farc.targets.cost import cost_program

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    opts = CompileOptions(calib_samples=128 if data else 2, data=data,
                          calib_images=calib_images)
    prog = compile_checkpoint(model_or_ckpt if not isinstance(model_or_ckpt, Path)
                              else str(model_or_ckpt), target, opts)
    rep = cost_program(prog, target)
    lstm = [L for L in prog.layers if L.get("kind") == "lstm_cell"]
    return {"label": label, "crossbars": rep.crossbars_used,
            "lstm_crossbars": sum(len(c) for L in lstm for c in L["crossbars"]),
            "latency_us": rep.latency_ns / 1e3, "energy_nj": rep.energy_total_pj / 1e3,
            "area_mm2": rep.area_total_mm2, "program": prog}


def units(model) -> tuple[int, int]:
    """(LSTM hidden units kept, dense units) of a FAR model."""
    kept = sum(f + b for blk in model.cfg.hidden for f, b in blk)
    d = model.cfg.deit
    return kept, 2 * d.head_dim * d.num_heads * d.depth


def digits_rows(far: Path, ratios, epochs, quick: bool, x, y) -> list[dict]:
    from farc.targets import load_target

    from bench.bench_accuracy import emulated_accuracy, float_accuracy
    from farc.models.checkpoint import load_checkpoint

    target = load_target("isaac").with_overrides(**OVERRIDES)
    rows = []
    for r in (None, *ratios):
        ckpt = far if r is None else prune_cached(far, r, epochs, quick)
        model = load_checkpoint(ckpt).model
        row = cost_row("student (not pruned)" if r is None else f"{r:.2f}", ckpt, target)
        row.update(zip(("units", "dense_units"), units(model)))
        row["params"] = sum(p.numel() for p in model.parameters())
        row["float_acc"] = float_accuracy(ckpt, x, y)
        row["emu_acc"] = emulated_accuracy(row.pop("program"), x, y)
        row["ckpt"] = rel(ckpt)
        rows.append(row)
        print(f"  digits {row['label']}: {row['crossbars']} crossbars, "
              f"{row['latency_us']:.1f} us, acc {row['emu_acc']:.3f}", flush=True)
    return rows


def tiny_rows(ratios) -> list[dict]:
    import torch
    from farc.targets import load_target

    from bench.bench_compile_scaling import build
    from farc.far.prune import remove_units, select_units
    from farc.models.deit import DEIT_PRESETS

    target = load_target("isaac").with_overrides(**OVERRIDES, **{"chip.tiles": 4000})
    dense = build("far", DEIT_PRESETS["deit_tiny_patch16_224"])
    calib = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    for r in ratios:
        model = dense if r == 0 else remove_units(dense, select_units(dense,
                                                                      target_sparsity=r))
        row = cost_row(f"{r:.2f}", model.eval(), target, calib_images=calib, data=None)
        row.pop("program")
        row.update(zip(("units", "dense_units"), units(model)))
        row["params"] = sum(p.numel() for p in model.parameters())
        rows.append(row)
        print(f"  FAR-T {row['label']}: {row['crossbars']} crossbars, "
              f"{row['latency_us']:.0f} us", flush=True)
    return rows


def _table(rows: list[dict], acc: bool) -> tuple[list[str], list[list]]:
    base = rows[0]
    head = ["pruning ratio", "LSTM units", "params", "crossbars", "LSTM crossbars",
            "latency us", "vs first", "energy nJ", "area mm2"]
    if acc:
        head += ["float acc", "emulated acc"]
    out = []
    for r in rows:
        line = [r["label"], f"{r['units']}/{r['dense_units']}", f"{r['params']:,}",
                f"{r['crossbars']:,}", f"{r['lstm_crossbars']:,}", f"{r['latency_us']:.2f}",
                f"{r['latency_us'] / base['latency_us']:.2f}", f"{r['energy_nj']:.1f}",
                f"{r['area_mm2']:.3f}"]
        if acc:
            line += [f"{100 * r['float_acc']:.1f}%", f"{100 * r['emu_acc']:.1f}%"]
        out.append(line)
    return head, out


def run(quick: bool, artifacts: Path | None, command: str) -> Section:
    from bench.bench_accuracy import ensure_models, test_split

    sec = Section("Crossbars and latency vs pruning ratio", __doc__)
    far = ensure_models(artifacts, quick)["far"]
    x, y = test_split()
    epochs = QUICK_PRUNE_EPOCHS if quick else PRUNE_EPOCHS
    digits = digits_rows(far, QUICK_RATIOS if quick else RATIOS, epochs, quick, x, y)
    sec.add(f"### digits FAR, trained (prune: {epochs[0]} Hoyer + {epochs[1]} fine-tune "
            "epochs; CLI defaults 10 + 10)")
    sec.table(*_table(digits, acc=True),
              "Latency is the cost model's critical path for one image; accuracy on the 360 "
              "test images (emulated: lossless ADC, no noise).")
    sec.load()
    tiny = tiny_rows(QUICK_TINY_RATIOS if quick else TINY_RATIOS)
    sec.add("### FAR-T shape (197 tokens), random weights, units removed without training")
    sec.table(*_table(tiny, acc=False))
    sec.load()
    sec.command(command, "# one digits point by hand:",
                f"farc prune {rel(far)} --target-sparsity 0.5 --epochs {epochs[0]} "
                f"--ft-epochs {epochs[1]} -o p50.pt",
                "farc compile p50.pt --target isaac --weight-bits 8 --input-bits 8 "
                "--cell-bits 2 --adc-bits 9 -o p50.farc",
                "farc report p50.farc --json p50.cost.json",
                "farc run p50.farc --data digits -o logits.npy")
    sec.raw = {"digits": digits, "tiny": tiny}
    return sec


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv, None, "python -m bench.bench_pruning").markdown())
