"""1-D convolution blocks for sensor windows [B, C, T] (``timm.layers`` has only 2-D ones).

- :class:`ConvBnAct1d`: Conv1d -> BatchNorm1d -> activation (the unit every block below uses);
- :class:`BasicBlock1d`: ResNet's basic block (He et al., 2016) on time: two k-tap convs and an
  identity (or 1x1 projection) shortcut;
- :class:`InvertedResidual1d`: MobileNetV2's inverted residual (Sandler et al., 2018) on time:
  1x1 expansion, depthwise k-tap conv, linear 1x1 projection, residual when shapes match.

Padding is ``k // 2`` with odd kernels so stride 1 keeps the length (``ceil(T / stride)`` with
stride 2), which traces with torch.fx and exports to ONNX at a fixed window.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _check_kernel(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1 (same-length padding); got {kernel_size}")


class ConvBnAct1d(nn.Sequential):
    """Conv1d (no bias: the BatchNorm carries it) -> BatchNorm1d -> activation (None: linear)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
        _check_kernel(kernel_size)
        layers = [nn.Conv1d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
                  nn.BatchNorm1d(out_chs)]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else act())
        super().__init__(*layers)


class BasicBlock1d(nn.Module):
    """ResNet basic block on time: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBnAct1d(in_chs, out_chs, kernel_size, stride)
        self.conv2 = ConvBnAct1d(out_chs, out_chs, kernel_size, 1, act=None)
        # projection shortcut only where the shape changes (ResNet's option B)
        self.shortcut = (nn.Identity() if stride == 1 and in_chs == out_chs
                         else ConvBnAct1d(in_chs, out_chs, 1, stride, act=None))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class InvertedResidual1d(nn.Module):
    """MobileNetV2 block on time: 1x1 expand (ReLU6) -> depthwise k-tap (ReLU6) -> 1x1 project
    (linear), plus the input when stride is 1 and the width is unchanged."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 4.0):
        super().__init__()
        mid = max(1, int(round(in_chs * expand_ratio)))
        self.expand = ConvBnAct1d(in_chs, mid, 1, act=nn.ReLU6) if mid != in_chs else nn.Identity()
        self.dw = ConvBnAct1d(mid, mid, kernel_size, stride, groups=mid, act=nn.ReLU6)
        self.project = ConvBnAct1d(mid, out_chs, 1, act=None)
        self.use_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_residual else y
