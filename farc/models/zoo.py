"""Reference architectures the IMC peers benchmark on, as plain torch modules: what users
bring, used by the zoo tests, the compile benchmark and the NeuroSim cost anchor.

`vgg8` is DNN+NeuroSim's VGG-8 (Inference_pytorch/NeuroSIM/NetWork_VGG8.csv of
DNN_NeuroSim_V1.4): CIFAR-10's 32x32x3 input, six 3x3 convolutions (padding 1) of 128, 128,
256, 256, 512, 512 channels with a 2x2 max pooling after every second one, then fully
connected 8192 -> 1024 -> 10, ReLU after every layer but the last."""

from __future__ import annotations

from torch import nn


def vgg8(width: int = 128, fc: int = 1024, size: int = 32, classes: int = 10) -> nn.Sequential:
    """VGG-8 with NeuroSim's widths by default; `width` (first convolutions' channels) and
    `fc` (hidden classifier units) shrink it for fast tests, `size` sets the square image
    (a multiple of 8)."""
    if size % 8:
        raise ValueError(f"vgg8: image size {size} is not a multiple of 8")
    layers: list[nn.Module] = []
    c_in = 3
    for c in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                   nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * (size // 8) ** 2, fc), nn.ReLU(),
               nn.Linear(fc, classes)]
    return nn.Sequential(*layers)
