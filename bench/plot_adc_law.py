"""Both ADC cost laws on one plot (docs/sweep.md): energy of one conversion and energy of one
inference of the digits FAR against adc.bits, on isaac's crossbars with the "walden" and the
"sar" law (targets/derived.py).

The digits FAR (farc.models.deit `deit_digits`, dense FAR, seeded random weights: cost does
not depend on the weights) is compiled once per ADC width by `compile_checkpoint` (the code
`farc compile` and `farc sweep` run) for isaac with 8-bit weights and inputs and a
calibrated ADC range, then costed under each law: what `farc sweep --grid adc.bits=4..9
--grid energy.adc_law=walden,sar` computes for the cost side (accuracy does not depend on
the law).

Run:  python -m bench.plot_adc_law     (about a minute; writes docs/img/adc_law.png)"""

from __future__ import annotations

from bench._common import ROOT

PLOT = ROOT / "docs" / "img" / "adc_law.png"
BITS = range(4, 10)
LAWS = ("walden", "sar")
BASE = {"quant.weight_bits": 8, "quant.input_bits": 8, "adc.range": "calibrated",
        "adc.flip": False}


def points() -> dict[str, list[tuple[int, float, float]]]:
    """law -> [(bits, pJ per conversion, uJ per inference)]."""
    import torch
    from farc.targets import load_target
    from farc.targets.cost import cost_program
    from farc.targets.derived import adc_conversion_pj

    from farc.compiler.driver import CompileOptions, compile_checkpoint
    from farc.models.deit import DEIT_PRESETS
    from farc.models.far import FAR, FARConfig

    torch.manual_seed(0)
    model = FAR(FARConfig.dense(DEIT_PRESETS["deit_digits"])).eval()
    out: dict[str, list[tuple[int, float, float]]] = {law: [] for law in LAWS}
    for bits in BITS:
        t = load_target("isaac").with_overrides(**BASE, **{"adc.bits": bits})
        prog = compile_checkpoint(model, t, CompileOptions(calib_samples=2, data=None))
        for law in LAWS:
            tl = t.with_overrides(**{"energy.adc_law": law})
            r = cost_program(prog, tl)
            out[law].append((bits, adc_conversion_pj(tl), r.energy_total_pj / 1e6))
        print(f"  adc.bits={bits}: " + ", ".join(
            f"{law} {out[law][-1][1]:.3f} pJ/conv {out[law][-1][2]:.3f} uJ" for law in LAWS),
            flush=True)
    return out


def plot(data: dict[str, list[tuple[int, float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for law, style in zip(LAWS, ("o-", "s--")):
        bits = [p[0] for p in data[law]]
        a.semilogy(bits, [p[1] for p in data[law]], style, label=law)
        b.plot(bits, [p[2] for p in data[law]], style, label=law)
    a.set(xlabel="adc.bits", ylabel="pJ per conversion",
          title="ADC conversion (isaac: 8-bit 1.5625 pJ)")
    b.set(xlabel="adc.bits", ylabel="uJ per inference", title="digits FAR on isaac crossbars")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")


if __name__ == "__main__":
    plot(points())
