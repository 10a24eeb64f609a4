"""MobileNetV3 (Howard et al., ICCV 2019): NAS-found inverted residuals with SE and hard-swish; timm's.

SE widths are 1/4 of the expanded width rounded to multiples of 8, gated by hard-sigmoid.
The last 1x1 conv (960 / 576 at 1.0) is a block, then global pooling, ``conv_head`` (a 1x1
conv with bias on the pooled map, i.e. a Linear) to 1280 / 1024 with hard-swish (not
width-scaled), dropout and the classifier.

torchvision's MobileNetV3 uses BatchNorm eps 1e-3 where timm uses 1e-5; the torchvision
converter folds the difference into running_var (exact in eval). ``bn_eps=1e-3`` (timm's
option) builds the torchvision variant for training.
"""

from edgevision.models._mobile_cnn import TORCHVISION_MOBILENETV3, register_timm_models

register_timm_models("mobilenetv3", {
    "mobilenetv3_large_075": dict(params=4.0e6, macs=155e6, top1=73.3),
    "mobilenetv3_large_100": dict(params=5.4e6, macs=219e6, top1=75.2),
    "mobilenetv3_small_075": dict(params=2.0e6, macs=44e6, top1=65.4),
    "mobilenetv3_small_100": dict(
        params=2.5e6, macs=56e6, top1=67.4,
        notes="The TF-slim release is quoted at 2.9M/66M; the timm/torchvision "
              "network built here has 2.54M params and 56.5M MACs, the paper's figures."),
}, layouts={"torchvision": TORCHVISION_MOBILENETV3},
    paper="Searching for MobileNetV3 (ICCV 2019)", source="paper Table 3")
