"""Helpers for faithfulness checks, shared by the test suite and ``benchmarks/faithfulness.py``
and usable by anyone checking a port of their own.

- :func:`randomize_norms`: untrained networks make weak parity checks: BN statistics at
  their init (mean 0, var 1) and affines at 1/0 hide eps and statistic mistakes, and deep CNNs
  with untrained weights lose the input on the way (every image then gives the same logits,
  so a comparison only compares biases). This gives BN/LN random affines, re-estimates BN
  statistics on a random batch and sets layer scales to order 1.
- :func:`manifest_state_dict`: an official-format state dict (keys, shapes, dtypes, order)
  from a ``[key, shape, dtype]`` manifest, with distinct random values, so that a converter
  that drops, merges or misplaces a tensor shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

# Parameter names of per-channel layer scales (timm's LayerScale.gamma, EfficientFormer's
# layer_scale_*): at their 1e-5 init the blocks they scale hardly contribute.
_LAYER_SCALE_KEYS = ("gamma", "layer_scale")


def small_side(model: nn.Module, side: int = 64) -> int:
    """``side`` px, or the model's minimum, rounded up to its required multiple."""
    side = max(side, getattr(model, "min_input_size", 32))
    mult = getattr(model, "input_multiple", 1) or 1
    return -(-side // mult) * mult


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0, side: int | None = None,
                    like: torch.Tensor | None = None, layer_scales: bool = False) -> nn.Module:
    """Randomize norms (and zero-initialised weights) so that outputs depend on the input.

    BN affines ~ U(0.5, 1.5) / 0.1 N(0, 1), statistics re-estimated on one random batch of 4
    (shaped like ``like``, or ``side`` x ``side``); LN affines likewise; with ``layer_scales``
    every layer-scale parameter ~ U(0.5, 1.5). Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    for p in model.parameters():
        if p.dim() > 1 and p.abs().max() == 0:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    if layer_scales:
        for name, p in model.named_parameters():
            if any(k in name.rsplit(".", 1)[-1] for k in _LAYER_SCALE_KEYS):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        model.train()
        if like is not None:
            shape = (4, *like.shape[1:])
        else:
            s = side or small_side(model)
            shape = (4, getattr(model, "in_chans", 3), s, s)
        model(torch.randn(shape, generator=g))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def manifest_state_dict(manifest: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict with the manifest's keys, shapes, dtypes and order, random distinct values."""
    entries = json.loads(Path(manifest).read_text())
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype_name in entries:
        dtype = getattr(torch, dtype_name)
        sd[key] = (torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return sd
