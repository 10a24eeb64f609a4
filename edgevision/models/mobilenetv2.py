"""MobileNetV2 (Sandler et al., CVPR 2018): inverted residuals with linear bottlenecks.

Width multipliers 0.35-1.4 scale every width (rounded to multiples of 8) including the
stem; the 1280-wide head conv grows only above 1.0 (1.4 -> 1792), as in the paper, timm
and torchvision. Activation ReLU6.
"""

from edgevision.layers import make_divisible
from edgevision.models._mobile_cnn import (
    MobileCNN,
    MobileCNNConfig,
    Row,
    _emit_block,
    _copy_bn,
    _copy_linear,
    convert_timm,
    torchvision_units,
)
from edgevision.registry import register_model

_ROWS = (
    Row("ds", 1, 3, 1, 16),
    Row("ir", 2, 3, 2, 24, expansion=6),
    Row("ir", 3, 3, 2, 32, expansion=6),
    Row("ir", 4, 3, 2, 64, expansion=6),
    Row("ir", 3, 3, 1, 96, expansion=6),
    Row("ir", 3, 3, 2, 160, expansion=6),
    Row("ir", 1, 3, 1, 320, expansion=6),
)


def mobilenetv2_config(width: float) -> MobileCNNConfig:
    head = make_divisible(1280 * max(1.0, width), 8)
    return MobileCNNConfig(rows=_ROWS, stem_chs=32, act="relu6", head="conv", head_chs=head, width=width)


def convert_torchvision(sd: dict) -> dict:
    """torchvision mobilenet_v2: features.0 stem, features.1..N-2 blocks, features.N-1 head conv."""
    if "features.0.0.weight" not in sd:
        raise KeyError("not a torchvision MobileNetV2 state dict")
    out = {}
    top = torchvision_units(sd, "features")  # convs (stem, head) and groups (blocks)
    stem, *blocks, head = top
    out["stem.conv.weight"] = sd[stem[1]]
    _copy_bn(out, sd, stem[2], "stem.bn")
    for i, group in enumerate(blocks):
        _emit_block(out, sd, torchvision_units(sd, f"{group[1]}.conv"), f"blocks.{i}")
    out["conv_head.conv.weight"] = sd[head[1]]
    _copy_bn(out, sd, head[2], "conv_head.bn")
    _copy_linear(out, sd, "classifier.1", "classifier")
    return out


_PAPER = "MobileNetV2: Inverted Residuals and Linear Bottlenecks (CVPR 2018)"
_CONVERTERS = {"timm": convert_timm, "torchvision": convert_torchvision}
_README = "TF-slim mobilenet_v2 README table (official checkpoints, 224 px)"


@register_model("mobilenetv2", paper=_PAPER, params=1.66e6, macs=59e6, top1=60.3,
                source=_README, converters=_CONVERTERS)
def mobilenetv2_035(**kwargs):
    return MobileCNN(mobilenetv2_config(0.35), **kwargs)


@register_model("mobilenetv2", paper=_PAPER, params=1.95e6, macs=97e6, top1=65.4,
                source=_README, converters=_CONVERTERS)
def mobilenetv2_050(**kwargs):
    return MobileCNN(mobilenetv2_config(0.50), **kwargs)


@register_model("mobilenetv2", paper=_PAPER, params=2.61e6, macs=209e6, top1=69.8,
                source=_README, converters=_CONVERTERS)
def mobilenetv2_075(**kwargs):
    return MobileCNN(mobilenetv2_config(0.75), **kwargs)


@register_model("mobilenetv2", paper=_PAPER, params=3.4e6, macs=300e6, top1=72.0,
                source="paper Table 4", converters=_CONVERTERS)
def mobilenetv2_100(**kwargs):
    return MobileCNN(mobilenetv2_config(1.0), **kwargs)


@register_model("mobilenetv2", paper=_PAPER, params=6.06e6, macs=582e6, top1=75.0,
                source=_README, converters=_CONVERTERS,
                notes="The paper's Table 6 quotes 6.9M / 585M / 74.7; the released network is 6.1M.")
def mobilenetv2_140(**kwargs):
    return MobileCNN(mobilenetv2_config(1.4), **kwargs)
