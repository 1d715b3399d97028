"""What decides whether two training runs give bit-identical weights.

Same seed, same data and same code give the same weights only on the same *kernel path*:
PyTorch picks its CPU kernels (ATen's vectorised loops, MKL's GEMMs, oneDNN's primitives)
by the instruction set it detects at start-up, and their floating-point summation orders
differ (AVX-512 vs AVX2 moved the digits teacher's test accuracy by 2 points, docs/far.md).
Thread counts split reductions differently too, and library versions change kernels.
`environment()` records all of this in every training checkpoint's provenance;
`kernel_path()` is the short key two runs must share to be compared bit for bit."""

from __future__ import annotations

import os
import platform
import re

import torch

# Environment variables that change which kernels run or how work is split.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
              "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "CUBLAS_WORKSPACE_CONFIG")


def environment(device: torch.device | str | None = None) -> dict:
    """CPU model and capability, threads, library versions and kernel-selecting variables."""
    import numpy

    from farc import __version__

    cfg = torch.__config__.show()
    env = {
        "kernel_path": kernel_path(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "farc": __version__,
        "mkl": _grep(r"Math Kernel Library Version (\S+)", cfg),
        "onednn": _grep(r"MKL-DNN v(\S+)", cfg),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(dev))
    return env


def kernel_path(device: torch.device | str | None = None) -> str:
    """A short key, e.g. 'cpu AVX2, 1 thread, torch 2.13.0': runs that differ in it may
    differ in the last bits of every weight (and then in a few test images)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n = torch.get_num_threads()
    where = (f"cuda {torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
             else f"cpu {torch.backends.cpu.get_cpu_capability()}")
    forced = [f"{k}={os.environ[k]}" for k in KERNEL_ENV[:5] if k in os.environ]
    return ", ".join([where, f"{n} thread{'s' * (n != 1)}", f"torch {torch.__version__}",
                      *forced])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _grep(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None
