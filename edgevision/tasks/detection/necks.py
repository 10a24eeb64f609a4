"""Backbone adapters and the necks torchvision lacks, for any ``features_only`` backbone.

- :class:`SSDLiteFeatures`: the mmdet/EMO SSDLite neck (mmdet ``SSDNeck(use_depthwise=True)``):
  the backbone's stride-16 and stride-32 maps, then extra layers that each halve the map
  (1x1 conv to C/2, 3x3 depthwise stride 2, 1x1 conv to C; BN + ReLU6). That extra block is
  torchvision's own (``ssdlite._extra_block``, the same layers torchvision's MobileNet extractor
  appends); what torchvision lacks is the generic extractor around an arbitrary backbone.
- :class:`FPNFeatures`: torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on the
  stride 8/16/32 maps with P6/P7 from C5 (mmdet ``FPN(start_level=1, add_extra_convs='on_input',
  num_outs=5)``, the EMO RetinaNet neck).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
from torchvision.models.detection.ssdlite import _extra_block, _normal_init
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

# BatchNorm of the SSDLite neck and heads (torchvision's ssdlite320 and the EMO/mmdet configs).
SSDLITE_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def levels_at(feature_info, strides: tuple[int, ...]) -> list[int]:
    """Indices of the last feature level at each stride (ValueError if the backbone lacks one)."""
    red = list(feature_info.reduction())
    out = []
    for s in strides:
        hits = [i for i, r in enumerate(red) if r == s]
        if not hits:
            raise ValueError(f"the backbone has no stride-{s} feature map (strides {red})")
        out.append(hits[-1])
    return out


class SSDLiteFeatures(nn.Module):
    """Backbone maps + SSDLite extra layers -> OrderedDict of the maps the SSD head reads."""

    def __init__(self, body: nn.Module, in_channels: list[int], extra_channels=(512, 256, 256, 128),
                 norm_layer=SSDLITE_NORM):
        super().__init__()
        self.body = body
        chans = [in_channels[-1], *extra_channels]
        self.extra = nn.ModuleList(_extra_block(a, b, norm_layer) for a, b in zip(chans[:-1], chans[1:]))
        _normal_init(self.extra)  # N(0, 0.03): torchvision's, and mmdet's TruncNormal(std=0.03)
        self.out_channels = [*in_channels, *extra_channels]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        maps = list(self.body(x))
        x = maps[-1]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class LastLevelP6P7OnInput(LastLevelP6P7):
    """P6 = conv(C5), P7 = conv(P6): mmdet's FPN(add_extra_convs='on_input') with its default
    relu_before_extra_convs=False (torchvision's LastLevelP6P7 puts a ReLU before P7)."""

    def forward(self, p, c, names):
        p6 = self.p6(p[-1] if self.use_P5 else c[-1])
        p7 = self.p7(p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


class FPNFeatures(nn.Module):
    """Backbone maps (strides 8, 16, 32) -> torchvision FPN -> P3..P7 (OrderedDict)."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels,
                                         extra_blocks=LastLevelP6P7OnInput(in_channels[-1], out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
