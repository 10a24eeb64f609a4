"""Segmentation models on every registry backbone: ``deeplabv3_<bb>``, ``mobile_deeplabv3_<bb>``,
``lraspp_<bb>``, ``pspnet_<bb>`` (registered with task="segmentation").

The model classes are torchvision's (``_SimpleSegmentationModel`` for DeepLabv3/PSPNet/Mobile
DeepLabv3, ``LRASPP``) with a named-tap backbone (:mod:`.backbones`), edgevision's input check
and the export contract: ``export_forward(x) -> (out,)`` or ``(out, aux)`` and
``export_output_names``. Input: a normalised float batch [B, C, H, W]; output: torchvision's
dict ``{"out": logits [B, K, H, W]}`` (+ ``"aux"`` with ``aux_loss=True``) at the input size.
``num_classes`` counts the background (VOC: 21); labels use ignore index 255.

Recipes (which taps, head widths and output stride):
- MobileNetV3 (timm's network, torchvision's recipe): dilated last stage (output stride 16, every
  block of the dilated stage dilated, as torchvision's ``dilated=True``), high/out tap = the last
  1x1 conv (960 ch on Large), low/aux tap = the *first* block of the stride-8 stage (torchvision's
  "C2"), torchvision's DeepLabHead / LRASPPHead / FCNHead. ``lraspp_mobilenetv3_large_100`` and
  ``deeplabv3_mobilenetv3_large_100`` are torchvision's ``lraspp_mobilenet_v3_large`` and
  ``deeplabv3_mobilenet_v3_large`` (state dicts load through the ``torchvision`` converter).
- EMO (the official zhangzjn/EMO mmseg configs, ADE20K): output stride 32 (no dilation), decode
  head on stage 4 with 256 channels (mmseg ASPPHead dilations 1/12/24/36 with a 3x3 bottleneck,
  or PSPHead bins 1/2/3/6), auxiliary mmseg FCNHead (256 ch, one 3x3 conv) on stage 3.
- Other backbones: torchvision's heads (DeepLabv3, LR-ASPP) at output stride 16 where the family
  can dilate, else at its native 32; PSPNet as the EMO recipe's head at the same stride.
- Mobile DeepLabv3 (MobileNetV2 paper): output stride 16, image pooling + 1x1 branch only.
Aux taps: the penultimate feature level (stage 3 of 4), MobileNetV3 as above.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.segmentation._utils import _SimpleSegmentationModel
from torchvision.models.segmentation.lraspp import LRASPP

import edgevision.models  # noqa: F401  (the backbones must be registered first)
from edgevision.models.base import check_input_shape, check_num_classes
from edgevision.registry import dense_backbones, model_info, register_model
from edgevision.tasks.segmentation import heads as H
from edgevision.tasks.segmentation.backbones import (
    build_backbone,
    resolve_output_stride,
)

HEADS = ("deeplabv3", "mobile_deeplabv3", "lraspp", "pspnet")
# Families whose torchvision segmentation models define the recipe (taps, dilation) used here.
TORCHVISION_RECIPE = ("mobilenetv3",)
# Families with official downstream configs (EMO: mmseg ASPP/PSP heads at stride 32).
MMSEG_RECIPE = ("emo",)


class _SegmentationMixin:
    """Input check, the export contract and the attributes create_model reads."""

    classifier_names = ("classifier", "aux_classifier")

    def _setup(self, backbone, in_chans: int, num_classes: int, aux: bool) -> None:
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.min_input_size = max(backbone.min_input_size, 32)
        self.input_multiple = backbone.input_multiple
        self.output_stride = backbone.output_stride
        self.export_output_names = ("out", "aux") if aux else ("out",)

    def export_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.forward(x)
        return tuple(result[k] for k in self.export_output_names)


class SegmentationModel(_SegmentationMixin, _SimpleSegmentationModel):
    """torchvision's DeepLabV3 structure: backbone taps ``out`` (+ ``aux``) -> classifier(s), upsampled."""

    def __init__(self, backbone, classifier, aux_classifier=None, in_chans: int = 3, num_classes: int = 21):
        super().__init__(backbone, classifier, aux_classifier)
        self._setup(backbone, in_chans, num_classes, aux_classifier is not None)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input_shape(self, x)
        return super().forward(x)


class LRASPPModel(_SegmentationMixin, LRASPP):
    """torchvision's LRASPP: backbone taps ``low`` (stride 8) and ``high`` -> LRASPPHead, upsampled."""

    def __init__(self, backbone, num_classes: int, in_chans: int = 3, inter_channels: int = 128):
        super().__init__(backbone, backbone.channels["low"], backbone.channels["high"], num_classes, inter_channels)
        self._setup(backbone, in_chans, num_classes, False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input_shape(self, x)
        return OrderedDict(super().forward(x))


# ------------------------------------------------------------------------------- building
def _recipe(backbone: str) -> str:
    family = model_info(backbone).family
    return "torchvision" if family in TORCHVISION_RECIPE else "mmseg" if family in MMSEG_RECIPE else "default"


def _check_build_args(num_classes, aux_loss, in_chans) -> None:
    check_num_classes(num_classes)
    if num_classes < 1:
        raise ValueError(f"a segmentation model needs num_classes >= 1 (background included); got {num_classes}")
    if not isinstance(aux_loss, bool):
        raise TypeError(f"aux_loss must be True or False; got {aux_loss!r}")


def build_segmentation(head: str, backbone: str, num_classes: int = 21, in_chans: int = 3,
                       aux_loss: bool = False, output_stride: int | None = None, drop_path_rate: float = 0.0,
                       **kwargs) -> nn.Module:
    """``head`` (one of :data:`HEADS`) on registry backbone ``backbone`` (module doc: recipes)."""
    if kwargs:
        raise TypeError(f"{head}_{backbone} got unexpected arguments: {sorted(kwargs)} (it takes num_classes, "
                        f"in_chans, aux_loss, output_stride, drop_path_rate)")
    _check_build_args(num_classes, aux_loss, in_chans)
    recipe = _recipe(backbone)
    preferred = 32 if recipe == "mmseg" and head in ("deeplabv3", "pspnet") else 16
    os_ = resolve_output_stride(backbone, output_stride, preferred)
    tv = recipe == "torchvision"
    aux_tap = "r8" if tv else -2
    common = dict(output_stride=os_, in_chans=in_chans, drop_path_rate=drop_path_rate, torchvision_taps=tv)
    if head == "lraspp":
        if aux_loss:
            raise ValueError("LR-ASPP has no auxiliary head (as torchvision's); build it with aux_loss=False")
        bb = build_backbone(backbone, {"low": "r8", "high": -1}, **common)
        return LRASPPModel(bb, num_classes, in_chans)
    taps = {"out": -1, **({"aux": aux_tap} if aux_loss else {})}
    bb = build_backbone(backbone, taps, **common)
    c_out = bb.channels["out"]
    if head == "deeplabv3":
        classifier = H.mmseg_aspp_head(c_out, num_classes) if recipe == "mmseg" else H.DeepLabHead(c_out, num_classes)
    elif head == "mobile_deeplabv3":
        classifier = H.mobile_deeplab_head(c_out, num_classes)
    elif head == "pspnet":
        classifier = H.PSPHead(c_out, num_classes)
    else:
        raise ValueError(f"unknown segmentation head {head!r}; choose from {', '.join(HEADS)}")
    aux = None
    if aux_loss:
        c_aux = bb.channels["aux"]
        aux = H.FCNHead(c_aux, num_classes) if tv or (head == "deeplabv3" and recipe == "default") \
            else H.fcn_aux_head(c_aux, num_classes)
    return SegmentationModel(bb, classifier, aux, in_chans, num_classes)


# ------------------------------------------------------------------------------- registration
_PAPERS = {
    "deeplabv3": "Rethinking Atrous Convolution for Semantic Image Segmentation (DeepLabv3, 2017)",
    "mobile_deeplabv3": "MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018), Sec. 6.3",
    "lraspp": "Searching for MobileNetV3 (ICCV 2019), Sec. 6.1.4 (LR-ASPP)",
    "pspnet": "Pyramid Scene Parsing Network (CVPR 2017)",
}
_EMO_SRC = ("EMO paper Table (ADE20K, 512x512, params/FLOPs=MACs); official config "
            "zhangzjn/EMO down-stream-tasks/mmsegmentation/configs/{}_emo/ (150 classes, aux FCNHead)")
# (head, backbone) -> published params, MACs, input size, source
PUBLISHED = {
    ("deeplabv3", "emo_1m"): (5.6e6, 2.4e9, 512, _EMO_SRC.format("deeplabv3")),
    ("deeplabv3", "emo_2m"): (6.9e6, 3.5e9, 512, _EMO_SRC.format("deeplabv3")),
    ("deeplabv3", "emo_5m"): (10.3e6, 5.8e9, 512, _EMO_SRC.format("deeplabv3")),
    ("pspnet", "emo_1m"): (4.3e6, 2.1e9, 512, _EMO_SRC.format("pspnet")),
    ("pspnet", "emo_2m"): (5.5e6, 3.1e9, 512, _EMO_SRC.format("pspnet")),
    ("pspnet", "emo_5m"): (8.5e6, 5.3e9, 512, _EMO_SRC.format("pspnet")),
    ("mobile_deeplabv3", "mobilenetv2_100"): (
        2.11e6, 2.75e9, 513, "MobileNetV2 paper Table 7 (MNet V2*, OS 16, no ASPP/MF; PASCAL VOC, 513 px)"),
}


_EMO_COUNT_NOTE = (
    " Published counts (mmseg's get_flops): parameters of the whole model including the auxiliary "
    "FCN head (build with num_classes=150, aux_loss=True), MACs of the forward without the auxiliary "
    "head counting convolutions only (mmcv does not count the attention matmuls; edgevision's counter "
    "does), with the official windows (7 for EMO-1M/2M, 16 for EMO-5M; ours are 7, so EMO-5M pads "
    "its 32x32/16x16 attention maps to multiples of 7).")


def _notes(head: str, backbone: str) -> str:
    note = f"{head} head on the {backbone} backbone (recipe: {_recipe(backbone)}); MACs are multiply-adds."
    if (head, backbone) in PUBLISHED and backbone.startswith("emo"):
        note += _EMO_COUNT_NOTE
    if (head, backbone) == ("mobile_deeplabv3", "mobilenetv2_100"):
        note += " Published: 21 classes (PASCAL VOC) at 513x513, output stride 16."
    return note


def _register(head: str, backbone: str) -> None:
    name = f"{head}_{backbone}"
    params, macs, size, source = PUBLISHED.get((head, backbone), (None, None, 512, ""))
    dataset = "ade20k" if (head, backbone) in PUBLISHED and backbone.startswith("emo") else "voc"
    converters = {}
    if backbone == "mobilenetv3_large_100" and head in ("deeplabv3", "lraspp"):
        from edgevision.tasks.segmentation.convert import torchvision_converter

        converters["torchvision"] = torchvision_converter(name)

    def build(**kwargs):
        return build_segmentation(head, backbone, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{head} on {backbone} (:func:`build_segmentation`)."
    register_model(head, name=name, task="segmentation", paper=_PAPERS[head], params=params, macs=macs,
                   source=source, input_size=(3, size, size), converters=converters,
                   cfg=dict(num_classes=150 if dataset == "ade20k" else 21, dataset=dataset, crop_pct=1.0,
                            interpolation="bilinear", backbone=backbone),
                   notes=_notes(head, backbone))(build)


@functools.lru_cache(maxsize=1)
def register_all() -> tuple[str, ...]:
    names = []
    for backbone in dense_backbones():
        for head in HEADS:
            _register(head, backbone)
            names.append(f"{head}_{backbone}")
    return tuple(names)


register_all()
