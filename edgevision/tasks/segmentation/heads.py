"""Segmentation heads: torchvision's where it has them, the missing ones written here.

Reused from ``torchvision.models.segmentation``: ``DeepLabHead`` and ``ASPP`` (DeepLabv3),
``LRASPPHead`` (MobileNetV3's LR-ASPP), ``FCNHead`` (the auxiliary head).
Written here, as small compositions of the same parts:
- :func:`mmseg_aspp_head`: mmsegmentation's ASPPHead, the head of the official EMO DeepLabv3
  configs: torchvision's ASPP whose 1x1 projection is replaced by mmseg's 3x3 "bottleneck"
  ConvBNReLU, then dropout 0.1 and a 1x1 classifier (the branches are the same as torchvision's:
  1x1, three dilated 3x3, image pooling; only their concatenation order differs).
- :func:`mobile_deeplab_head`: the MobileNetV2 paper's reduced DeepLabv3 ("Mobile DeepLabv3"):
  ASPP without atrous branches, i.e. torchvision's ASPP with no rates = image pooling + 1x1
  branch, 1x1 projection, then the 1x1 classifier.
- :class:`PSPHead`: PSPNet's pyramid pooling module (bins 1/2/3/6) as mmsegmentation's PSPHead.
- :func:`fcn_aux_head`: mmsegmentation's one-conv FCNHead (3x3 conv to ``channels``), the
  auxiliary head of the official EMO configs (torchvision's FCNHead uses in_channels // 4).
All ConvBNReLU blocks are conv without bias -> BatchNorm -> ReLU, as in both libraries.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead  # noqa: F401  (re-exported)
from torchvision.models.segmentation.fcn import FCNHead  # noqa: F401
from torchvision.models.segmentation.lraspp import LRASPPHead  # noqa: F401


def conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def mmseg_aspp_head(in_channels: int, num_classes: int, channels: int = 256,
                    rates: tuple[int, ...] = (12, 24, 36), dropout: float = 0.1) -> nn.Sequential:
    """mmseg ASPPHead (dilations 1, 12, 24, 36 + image pooling; 3x3 bottleneck) on torchvision's ASPP."""
    aspp = ASPP(in_channels, list(rates), channels)
    aspp.project = conv_bn_relu(channels * len(aspp.convs), channels, 3)
    return nn.Sequential(aspp, nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))


def mobile_deeplab_head(in_channels: int, num_classes: int, channels: int = 256) -> nn.Sequential:
    """Mobile DeepLabv3 (MobileNetV2 paper, Sec. 6.3): image pooling + 1x1 branch, 1x1 projection
    (+ BN, ReLU, dropout), 1x1 classifier."""
    return nn.Sequential(ASPP(in_channels, [], channels), nn.Conv2d(channels, num_classes, 1))


def fcn_aux_head(in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> nn.Sequential:
    """mmseg FCNHead(num_convs=1, concat_input=False): 3x3 ConvBNReLU -> dropout -> 1x1 classifier."""
    return nn.Sequential(*conv_bn_relu(in_channels, channels, 3), nn.Dropout(dropout),
                         nn.Conv2d(channels, num_classes, 1))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: per bin size b, adaptive average pooling to b x b and a 1x1
    ConvBNReLU, upsampled (bilinear, align_corners=False) to the input map and concatenated after it."""

    def __init__(self, in_channels: int, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(in_channels, channels)) for b in self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


class PSPHead(nn.Sequential):
    """mmseg PSPHead: pyramid pooling -> 3x3 ConvBNReLU bottleneck -> dropout -> 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256,
                 bins: tuple[int, ...] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(
            PyramidPooling(in_channels, channels, bins),
            *conv_bn_relu(in_channels + len(bins) * channels, channels, 3),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
