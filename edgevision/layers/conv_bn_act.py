"""Conv -> BatchNorm -> activation, channel rounding, activations by name."""

from __future__ import annotations

import torch
import torch.nn as nn

# Activations by the names used in model configs. Hard-sigmoid/swish are the MobileNetV3 ones.
_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def get_act(name: str | None) -> nn.Module:
    """Activation module by name; None or "" gives nn.Identity."""
    if not name:
        return nn.Identity()
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTS)}") from None


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of divisor (TF/MobileNet convention).

    Rounds to the nearest multiple, but never drops more than 10% below value, so small
    width multipliers do not lose too much capacity.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> activation; "same"-style symmetric padding (k // 2).

    Children are named ``conv``, ``bn``, ``act`` so checkpoints read ``<name>.conv.weight``,
    ``<name>.bn.running_var``. ``act=None`` leaves the output linear (projection convs).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)
        self.act = get_act(act)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
