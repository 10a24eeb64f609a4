"""MobileNetV1 (Howard et al., 2017): a stack of depthwise-separable conv blocks.

Structure as timm's ``mobilenetv1_100``: 3x3 stride-2 stem (32), 13 depthwise-separable
blocks with ReLU6 after both the depthwise and the pointwise conv, no residuals, global
pooling and a Linear classifier on 1024 channels (no head conv).
"""

from edgevision.models._mobile_cnn import MobileCNN, MobileCNNConfig, Row, convert_timm
from edgevision.registry import register_model

_ROWS = (
    Row("ds", 1, 3, 1, 64, pw_act=True, skip=False),
    Row("ds", 2, 3, 2, 128, pw_act=True, skip=False),
    Row("ds", 2, 3, 2, 256, pw_act=True, skip=False),
    Row("ds", 6, 3, 2, 512, pw_act=True, skip=False),
    Row("ds", 2, 3, 2, 1024, pw_act=True, skip=False),
)


def mobilenetv1_config(width: float = 1.0) -> MobileCNNConfig:
    return MobileCNNConfig(rows=_ROWS, stem_chs=32, act="relu6", head=None, width=width)


@register_model(
    "mobilenetv1",
    paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications (arXiv 2017)",
    params=4.2e6, macs=569e6, top1=70.6,
    source="paper Table 8 (1.0 MobileNet-224)",
    converters={"timm": convert_timm},
    notes="timm's variant uses ReLU6 (the TF release); the paper says ReLU.",
)
def mobilenetv1_100(**kwargs):
    return MobileCNN(mobilenetv1_config(1.0), **kwargs)
