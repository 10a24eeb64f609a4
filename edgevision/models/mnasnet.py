"""MnasNet (Tan et al., CVPR 2019): platform-aware NAS mobile networks.

``semnasnet_100`` is MnasNet-A1 (with SE: 1/4 of the block *input* width, ReLU, sigmoid),
``mnasnet_100`` is MnasNet-B1 (no SE; torchvision's ``mnasnet1_0``), as in timm.
"""

from edgevision.models._mobile_cnn import (
    MobileCNN,
    MobileCNNConfig,
    Row,
    _copy_bn,
    _copy_linear,
    _emit_block,
    convert_timm,
    torchvision_units,
)
from edgevision.registry import register_model

_A1 = (
    Row("ds", 1, 3, 1, 16, skip=False),
    Row("ir", 2, 3, 2, 24, expansion=6),
    Row("ir", 3, 5, 2, 40, expansion=3, se=0.25),
    Row("ir", 4, 3, 2, 80, expansion=6),
    Row("ir", 2, 3, 1, 112, expansion=6, se=0.25),
    Row("ir", 3, 5, 2, 160, expansion=6, se=0.25),
    Row("ir", 1, 3, 1, 320, expansion=6),
)
_B1 = (
    Row("ds", 1, 3, 1, 16, skip=False),
    Row("ir", 3, 3, 2, 24, expansion=3),
    Row("ir", 3, 5, 2, 40, expansion=3),
    Row("ir", 3, 5, 2, 80, expansion=6),
    Row("ir", 2, 3, 1, 96, expansion=6),
    Row("ir", 4, 5, 2, 192, expansion=6),
    Row("ir", 1, 3, 1, 320, expansion=6, skip=False),
)


def mnasnet_config(rows, width: float = 1.0) -> MobileCNNConfig:
    return MobileCNNConfig(rows=rows, stem_chs=32, act="relu", head="conv", head_chs=1280, width=width,
                           se_from_mid=False, se_divisor=1, se_act="relu", se_gate="sigmoid")


def convert_torchvision(sd: dict) -> dict:
    """torchvision mnasnet1_0: one flat ``layers`` Sequential.

    Its top-level convs are [stem, depthwise, pointwise, head] (the first block is written
    out flat), and the nested groups are the stacks of ``_InvertedResidual`` (``.layers``).
    """
    if "layers.0.weight" not in sd:
        raise KeyError("not a torchvision MNASNet state dict")
    out = {}
    units = torchvision_units(sd, "layers")
    convs = [u for u in units if u[0] == "conv"]
    stem, dw, pw, head = convs
    out["stem.conv.weight"] = sd[stem[1]]
    _copy_bn(out, sd, stem[2], "stem.bn")
    _emit_block(out, sd, [dw, pw], "blocks.0")
    i = 1
    for group in (u for u in units if u[0] == "group"):
        for j in range(len(torchvision_units(sd, group[1]))):
            _emit_block(out, sd, torchvision_units(sd, f"{group[1]}.{j}.layers"), f"blocks.{i}")
            i += 1
    out["conv_head.conv.weight"] = sd[head[1]]
    _copy_bn(out, sd, head[2], "conv_head.bn")
    _copy_linear(out, sd, "classifier.1", "classifier")
    return out


_PAPER = "MnasNet: Platform-Aware Neural Architecture Search for Mobile (CVPR 2019)"


@register_model("mnasnet", paper=_PAPER, params=3.9e6, macs=312e6, top1=75.2,
                source="paper Table 1 (MnasNet-A1)", converters={"timm": convert_timm},
                notes="MnasNet-A1 (with squeeze-excite).")
def semnasnet_100(**kwargs):
    return MobileCNN(mnasnet_config(_A1), **kwargs)


@register_model("mnasnet", paper=_PAPER, params=4.38e6, macs=314e6, top1=73.456,
                source="torchvision MNASNet1_0_Weights.IMAGENET1K_V1 metadata (B1 is not in the paper's table)",
                converters={"timm": convert_timm, "torchvision": convert_torchvision},
                notes="MnasNet-B1 (no squeeze-excite), torchvision's mnasnet1_0.")
def mnasnet_100(**kwargs):
    return MobileCNN(mnasnet_config(_B1), **kwargs)
