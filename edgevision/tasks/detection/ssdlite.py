"""SSDLite on any edgevision backbone: torchvision's SSD with the mmdet/EMO SSDLite configuration.

Configuration (the official EMO config ``down-stream-tasks/mmdetection/configs/ssd_emo/
ssdlite_emo_*_pretrain_coco.py``): backbone stages at stride 16 and 32 feed the head directly
(EMO ``out_indices=(3, 4)``), four extra layers (512, 256, 256, 128 channels, stride 2 each,
:class:`~edgevision.tasks.detection.necks.SSDLiteFeatures`), SSDLite heads (3x3 depthwise + BN +
ReLU6, then 1x1 conv; torchvision's :class:`SSDLiteHead`, the same layers as mmdet's
``SSDHead(use_depthwise=True)``) over six maps, six default boxes per location (aspect ratios
2 and 3), box sizes 48, 100, 150, 202, 253, 304 (and 320 for the last sqrt box) at 320 px, i.e.
torchvision's :class:`DefaultBoxGenerator` with those scales over 320; box coder weights
(10, 10, 5, 5) (mmdet stds 0.1/0.2); test: score 0.02, NMS 0.45, 200 detections, 1000
candidates per level. BN eps 1e-3, momentum 0.03. Head init N(0, 0.001) as the config says.

Differences from mmdet kept on purpose: torchvision's default-box centres are (i + 0.5) / map
size (mmdet uses steps 16, 32, 64, 107, 160, 320 px: the same at 320 except 107 vs 106.7), and
default boxes are not clipped (clip=False, as mmdet). Training matches positives with IoU 0.5
and hard negative mining 3:1 (torchvision SSD, as the config).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead

from edgevision.tasks.detection.api import DetectorAPI
from edgevision.tasks.detection.necks import SSDLITE_NORM, SSDLiteFeatures, levels_at

# Default-box sizes of the EMO/mmdet SSDLite at 320 px (min_sizes, then the last max_size).
EMO_SSDLITE_BOX_SIZES = (48, 100, 150, 202, 253, 304, 320)


class EdgeSSD(DetectorAPI, SSD):
    """torchvision's SSD with edgevision's checks and export view (:class:`DetectorAPI`)."""

    def __init__(self, backbone, anchor_generator, size, num_classes, **kwargs):
        super().__init__(backbone, anchor_generator, size, num_classes, **kwargs)
        self.num_classes = num_classes
        self._img_size = (size[0], size[1])


def _check_build(num_classes: int, in_chans: int) -> None:
    if in_chans != 3:
        raise ValueError(f"detection models take RGB images (in_chans=3); got in_chans={in_chans}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too (index 0): give K+1 >= 2 for K "
                         f"classes; got {num_classes}")


def backbone_body(backbone: str, strides: tuple[int, ...], drop_path_rate: float = 0.0,
                  checkpoint: str | None = None) -> tuple[nn.Module, list[int], dict]:
    """``create_model(backbone, features_only=True)`` returning the maps at ``strides``:
    (body, channels, backbone pretrained_cfg)."""
    from edgevision.factory import create_model

    with torch.device("meta"):  # read the levels without building weights
        probe = create_model(backbone, features_only=True)
    idx = levels_at(probe.feature_info, strides)
    body = create_model(backbone, features_only=True, out_indices=tuple(idx), drop_path_rate=drop_path_rate,
                        checkpoint=checkpoint)
    return body, list(body.feature_info.channels()), dict(probe.pretrained_cfg)


def ssdlite(backbone: str, num_classes: int = 91, in_chans: int = 3, drop_path_rate: float = 0.0,
            size: int = 320, backbone_checkpoint: str | None = None, **kwargs) -> EdgeSSD:
    """SSDLite (EMO/mmdet configuration, module docstring) on ``backbone``; kwargs go to
    torchvision's SSD (score_thresh, nms_thresh, detections_per_img, topk_candidates, ...)."""
    _check_build(num_classes, in_chans)
    body, chans, bcfg = backbone_body(backbone, (16, 32), drop_path_rate, backbone_checkpoint)
    features = SSDLiteFeatures(body, chans, norm_layer=SSDLITE_NORM)
    scales = [s / 320 for s in EMO_SSDLITE_BOX_SIZES]
    anchors = DefaultBoxGenerator([[2, 3]] * 6, scales=scales, clip=False)
    head = SSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), num_classes, SSDLITE_NORM)
    for m in head.modules():  # mmdet SSDHead init_cfg: Normal(std=0.001) on the convs
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    defaults = dict(score_thresh=0.02, nms_thresh=0.45, detections_per_img=200, topk_candidates=1000,
                    image_mean=list(bcfg["mean"]), image_std=list(bcfg["std"]))
    return EdgeSSD(features, anchors, (size, size), num_classes, head=head, **{**defaults, **kwargs})
