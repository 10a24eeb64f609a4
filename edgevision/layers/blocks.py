"""Mobile CNN blocks: squeeze-excite, depthwise-separable, inverted residual (MBConv).

Naming of children (so checkpoints are readable): ``expand`` (1x1 expansion), ``dw``
(depthwise kxk), ``se`` (squeeze-excite), ``pw`` / ``project`` (1x1 pointwise / linear
projection). Every conv is a :class:`ConvNormAct` (``.conv``, ``.bn``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath

from edgevision.layers.conv_bn_act import ConvNormAct, get_act


class SqueezeExcite(nn.Module):
    """x * gate(expand(act(reduce(mean_hw(x))))), with 1x1 convs (with bias) as the FC layers.

    rd_chs (the bottleneck width) is computed by the caller, since families round it
    differently (MobileNetV3: multiple of 8 of the expanded width; MnasNet: 1/4 of the
    block input). gate: "sigmoid" (MnasNet, EfficientNet) or "hsigmoid" (MobileNetV3).
    """

    def __init__(self, chs: int, rd_chs: int, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = get_act(act)
        self.expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = get_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


def _se_or_identity(chs: int, se_chs: int, se_act: str, se_gate: str) -> nn.Module:
    return SqueezeExcite(chs, se_chs, se_act, se_gate) if se_chs > 0 else nn.Identity()


class _ResidualBlock(nn.Module):
    """Shared residual logic: y = x + drop_path(f(x)) when stride 1 and widths match."""

    def _init_residual(self, in_chs, out_chs, stride, skip, drop_path):
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(y) if self.has_skip else y


class DepthwiseSeparable(_ResidualBlock):
    """Depthwise kxk conv-BN-act -> optional SE -> pointwise 1x1 conv-BN(-act).

    pw_act=True is MobileNetV1 (activation after the pointwise conv, never a residual:
    pass skip=False); pw_act=False is the linear-output first block of MobileNetV2/V3,
    MnasNet and EfficientNet, which has a residual when stride is 1 and widths match.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu",
        se_chs: int = 0,
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        pw_act: bool = False,
        skip: bool = True,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.dw = ConvNormAct(in_chs, in_chs, kernel_size, stride, groups=in_chs, act=act, bn_eps=bn_eps)
        self.se = _se_or_identity(in_chs, se_chs, se_act, se_gate)
        self.pw = ConvNormAct(in_chs, out_chs, 1, act=act if pw_act else None, bn_eps=bn_eps)
        self._init_residual(in_chs, out_chs, stride, skip, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x, self.pw(self.se(self.dw(x))))


class InvertedResidual(_ResidualBlock):
    """MobileNetV2 inverted residual / EfficientNet MBConv.

    1x1 expand to mid_chs (conv-BN-act) -> depthwise kxk (conv-BN-act, carries the stride)
    -> optional SE on mid_chs -> 1x1 linear projection (conv-BN, no activation) -> residual
    when stride is 1 and in_chs == out_chs. mid_chs is given explicitly (callers round
    in_chs * expansion their own way).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: str = "relu",
        se_chs: int = 0,
        se_act: str = "relu",
        se_gate: str = "sigmoid",
        skip: bool = True,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.expand = ConvNormAct(in_chs, mid_chs, 1, act=act, bn_eps=bn_eps)
        self.dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride, groups=mid_chs, act=act, bn_eps=bn_eps)
        self.se = _se_or_identity(mid_chs, se_chs, se_act, se_gate)
        self.project = ConvNormAct(mid_chs, out_chs, 1, act=None, bn_eps=bn_eps)
        self._init_residual(in_chs, out_chs, stride, skip, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x, self.project(self.se(self.dw(self.expand(x)))))
