"""RetinaNet on any edgevision backbone: torchvision's RetinaNet with the EMO/mmdet configuration.

Configuration (official EMO ``down-stream-tasks/mmdetection/configs/_base_/models/
retinanet_emo_fpn.py`` and ``retinanet_emo/retinanet_emo_*_fpn_1x_coco.py``): backbone stages at
strides 8, 16, 32 (mmdet FPN ``start_level=1`` of ``out_indices=(1, 2, 3, 4)``), FPN with 256
channels and P6/P7 from C5 (``add_extra_convs='on_input'``, no ReLU before P7), RetinaNet head
with 4 stacked 3x3 convs of 256 channels per branch (torchvision's :class:`RetinaNetHead`), 9
anchors per location (octave base scale 4 -> sizes 32..512 for strides 8..128, 3 scales per
octave, ratios 0.5/1/2: torchvision's :class:`AnchorGenerator` with the same sizes), focal loss
(alpha 0.25, gamma 2), IoU 0.5/0.4 matching, L1 box loss in torchvision's (torchvision: L1 on
BoxCoder(1, 1, 1, 1) deltas, mmdet: L1 with stds 1), test: score 0.05, NMS 0.5, 100 detections,
1000 candidates per level. Images are resized to a shorter side of 800 and a longer side of at
most 1333 (mmdet ``img_scale=(1333, 800)``).

Classes: torchvision's convention (index 0 = background, never a target; the head has
num_classes sigmoid outputs). mmdet's RetinaHead has 80 outputs for COCO, no background one.
"""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead

from edgevision.tasks.detection.api import DetectorAPI
from edgevision.tasks.detection.necks import FPNFeatures
from edgevision.tasks.detection.ssdlite import _check_build, backbone_body

# The size the published RetinaNet counts refer to: mmdet's get_flops.py with --shape 1333 800
# (the test scale), padded to multiples of 32 -> 1344x800 (the tool's default, 1280x800, gives
# 4-5% fewer MACs than the EMO table; 1344x800 matches it within 0.5%, benchmarks/results/
# dense_counts.md). Registered as (800, 1344), landscape: conv and attention counts are the same
# either way round. The registered input size of every RetinaNet here.
MMDET_COUNT_SIZE = (800, 1344)


class EdgeRetinaNet(DetectorAPI, RetinaNet):
    """torchvision's RetinaNet with edgevision's checks and export view (:class:`DetectorAPI`)."""

    def __init__(self, backbone, num_classes, img_size, min_size=800, max_size=1333, **kwargs):
        # img_size: the export/count size; images go through torchvision's resize (800, <=1333)
        # until img_size is set after build (create_model(img_size=...) sets both).
        h, w = img_size
        super().__init__(backbone, num_classes, min_size=min_size, max_size=max_size, **kwargs)
        self.num_classes = num_classes
        self._img_size = (h, w)


def retinanet_anchors() -> AnchorGenerator:
    """mmdet AnchorGenerator(octave_base_scale=4, scales_per_octave=3, ratios=(0.5, 1, 2),
    strides 8..128): base sizes 4 x stride, times 2^(0, 1/3, 2/3)."""
    sizes = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in (8, 16, 32, 64, 128))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def retinanet(backbone: str, num_classes: int = 91, in_chans: int = 3, drop_path_rate: float = 0.0,
              img_size: tuple[int, int] = MMDET_COUNT_SIZE, backbone_checkpoint: str | None = None,
              **kwargs) -> EdgeRetinaNet:
    """RetinaNet (EMO/mmdet configuration, module docstring) on ``backbone``; kwargs go to
    torchvision's RetinaNet (score_thresh, nms_thresh, detections_per_img, topk_candidates, ...)."""
    _check_build(num_classes, in_chans)
    body, chans, bcfg = backbone_body(backbone, (8, 16, 32), drop_path_rate, backbone_checkpoint)
    features = FPNFeatures(body, chans, 256)
    anchors = retinanet_anchors()
    head = RetinaNetHead(256, anchors.num_anchors_per_location()[0], num_classes)
    defaults = dict(score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, topk_candidates=1000,
                    image_mean=list(bcfg["mean"]), image_std=list(bcfg["std"]))
    return EdgeRetinaNet(features, num_classes, img_size, anchor_generator=anchors, head=head,
                         **{**defaults, **kwargs})
