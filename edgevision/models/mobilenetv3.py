"""MobileNetV3 (Howard et al., ICCV 2019): NAS-found inverted residuals with SE and hard-swish.

SE widths are 1/4 of the expanded width rounded to multiples of 8, gated by hard-sigmoid.
The last 1x1 conv (960 / 576 at 1.0) is a block, then global pooling, a Linear(+bias) to
1280 / 1024 with hard-swish (not width-scaled), dropout and the classifier.

torchvision's MobileNetV3 uses BatchNorm eps 1e-3 where timm uses 1e-5; our default is
timm's, and the torchvision converter folds the difference into running_var (exact in
eval). ``bn_eps=1e-3`` builds the torchvision variant for training.
"""

from edgevision.models._mobile_cnn import (
    MobileCNN,
    MobileCNNConfig,
    Row,
    _copy_bn,
    _copy_linear,
    _emit_block,
    convert_timm,
    shift_bn_eps,
    torchvision_units,
)
from edgevision.registry import register_model

_LARGE = (
    Row("ds", 1, 3, 1, 16, act="relu"),
    Row("ir", 1, 3, 2, 24, expansion=4, act="relu"),
    Row("ir", 1, 3, 1, 24, expansion=3, act="relu"),
    Row("ir", 3, 5, 2, 40, expansion=3, se=0.25, act="relu"),
    Row("ir", 1, 3, 2, 80, expansion=6),
    Row("ir", 1, 3, 1, 80, expansion=2.5),
    Row("ir", 2, 3, 1, 80, expansion=2.3),
    Row("ir", 2, 3, 1, 112, expansion=6, se=0.25),
    Row("ir", 3, 5, 2, 160, expansion=6, se=0.25),
    Row("cn", 1, 1, 1, 960),
)
_SMALL = (
    Row("ds", 1, 3, 2, 16, se=0.25, act="relu"),
    Row("ir", 1, 3, 2, 24, expansion=4.5, act="relu"),
    Row("ir", 1, 3, 1, 24, expansion=3.67, act="relu"),
    Row("ir", 1, 5, 2, 40, expansion=4, se=0.25),
    Row("ir", 2, 5, 1, 40, expansion=6, se=0.25),
    Row("ir", 2, 5, 1, 48, expansion=3, se=0.25),
    Row("ir", 3, 5, 2, 96, expansion=6, se=0.25),
    Row("cn", 1, 1, 1, 576),
)


def mobilenetv3_config(size: str, width: float) -> MobileCNNConfig:
    rows, head = (_LARGE, 1280) if size == "large" else (_SMALL, 1024)
    return MobileCNNConfig(
        rows=rows, stem_chs=16, act="hswish", head="linear", head_chs=head, width=width,
        scale_stem=False, se_from_mid=True, se_divisor=8, se_act="relu", se_gate="hsigmoid",
    )


def convert_torchvision(sd: dict) -> dict:
    """torchvision mobilenet_v3_large/small -> ours.

    features.0 stem; features.1..N-2 InvertedResidual (``.block``: a block without an
    expand conv is our depthwise-separable); features.N-1 the last 1x1 conv (a block in
    ours); classifier.0 -> head_fc, classifier.3 -> classifier. BN eps 1e-3 is folded.
    """
    if "features.0.0.weight" not in sd or "classifier.3.weight" not in sd:
        raise KeyError("not a torchvision MobileNetV3 state dict")
    out = {}
    stem, *blocks, last = torchvision_units(sd, "features")
    out["stem.conv.weight"] = sd[stem[1]]
    _copy_bn(out, sd, stem[2], "stem.bn")
    for i, group in enumerate(blocks):
        _emit_block(out, sd, torchvision_units(sd, f"{group[1]}.block"), f"blocks.{i}")
    _emit_block(out, sd, [last], f"blocks.{len(blocks)}")
    _copy_linear(out, sd, "classifier.0", "head_fc")
    _copy_linear(out, sd, "classifier.3", "classifier")
    return shift_bn_eps(out, 1e-3)


_PAPER = "Searching for MobileNetV3 (ICCV 2019)"
_CONVERTERS = {"timm": convert_timm, "torchvision": convert_torchvision}


@register_model("mobilenetv3", paper=_PAPER, params=4.0e6, macs=155e6, top1=73.3,
                source="paper Table 3", converters=_CONVERTERS)
def mobilenetv3_large_075(**kwargs):
    return MobileCNN(mobilenetv3_config("large", 0.75), **kwargs)


@register_model("mobilenetv3", paper=_PAPER, params=5.4e6, macs=219e6, top1=75.2,
                source="paper Table 3", converters=_CONVERTERS)
def mobilenetv3_large_100(**kwargs):
    return MobileCNN(mobilenetv3_config("large", 1.0), **kwargs)


@register_model("mobilenetv3", paper=_PAPER, params=2.0e6, macs=44e6, top1=65.4,
                source="paper Table 3", converters=_CONVERTERS)
def mobilenetv3_small_075(**kwargs):
    return MobileCNN(mobilenetv3_config("small", 0.75), **kwargs)


@register_model("mobilenetv3", paper=_PAPER, params=2.5e6, macs=56e6, top1=67.4,
                source="paper Table 3", converters=_CONVERTERS,
                notes="The TF-slim release is quoted at 2.9M/66M; the timm/torchvision "
                      "network built here has 2.54M params and 56.5M MACs, the paper's figures.")
def mobilenetv3_small_100(**kwargs):
    return MobileCNN(mobilenetv3_config("small", 1.0), **kwargs)
