"""Write DNN+NeuroSim V1.4 trace files for the seeded VGG-8 of bench_neurosim_vgg8, so that
the NeuroSim runs docs/targets.md quotes ("VGG-8 against NeuroSim Table VII") can be
repeated. NeuroSim itself is not part of farc: build it from github.com/neurosim/
DNN_NeuroSim_V1.4 (Inference_pytorch/NeuroSIM, `make`) with Param.cpp's `memcelltype = 2`
(RRAM) and `levelOutput = 16` (4-bit ADC), then run

    ./main NetWork_VGG8.csv 8 8 128 P $(python -m bench.neurosim_vgg8_traces DIR)

for P = 32 and 64 (about 10 minutes each here). The formats are those of NeuroSim's
`utee/hook.py`: per layer a weight file [K x C_out] scaled into [-1, 1] and an input file
[K x vectors * 8] of bits, each value two's complement, most significant bit first.

Run: python -m bench.neurosim_vgg8_traces DIR   (prints main's trace arguments)"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BITS = 8
"""NeuroSim's numBitInput (and the trace's bits per value)."""


def _bits(x: np.ndarray) -> np.ndarray:
    """[K, P] floats in [-1, 1) -> [K, P * 8] bits, two's complement, MSB first."""
    q = np.clip(np.round(x * 2 ** (BITS - 1)), -2 ** (BITS - 1), 2 ** (BITS - 1) - 1)
    u = np.where(q < 0, q + 2 ** BITS, q).astype(np.int64)
    out = np.zeros((x.shape[0], x.shape[1] * BITS), dtype=np.int8)
    for b in range(BITS):
        out[:, b::BITS] = (u >> (BITS - 1 - b)) & 1
    return out


def _write(folder: Path, n: int, weight: np.ndarray, cols: np.ndarray) -> str:
    """One layer's weight [K, C_out] and input columns [K, P]; returns main's two args."""
    w, x = folder / f"weight{n}.csv", folder / f"input{n}.csv"
    np.savetxt(w, weight / np.abs(weight).max(), delimiter=",", fmt="%8.5f")
    np.savetxt(x, _bits(cols / max(np.abs(cols).max(), 1e-9) * 0.999), delimiter=",",
               fmt="%d")
    return f"{w} {x}"


def write_traces(folder: Path) -> list[str]:
    """Trace every crossbar layer of VGG-8 on one seeded N(0, 1) image."""
    import torch
    import torch.nn.functional as F

    from bench.bench_neurosim_vgg8 import vgg8

    folder.mkdir(parents=True, exist_ok=True)
    model = vgg8()
    x = torch.randn(1, 3, 32, 32)  # the draw after vgg8()'s seeded initialisation
    args = []
    with torch.no_grad():
        for mod in model:
            if isinstance(mod, torch.nn.Conv2d):
                cols = F.unfold(x, 3, padding=1)[0].numpy()
                w = mod.weight.reshape(mod.weight.shape[0], -1).T.numpy()
                args.append(_write(folder, len(args) + 1, w, cols))
            elif isinstance(mod, torch.nn.Linear):
                args.append(_write(folder, len(args) + 1, mod.weight.T.numpy(), x.T.numpy()))
            x = mod(x)
    return args


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    print(" ".join(write_traces(ap.parse_args().folder)))
