"""``ssdlite320_mobilenetv3_large_100``: torchvision's ``ssdlite320_mobilenet_v3_large`` (COCO).

Same network as torchvision's on timm's MobileNetV3 class: the reduced-tail MobileNetV3-Large
(:func:`edgevision.models._mobile_cnn.mobilenetv3_large_reduced_tail`, BN eps 1e-3 and momentum
0.03 as torchvision builds it), the first map taken at the expansion output of the first
stride-32 block (672 channels, stride 16: MobileNetV3 paper section 6.3), the second at the
last 1x1 conv (480), four extra blocks (512, 256, 256, 128), torchvision's SSDLiteHead and
DefaultBoxGenerator (ratios 2/3, scales 0.2..0.95), 320x320, mean/std 0.5, score 0.001, NMS
0.55, 300 detections, 300 candidates.

:func:`convert_torchvision` maps a torchvision state dict (``backbone.features.*``) onto ours
(``backbone.conv_stem/bn1/blocks.*``) by structure; the extra blocks and the head have
torchvision's own classes and keys.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init

from edgevision.models._mobile_cnn import (
    _TORCHVISION_ORDER,
    mobilenetv3_large_reduced_tail,
    pair_in_order,
)
from edgevision.tasks.detection.necks import SSDLITE_NORM
from edgevision.tasks.detection.ssdlite import EdgeSSD, _check_build

C4_STAGE = 5  # timm stage whose first block's expansion is the stride-16 map (torchvision's C4)


class MobileNetV3SSDLiteFeatures(nn.Module):
    """timm MobileNetV3 (stem + blocks, no classifier) split at the C4 expansion, + extra blocks."""

    def __init__(self, net: nn.Module, norm_layer=SSDLITE_NORM):
        super().__init__()
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        last = self.blocks[-1][-1].conv.out_channels
        chans = [last, 512, 256, 256, 128]
        self.extra = nn.ModuleList(_extra_block(a, b, norm_layer) for a, b in zip(chans[:-1], chans[1:]))
        _normal_init(self.extra)
        self.out_channels = [self.blocks[C4_STAGE][0].conv_pw.out_channels, *chans]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks[:C4_STAGE](x)
        b = self.blocks[C4_STAGE][0]  # timm InvertedResidual, stride 2 (no skip)
        c4 = b.bn1(b.conv_pw(x))  # expansion conv + BN + hard-swish
        x = b.bn3(b.conv_pwl(b.se(b.aa(b.bn2(b.conv_dw(c4))))))
        x = self.blocks[C4_STAGE + 1:](self.blocks[C4_STAGE][1:](x))
        maps = [c4, x]
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def _reduced_tail_net(**kwargs) -> nn.Module:
    return mobilenetv3_large_reduced_tail("mobilenetv3_large_100", bn_eps=1e-3, bn_momentum=0.03,
                                          num_classes=0, **kwargs)


def ssdlite320_mobilenetv3_large(num_classes: int = 91, in_chans: int = 3, drop_path_rate: float = 0.0,
                                 **kwargs) -> EdgeSSD:
    """torchvision's ssdlite320_mobilenet_v3_large configuration (module docstring)."""
    _check_build(num_classes, in_chans)
    features = MobileNetV3SSDLiteFeatures(_reduced_tail_net(drop_path_rate=drop_path_rate))
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), num_classes, SSDLITE_NORM)
    defaults = dict(score_thresh=0.001, nms_thresh=0.55, detections_per_img=300, topk_candidates=300,
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return EdgeSSD(features, anchors, (320, 320), num_classes, head=head, **{**defaults, **kwargs})


@functools.lru_cache(maxsize=1)
def _our_backbone_keys() -> tuple[tuple[str, tuple], ...]:
    with torch.device("meta"):
        net = _reduced_tail_net()
    keep = ("conv_stem.", "bn1.", "blocks.")
    return tuple((f"backbone.{k}", tuple(v.shape)) for k, v in net.state_dict().items()
                 if k.startswith(keep) and not k.endswith("num_batches_tracked"))


def convert_torchvision(sd: dict) -> dict:
    """torchvision ``ssdlite320_mobilenet_v3_large`` state dict -> ours (module docstring).

    The backbone tensors are paired in execution order (torchvision's ``features`` numbering
    against timm's registration order); every pair must agree on the role (weight, bias,
    running_mean, running_var) and shape, else CheckpointMismatchError lists the pairs.
    """
    prefix = "backbone.features."
    if prefix + "0.0.0.weight" not in sd:
        raise KeyError("not a torchvision ssdlite320_mobilenet_v3_large state dict")
    src = [prefix + k for k in sorted((k[len(prefix):] for k in sd
                                       if k.startswith(prefix) and not k.endswith("num_batches_tracked")),
                                      key=_TORCHVISION_ORDER)]
    out = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    out.update(pair_in_order(sd, src, _our_backbone_keys(),
                             "torchvision ssdlite320_mobilenet_v3_large -> edgevision"))
    return out
