"""Backbone adapters for the segmentation heads: a registry backbone -> named feature maps.

A :class:`Backbone` returns ``{tap_name: NCHW map}`` (the dict torchvision's segmentation heads
read: ``out``/``aux`` for DeepLabv3, ``low``/``high`` for LR-ASPP) and records each tap's
channels and reduction. A tap is a feature level of the backbone (``feature_info`` index,
negatives from the end); two kinds of backbone are adapted:

- timm's mobile CNNs (MobileNetV1/V2/V3, MnasNet, EfficientNet-Lite; built by timm): timm's
  own ``features_only`` network with timm's ``output_stride`` (stride turned into dilation),
  run block by block so a tap can also sit inside a stage (torchvision's MobileNetV3 taps).
- edgevision's own families: ``create_model(bb, features_only=True, output_stride=...)``.

Output stride: 8, 16 or 32. Families whose architecture cannot trade stride for dilation
(:data:`FIXED_STRIDE`) run at their native stride 32 and the heads interpolate; asking them
for another stride explicitly is a one-line ValueError.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
from timm.models._features import FeatureInfo
from timm.models.efficientnet import EfficientNet

from edgevision.models.base import EdgeModel, FeatureNet
from edgevision.registry import model_info

OUTPUT_STRIDES = (8, 16, 32)
# Families built by timm (edgevision.models._mobile_cnn): timm's features network takes output_stride.
_TIMM_MODULE = "edgevision.models._mobile_cnn"
# Why a family has no output-stride control (its last stages cannot become dilated).
FIXED_STRIDE = {
    "edgevit": "EdgeViT downsamples with non-overlapping patch convs and global sparse attention",
    "efficientformer": "EfficientFormer's pooling mixers and fixed 7x7 attention-bias grid",
    "moat": "MOAT's attention stages use relative-position biases fixed to their grid",
    "nasnet": "NASNet's reduction cells downsample with strided pooling branches",
}


def check_output_stride(output_stride) -> None:
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}; got {output_stride!r}")


def supports_output_stride(backbone: str) -> bool:
    return model_info(backbone).family not in FIXED_STRIDE


def resolve_output_stride(backbone: str, output_stride: int | None, preferred: int) -> int:
    """The stride to build: the user's (checked against the family), else the head's preferred
    stride where the family allows dilation, else the native 32."""
    if output_stride is None:
        return preferred if supports_output_stride(backbone) else 32
    check_output_stride(output_stride)
    family = model_info(backbone).family
    if output_stride != 32 and family in FIXED_STRIDE:
        raise ValueError(f"{backbone}: output_stride={output_stride} is not available ({FIXED_STRIDE[family]}); "
                         f"use output_stride=32 (the heads interpolate)")
    return output_stride


class Backbone(nn.Module):
    """Named feature taps of a backbone. ``channels[name]``, ``reductions[name]``,
    ``min_input_size``, ``input_multiple`` and ``output_stride`` describe them."""

    channels: dict[str, int]
    reductions: dict[str, int]
    min_input_size: int
    input_multiple: int = 1
    output_stride: int


class TimmBackbone(Backbone):
    """A timm EfficientNet/MobileNet ``features_only`` network, run block by block.

    taps: name -> (stage, block) where block None = the stage's last block.
    """

    def __init__(self, net: nn.Module, taps: dict[str, tuple[int, int | None]], output_stride: int,
                 channels: dict[str, int], reductions: dict[str, int]):
        super().__init__()
        for name, child in net.named_children():  # conv_stem, bn1, [act1,] blocks: timm's keys
            setattr(self, name, child)
            if name == "blocks":  # a classifier's head (conv_head, classifier) is not taken
                break
        self.taps = {k: (s, len(net.blocks[s]) - 1 if b is None else b) for k, (s, b) in taps.items()}
        self.last_stage = max(s for s, _ in self.taps.values())
        self.output_stride = output_stride
        self.min_input_size = 1
        self.channels, self.reductions = dict(channels), dict(reductions)

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for name, child in self.named_children():
            if name == "blocks":
                break
            x = child(x)
        out = {}
        for s, stage in enumerate(self.blocks):
            if s > self.last_stage:
                break
            for b, block in enumerate(stage):
                x = block(x)
                for k, pos in self.taps.items():
                    if pos == (s, b):
                        out[k] = x
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(x)


def dilate_stage_heads(blocks: nn.Sequential) -> None:
    """torchvision's dilated MobileNetV3: every block of a dilated stage, its first included, uses
    the stage's dilation (timm, like DeepLab, keeps the previous dilation in the first block)."""
    for stage in blocks:
        if len(stage) < 2:
            continue
        first, second = getattr(stage[0], "conv_dw", None), getattr(stage[1], "conv_dw", None)
        if first is None or second is None or first.stride != (1, 1) or first.dilation == second.dilation:
            continue
        k, d = first.kernel_size[0], second.dilation[0]
        first.dilation, first.padding = (d, d), (d * (k - 1) // 2,) * 2


class EdgeBackbone(Backbone):
    """An edgevision family's FeatureNet; taps are feature levels."""

    def __init__(self, net: nn.Module, taps: dict[str, int], output_stride: int):
        super().__init__()
        self.body = net
        self.tap_names = list(taps)
        self.tap_pos = [list(net.out_indices).index(taps[k]) for k in self.tap_names]
        self.output_stride = output_stride
        self.min_input_size = getattr(net.model, "min_input_size", 32)
        self.input_multiple = getattr(net.model, "input_multiple", 1)  # MOAT: multiples of 32
        info = net.model.feature_info
        self.channels = {k: info[taps[k]]["num_chs"] for k in self.tap_names}
        self.reductions = {k: info[taps[k]]["reduction"] for k in self.tap_names}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.body(x)
        return {k: maps[i] for k, i in zip(self.tap_names, self.tap_pos)}


def _level(reductions: list[int], tap: int | str) -> int:
    """A tap as a level index: an int (negatives from the end) or "r8" = the first level whose
    reduction reaches 8 (with dilation, deeper levels share that reduction; the first is the
    backbone's own stride-8 level)."""
    if isinstance(tap, str):
        want = int(tap[1:])
        return next((i for i, r in enumerate(reductions) if r >= want), len(reductions) - 1)
    return tap + len(reductions) if tap < 0 else tap


def build_backbone(backbone: str, taps: dict[str, int | str], output_stride: int, in_chans: int = 3,
                   drop_path_rate: float = 0.0, torchvision_taps: bool = False) -> Backbone:
    """Backbone ``backbone`` with ``taps`` (name -> feature level, negatives from the end).

    torchvision_taps (MobileNetV3 only): tap a level at the first block of its stage, as
    torchvision's segmentation models do ("C2" = the first stride-8 block), and dilate the first
    block of a dilated stage too (torchvision's ``dilated=True``).
    """
    check_output_stride(output_stride)
    info = model_info(backbone)
    if info.builder.__module__ == _TIMM_MODULE:
        net = timm.create_model(backbone, pretrained=False, features_only=True, output_stride=output_stride,
                                in_chans=in_chans, drop_path_rate=drop_path_rate)
        return _timm_backbone(net, net.feature_info, taps, output_stride, torchvision_taps)
    from edgevision.factory import create_model

    extra = {} if output_stride == 32 else {"output_stride": output_stride}
    net = create_model(backbone, in_chans=in_chans, drop_path_rate=drop_path_rate, **extra)
    if isinstance(net, EfficientNet):
        # a network edgevision builds from timm's EfficientNet class (secure_mobilenetv1_100):
        # its stem and blocks, tapped as timm's own (timm's feature wrapper renames the blocks)
        fi = FeatureInfo(net.feature_info, tuple(range(len(net.feature_info))))
        return _timm_backbone(net, fi, taps, output_stride, torchvision_taps)
    if not isinstance(net, EdgeModel):
        raise ValueError(f"{backbone!r} ({type(net).__name__}) is not a backbone the segmentation heads can tap")
    net = FeatureNet(net)  # what create_model(features_only=True) gives, from the network just built
    reductions = net.feature_info.reduction()
    return EdgeBackbone(net, {k: _level(reductions, t) for k, t in taps.items()}, output_stride)


def _timm_backbone(net: nn.Module, fi, taps: dict[str, int | str], output_stride: int,
                   torchvision_taps: bool) -> TimmBackbone:
    """A TimmBackbone over a timm EfficientNet-class network whose feature info is ``fi``."""
    modules, reductions, channels = fi.module_name(), fi.reduction(), fi.channels()  # 'blocks.N' per level
    pos, levels = {}, {k: _level(reductions, t) for k, t in taps.items()}
    for k, level in levels.items():
        # a stage's blocks share its width and stride: the first block has the level's channels
        first = torchvision_taps and level != len(modules) - 1
        pos[k] = (int(modules[level].split(".")[1]), 0 if first else None)
    if torchvision_taps:
        dilate_stage_heads(net.blocks)
    return TimmBackbone(net, pos, output_stride, {k: channels[i] for k, i in levels.items()},
                        {k: reductions[i] for k, i in levels.items()})
