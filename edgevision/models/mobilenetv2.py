"""MobileNetV2 (Sandler et al., CVPR 2018): inverted residuals with linear bottlenecks; timm's models.

Width multipliers 0.35-1.4 scale every width (rounded to multiples of 8) including the
stem; the 1280-wide head conv grows only above 1.0 (1.4 -> 1792), as in the paper, timm
and torchvision. Activation ReLU6. torchvision's ``mobilenet_v2`` checkpoints convert.
"""

from edgevision.models._mobile_cnn import TORCHVISION_MOBILENETV2, register_timm_models

_README = "TF-slim mobilenet_v2 README table (official checkpoints, 224 px)"

register_timm_models("mobilenetv2", {
    "mobilenetv2_035": dict(params=1.66e6, macs=59e6, top1=60.3, source=_README),
    "mobilenetv2_050": dict(params=1.95e6, macs=97e6, top1=65.4, source=_README),
    "mobilenetv2_075": dict(params=2.61e6, macs=209e6, top1=69.8, source=_README),
    "mobilenetv2_100": dict(params=3.4e6, macs=300e6, top1=72.0, source="paper Table 4"),
    "mobilenetv2_140": dict(params=6.06e6, macs=582e6, top1=75.0, source=_README,
                            notes="The paper's Table 6 quotes 6.9M / 585M / 74.7; the released network is 6.1M."),
}, layouts={"torchvision": TORCHVISION_MOBILENETV2},
    paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018)")
