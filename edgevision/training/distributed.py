"""torchrun/DDP plumbing: read the launcher's environment, set up the process group, reduce.

Under ``torchrun --nproc-per-node N`` the variables RANK, LOCAL_RANK and WORLD_SIZE are set;
we join a process group (nccl on CUDA, gloo on CPU). Without them, everything is a no-op
and the same code path runs as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when launched by it; pick the backend for the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, local_rank, world, backend)


def pick_device(requested: str | None, info_local_rank: int = 0) -> torch.device:
    """'cuda' when available (one GPU per local rank), else CPU; an explicit choice is checked."""
    if requested in (None, "", "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {requested!r}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps requested but MPS is not available")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        if device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", info_local_rank)))
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over all processes (identity for one process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
