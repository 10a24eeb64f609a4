"""Bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, empirical variant).

Rounding a layer's weights to int8 adds an error eps = Q(W) - W whose effect on the output is
not zero-mean: E[y_q - y] = eps * E[x] per output channel, a shift that the following layers
carry and amplify (largest for depthwise convs, whose few weights per channel round
coarsely). Its expectation is linear in E[x], so it can be subtracted from the bias ahead of
time. E[x] comes from calibration images run through the fp32 model (inputs of every conv
and linear); the expected shift is computed by running the *weight error* conv over the
mean input map, so zero padding at the borders is accounted for exactly.

``Q`` mimics ONNX Runtime's weight quantization (symmetric int8, per output channel or per
tensor, scale = max|W| / 127, or / 64 with ``reduce_range``), so the corrected fp32 bias
cancels the error of the exact int8 weights ORT will write.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def fake_quantize_weight(w: torch.Tensor, per_channel: bool = True, reduce_range: bool = False,
                         weight_type: str = "int8") -> torch.Tensor:
    """ONNX Runtime's symmetric weight rounding (edgevision asks ORT for symmetric weights).
    int8: scale = max|w| / 127 (/ 64 reduced), zero point 0. uint8: scale = 2 max|w| / 255
    (/ 127 reduced), zero point 128 (64), codes clipped to uint8's [0, 255] only (ORT does not
    clip reduced codes to 127: +max|w| lands on 128 there)."""
    from edgevision.export.quantize import WEIGHT_TYPES

    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}")
    shape = (-1, *([1] * (w.dim() - 1)))
    if weight_type == "uint8":
        qmax = 127.0 if reduce_range else 255.0
        scale = int8_scale(w, per_channel, qmax / 2).view(shape)  # 2 max|w| / qmax
        zero = torch.round(torch.tensor(qmax / 2))  # half to even, as numpy rounds in ORT: 128, 64
        return (torch.clamp(torch.round(w / scale) + zero, 0, 255) - zero) * scale
    qmax = 64.0 if reduce_range else 127.0
    scale = int8_scale(w, per_channel, qmax).view(shape)
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def int8_scale(w: torch.Tensor, per_channel: bool, qmax: float) -> torch.Tensor:
    """ORT's symmetric int8 weight scale, one per output channel (repeated when per tensor):
    max|w| / qmax."""
    absmax = w.abs().flatten(1).amax(1) if per_channel else w.abs().max().expand(w.shape[0])
    return (absmax / qmax).clamp_min(torch.finfo(w.dtype).tiny)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}


@torch.no_grad()
def input_means(model: nn.Module, images: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    """Mean input of every Conv2d/Linear over ``images``: (C, H, W) maps for convs, (C,) for linears."""
    layers = _layers(model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(mod, args):
            x = args[0].detach().float()
            # convs: mean map over the batch; linears: mean over every row (any leading dims)
            x = x if isinstance(mod, nn.Conv2d) else x.reshape(-1, x.shape[-1])
            sums[name] = sums[name] + x.sum(0) if name in sums else x.sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        model.eval()
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    return {n: s / counts[n] for n, s in sums.items()}


@torch.no_grad()
def correct_bias(model: nn.Module, images: torch.Tensor, per_channel: bool = True, reduce_range: bool = False,
                 inplace: bool = False, skip: set[str] | None = None,
                 weight_type: str = "int8") -> tuple[nn.Module, dict[str, float]]:
    """Subtract the expected int8 weight-rounding shift from every Conv2d/Linear bias.

    ``images`` are calibration images (never the evaluation set). Returns (model, {layer:
    max |correction|}). Layers without a bias get one. ``skip``: layer names left alone
    (e.g. the ones mixed precision keeps in fp32).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not len(images):
        raise ValueError("bias correction needs calibration images as a non-empty (N, C, H, W) tensor")
    if not inplace:
        model = copy.deepcopy(model)
    means = input_means(model, images)
    done = {}
    for name, mod in _layers(model).items():
        if name not in means or (skip and name in skip):
            continue
        eps = fake_quantize_weight(mod.weight, per_channel, reduce_range, weight_type) - mod.weight
        if isinstance(mod, nn.Conv2d):
            # E[conv_eps(x)] = conv_eps(E[x]) at each position; averaged over positions.
            shift = F.conv2d(means[name][None], eps, None, mod.stride, mod.padding, mod.dilation,
                             mod.groups).mean((0, 2, 3))
        else:
            shift = eps @ means[name]
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype))
        mod.bias.sub_(shift.to(mod.bias.dtype))
        done[name] = float(shift.abs().max())
    return model, done
