"""torchrun / DistributedDataParallel helpers, so one command runs on 1 or N processes.

`torchrun --nproc-per-node N farc distill ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()`
reads them and joins the process group (nccl when CUDA is there, gloo on CPU). Without them
it returns a world of one and nothing distributed is touched, so the single-process path is
the same code with a world size of 1.

Conventions the training loops rely on:
- every rank seeds identically and DDP broadcasts rank 0's weights at wrap time, so ranks
  start equal;
- data is sharded with DistributedSampler (shuffled by seed + epoch, so a resumed run sees
  the same order);
- only rank 0 prints, draws progress bars and writes files; the others wait at a barrier;
- metrics are sums all-reduced over ranks, then divided, so they cover the whole split."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from farc.errors import ConfigError

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: str | None = None) -> World:
    """Join the process group that torchrun describes in the environment (if any).

    `device` overrides the automatic choice ("cuda" when available, else "cpu")."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if device is not None and device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; expected cpu or cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=size)
    return World(rank, size, local, dev)


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """DDP-wrap `model` for training (identity on one process).

    Build the wrapper after setting requires_grad: DDP syncs exactly the parameters that
    need gradients at wrap time, which is how stage 1 trains only the mixers."""
    if not world.distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sampler(n: int, world: World, shuffle: bool, seed: int) -> DistributedSampler:
    """Indices of this rank's shard of a dataset of `n` items (also used on one process).

    DistributedSampler only needs `len()` of its dataset, so a range stands in for it."""
    return DistributedSampler(range(n), num_replicas=world.size, rank=world.rank,
                              shuffle=shuffle, seed=seed, drop_last=False)


def shard(n: int, world: World) -> torch.Tensor:
    """This rank's fixed evaluation indices: every item exactly once across ranks."""
    return torch.arange(world.rank, n, world.size)


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum of `values` over ranks (float64 so counts stay exact)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def configure_threads(threads: int | None, model: nn.Module) -> int:
    """Set torch's intra-op threads: `threads`, or 'auto' when None.

    Auto is 1 thread for models under a million parameters: their matmuls are too small to
    split, and on a busy machine extra threads spin and can make a step many times slower
    (measured 30x on the shared 2-core box, docs/far.md). Larger models keep torch's
    default."""
    if threads is None:
        small = sum(p.numel() for p in model.parameters()) < 1_000_000
        threads = 1 if small else torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- evaluation
def eval_world() -> World:
    """The world of a sharded evaluation (`farc run` / `farc verify` under torchrun).

    Evaluation is numpy and onnxruntime, so ranks always talk over gloo on the CPU; on one
    process this touches nothing distributed."""
    return setup(device="cpu")


def contiguous_shard(n: int, world: World) -> slice:
    """This rank's block of `n` items. Blocks (not strides) so that concatenating the
    ranks' results in rank order gives back the single-process order."""
    per, extra = divmod(n, world.size)
    lo = world.rank * per + min(world.rank, extra)
    return slice(lo, lo + per + (world.rank < extra))


def gather_arrays(arrays: dict, world: World) -> dict | None:
    """Concatenate every rank's `{name: array}` in rank order, once, on rank 0 (None on the
    other ranks). The arrays travel pickled between our own processes only."""
    if not world.distributed:
        return arrays
    parts: list = [None] * world.size
    dist.all_gather_object(parts, arrays)
    if not world.is_main:
        return None
    import numpy as np

    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def sum_counts(counts: dict, world: World) -> dict | None:
    """Add nested dicts of event counts over ranks, on rank 0 (None elsewhere)."""
    if not world.distributed:
        return counts
    parts: list = [None] * world.size
    dist.all_gather_object(parts, counts)
    return _add_nested(parts) if world.is_main else None


def _add_nested(parts: list) -> dict | int | float:
    if isinstance(parts[0], dict):
        return {k: _add_nested([p.get(k, 0) for p in parts]) for k in parts[0]}
    if isinstance(parts[0], int | float) and not isinstance(parts[0], bool):
        return sum(parts)
    return parts[0]
