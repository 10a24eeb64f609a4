"""Registered detectors: ``ssdlite_<backbone>`` and ``retinanet_<backbone>`` for every classifier
of the registry (all have ``features_only``), plus ``ssdlite320_mobilenetv3_large_100``.

Published figures (params, MACs) are registered where a paper or the official code gives them,
with the counting convention in ``cfg["published_num_classes"]`` (head outputs the published
count used) and the size in ``input_size``. ``benchmarks/dense_counts.py`` compares them with
ours.
"""

from __future__ import annotations

import functools

from edgevision.registry import dense_backbones, model_info, register_model
from edgevision.tasks.detection.mnv3_ssdlite import (
    convert_torchvision,
    ssdlite320_mobilenetv3_large,
)
from edgevision.tasks.detection.retinanet import MMDET_COUNT_SIZE, retinanet
from edgevision.tasks.detection.ssdlite import ssdlite

_EMO = "Rethinking Mobile Block for Efficient Attention-based Models (ICCV 2023)"
_EMO_SRC = "EMO paper, Table (COCO detection)"
_COCO = dict(num_classes=91, dataset="coco", crop_pct=1.0, interpolation="bilinear", label_names=None)

# name -> (params, MACs) as published.
SSDLITE_PUBLISHED = {
    "emo_1m": (2.3e6, 0.6e9), "emo_2m": (3.3e6, 0.9e9), "emo_5m": (6.0e6, 1.8e9),
    "mobilenetv2_100": (4.3e6, 0.8e9),
}
RETINANET_PUBLISHED = {"emo_1m": (10.4e6, 163e9), "emo_2m": (11.5e6, 167e9), "emo_5m": (14.4e6, 178e9)}


def _builder(fn, backbone: str, name: str):
    build = functools.partial(fn, backbone)
    build.__name__ = build.__qualname__ = name  # type: ignore[attr-defined]
    return build


def _register_all() -> None:
    for bb in dense_backbones():  # classification backbones
        family = model_info(bb).family
        name = f"ssdlite_{bb}"
        params, macs = SSDLITE_PUBLISHED.get(bb, (None, None))
        paper, source = "", ""
        if bb.startswith("emo"):
            paper, source = _EMO, _EMO_SRC + ", SSDLite at 320x320 (mmdet, 80 classes + background)"
        elif bb == "mobilenetv2_100":
            paper = "MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018)"
            source = "MobileNetV2 paper Table 6 (SSDLite, 320x320)"
        register_model(family, name=name, task="detection", params=params, macs=macs, paper=paper,
                       source=source, input_size=(3, 320, 320),
                       cfg=dict(_COCO, published_num_classes=81 if bb.startswith("emo") else 91, backbone=bb),
                       notes="SSDLite (EMO/mmdet configuration) over the stride-16/32 maps of "
                             f"{bb}; MACs of export_forward (backbone, neck, heads; no NMS)")(
            _builder(ssdlite, bb, name))

        name = f"retinanet_{bb}"
        params, macs = RETINANET_PUBLISHED.get(bb, (None, None))
        register_model(family, name=name, task="detection", params=params, macs=macs,
                       paper=_EMO if params else "",
                       source=_EMO_SRC + ", RetinaNet 1x; MACs by mmdet get_flops at 1333x800 (padded to 1344x800)"
                       if params else "",
                       input_size=(3, *MMDET_COUNT_SIZE), cfg=dict(_COCO, published_num_classes=80, backbone=bb),
                       notes="RetinaNet + FPN (EMO/mmdet configuration) over the stride-8/16/32 maps of "
                             f"{bb}; input_size is mmdet's counting size (images resize to 800/1333)")(
            _builder(retinanet, bb, name))


_register_all()

register_model(
    "mobilenetv3", name="ssdlite320_mobilenetv3_large_100", task="detection",
    params=3.44006e6, macs=0.583e9, input_size=(3, 320, 320),
    paper="Searching for MobileNetV3 (ICCV 2019)",
    source="torchvision SSDLite320_MobileNet_V3_Large_Weights.COCO_V1 meta (num_params, _ops)",
    converters={"torchvision": convert_torchvision},
    cfg=dict(_COCO, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), published_num_classes=91,
             backbone="mobilenetv3_large_100"),
    notes="torchvision's ssdlite320_mobilenet_v3_large (reduced-tail backbone, C4 at the expansion "
          "layer); torchvision state dicts load through checkpoint=",
)(ssdlite320_mobilenetv3_large)
