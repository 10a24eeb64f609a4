"""Process-wide settings of a run: seeds, determinism, mixed precision, DataLoader workers."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from edgevision.training.data import sample_seed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return sample_seed(seed, 1_000_003 * (epoch + 1), rank) % 2**32


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """None (fp32), or the autocast dtype: bf16 on CPU, bf16/fp16 on CUDA."""
    amp = (amp or "none").lower()
    if amp in ("none", "no", "off", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16")
        return torch.float16
    raise ValueError(f"--amp must be none, auto, bf16 or fp16; got {amp!r}")


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C/SIGTERM sent to the whole process group (a terminal,
    a job scheduler): the main process checkpoints and shuts them down; a worker that died on
    the signal would crash the run instead."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
