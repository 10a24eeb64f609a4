"""Blocks shared by two or more model families.

- :class:`ConvNormAct`: conv -> BatchNorm -> activation, the unit every mobile CNN is made of.
- :class:`SqueezeExcite`: channel gating from globally pooled features (SE).
- :class:`DepthwiseSeparable`: depthwise conv -> (SE) -> pointwise conv (MobileNetV1 block,
  and the first block of MobileNetV2/V3, MnasNet, EfficientNet).
- :class:`InvertedResidual`: 1x1 expand -> depthwise -> (SE) -> 1x1 project, with a residual
  where shapes allow (MobileNetV2 "inverted residual" = EfficientNet "MBConv").
- :class:`DropPath`: stochastic depth (timm's implementation).
- :func:`make_divisible`, :func:`get_act`: channel rounding and activations by name.
"""

from timm.layers import DropPath

from edgevision.layers.blocks import DepthwiseSeparable, InvertedResidual, SqueezeExcite
from edgevision.layers.conv_bn_act import ConvNormAct, get_act, make_divisible

__all__ = [
    "ConvNormAct",
    "DepthwiseSeparable",
    "DropPath",
    "InvertedResidual",
    "SqueezeExcite",
    "get_act",
    "make_divisible",
]
