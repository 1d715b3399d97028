"""VGG-8 on `neurosim_rram` configured as the DNN+NeuroSim V1.4 manual's Table VII, beside
the table's two RRAM rows (issue 25).

The network is NeuroSim's own `NetWork_VGG8.csv` (CIFAR-10 32x32x3; 3x3 convolutions of
128, 128, 256, 256, 512, 512 channels with padding 1 and ReLU, a 2x2 max pool after every
second one; FC 8192 -> 1024 -> 10), built in torch with seeded random weights, exported as
`.pt2` and compiled by farc with two seeded N(0, 1) calibration images: this is about cost,
not accuracy. The chip figures come from farc's cost model (`cost_program`); TOPS and TOPS/W
use NeuroSim's own operation count (main.cpp: 2 x IFM_H x IFM_W x IFM_C x K_H x K_W x OFM_C
per layer) and its post-layout energy factor zeta = 1.22 (Param.cpp, `validated = true`).
docs/targets.md "VGG-8 against NeuroSim Table VII" traces every difference.

Run: python -m bench.bench_neurosim_vgg8"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import Section, pin_threads

LAYERS = ((32, 3, 128), (32, 128, 128), (16, 128, 256), (16, 256, 256), (8, 256, 512),
          (8, 512, 512))
"""NetWork_VGG8.csv's convolutions: (IFM size, C_in, C_out), 3x3 kernels, padding 1."""
FCS = ((8192, 1024), (1024, 10))
"""NetWork_VGG8.csv's fully connected layers: (inputs, outputs)."""

TABLE_VII = {32: (381.90, 6.25, 11.25), 64: (378.06, 8.16, 19.88)}
"""Manual Table VII, RRAM 22 nm, on/off 17, 4-bit ADC: parallel read -> (mm^2, TOPS, TOPS/W)."""

ZETA = 1.22
"""Param.cpp `zeta`: post-layout energy increase, divided into NeuroSim's TOPS/W."""

SPEEDUP = (16, 16, 4, 4, 1, 1, 1, 1)
"""NeuroSim's pipeline weight duplication of VGG-8 per layer (Chip.cpp ChipDesignInitialize:
speedUpDegree 8 is capped at max/min conv IFM = 32/8 = 4, boundIFMSize = 32/4 = 8, layer
speed-up ceil((IFM / 8)^2))."""

TABLE_VII_OVERRIDES: dict[str, Any] = {
    "adc.bits": 4,                  # Table VII: 4-bit ADC (levelOutput = 16)
    "quant.mapping": "offset",      # numColPerSynapse = synapseBit / cellBit: 8 columns per weight
    "quant.input_encoding": "offset",  # numBitInput = 8 one-bit read pulses per vector
    "adc.step_rule": "pow2",        # ShiftAdd adds the ADC codes: no multiplier per conversion
}
"""neurosim_rram as Table VII configures it: 128x128 sub-arrays, 1-bit cells, 8-bit weights
and inputs are the file's own values; `chip.tiles` is sized by `table_vii_tiles`."""


def table_vii_target():
    """neurosim_rram with TABLE_VII_OVERRIDES and a chip of `table_vii_tiles` tiles."""
    from farc.targets import load_target

    target = load_target("neurosim_rram").with_overrides(**TABLE_VII_OVERRIDES)
    return target.with_overrides(**{"chip.tiles": table_vii_tiles(target)})


def table_vii_tiles(target) -> int:
    """Tiles that hold VGG-8 with NeuroSim's duplication (`SPEEDUP`) and nothing more:
    NeuroSim sizes its chip to the network, so farc's chip is given just the crossbars the
    duplicated network takes on `target`'s crossbars (8 columns per weight), and
    `--replicate` then places exactly NeuroSim's copies (the next replica of the bottleneck
    does not fit)."""
    from farc.targets.mvm import Geometry

    shapes = [(9 * c_in, c_out) for _, c_in, c_out in LAYERS] + list(FCS)
    need = sum(Geometry.for_matrix(target, k, n).crossbars * s
               for (k, n), s in zip(shapes, SPEEDUP, strict=True))
    per_tile = target.chip.imas_per_tile * target.chip.crossbars_per_ima
    return math.ceil(need / per_tile)


def neurosim_ops() -> int:
    """NeuroSim's operation count per image (main.cpp `numComputation`)."""
    conv = sum(2 * h * h * c_in * 9 * c_out for h, c_in, c_out in LAYERS)
    return conv + sum(2 * i * o for i, o in FCS)


def vgg8(seed: int = 0):
    """NeuroSim's VGG-8 in torch (farc.models.zoo), seeded random weights."""
    import torch

    from farc.models.zoo import vgg8 as network

    torch.manual_seed(seed)
    return network().eval()


@dataclass
class Figures:
    """farc's chip figures for one image of VGG-8."""

    area_mm2: float
    """Area the program occupies (crossbars, ADCs, DACs, IMA and tile periphery)."""
    latency_us: float
    """Critical path of one image."""
    interval_us: float
    """Steady-state time between images (the pipelined bottleneck layer)."""
    energy_uj: float
    """Dynamic energy per image."""
    tops: float
    """NeuroSim's ops per image / interval."""
    tops_per_w: float
    """NeuroSim's ops per image / (energy x zeta)."""
    energy_by: dict[str, float]
    """Energy per image by component, pJ."""
    area_by: dict[str, float]
    """Area by component, mm^2."""
    busy_us: dict[str, float]
    """Each resource's busy time per image (the throughput model's occupancy)."""
    replicas: dict[str, int]


def compile_vgg8(workdir: Path):
    """Export VGG-8 and compile it for neurosim_rram as Table VII configures it, with
    NeuroSim's duplication (`--replicate` on a chip of `table_vii_tiles`)."""
    import torch

    from farc.compiler.driver import CompileOptions, compile_checkpoint

    path = workdir / "vgg8.pt2"
    torch.export.save(torch.export.export(vgg8(), (torch.zeros(1, 3, 32, 32),)), path)
    target = table_vii_target()
    calib = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    opts = CompileOptions(calib_images=calib, calib_samples=2, replicate=True)
    return compile_checkpoint(path, target, opts), target


def figures(program, target) -> Figures:
    """farc's cost model on the compiled program, in Table VII's units."""
    from farc.targets.cost import cost_program

    r = cost_program(program, target)
    energy = sum(r.energy_pj.values())
    ops = neurosim_ops()
    return Figures(area_mm2=sum(r.area_mm2.values()), latency_us=r.latency_ns / 1e3,
                   interval_us=r.throughput.interval_ns / 1e3, energy_uj=energy / 1e6,
                   tops=ops / r.throughput.interval_ns / 1e3,
                   tops_per_w=ops / (energy * ZETA), energy_by=dict(r.energy_pj),
                   area_by=dict(r.area_mm2),
                   busy_us={k: v / 1e3 for k, v in r.throughput.occupancy_ns.items()},
                   replicas={lay["name"]: lay.get("replicas", 1)
                             for lay in program.manifest["layers"]})


def table(f: Figures) -> list[tuple[str, ...]]:
    """farc beside both RRAM rows of Table VII (farc has no partial-parallel read: it reads
    all 128 rows of a crossbar at once, NeuroSim's numRowParallel = 128)."""
    rows = [("farc (all 128 rows)", f"{f.area_mm2:.2f}", f"{f.tops:.2f}", f"{f.tops_per_w:.2f}")]
    for par, (area, tops, tpw) in TABLE_VII.items():
        rows.append((f"NeuroSim, parallel read {par}", f"{area:.2f}", f"{tops:.2f}",
                     f"{tpw:.2f}"))
        rows.append((f"farc / NeuroSim ({par})", f"{f.area_mm2 / area:.3f}",
                     f"{f.tops / tops:.2f}", f"{f.tops_per_w / tpw:.2f}"))
    return rows


def run(quick: bool, command: str) -> Section:
    """The `python -m bench` entry (suite 'vgg8')."""
    section = main()
    section.command(f"{command} --only vgg8")
    return section


def main() -> Section:
    pin_threads(1)
    section = Section("VGG-8 on neurosim_rram beside NeuroSim's Table VII")
    section.add(__doc__.split("\n\nRun:")[0])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        program, target = compile_vgg8(Path(tmp))
    f = figures(program, target)
    section.add(f"Compiled in {time.perf_counter() - t0:.0f} s; {target.chip.tiles} tiles; "
                f"replicas {f.replicas}; NeuroSim ops per image {neurosim_ops():,}.")
    section.table(["", "area (mm^2)", "TOPS", "TOPS/W"], table(f))
    section.add(f"Latency of one image {f.latency_us:.1f} us, interval {f.interval_us:.2f} us, "
                f"energy {f.energy_uj:.2f} uJ per image (before zeta).")
    section.table(["component", "energy (uJ)"],
                  [(k, f"{v / 1e6:.3f}") for k, v in f.energy_by.items()])
    section.table(["component", "area (mm^2)"], [(k, f"{v:.3f}") for k, v in f.area_by.items()])
    section.table(["resource", "busy per image (us)"],
                  [(k, f"{v:.3f}") for k, v in f.busy_us.items()])
    return section


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    print(main().markdown())
