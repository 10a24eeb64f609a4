"""MobileNetV1 (Howard et al., 2017): a stack of depthwise-separable conv blocks; timm's model.

timm's ``mobilenetv1_100``: 3x3 stride-2 stem (32), 13 depthwise-separable blocks with ReLU6
after both the depthwise and the pointwise conv, no residuals, global pooling and a Linear
classifier on 1024 channels (no head conv).
"""

from edgevision.models._mobile_cnn import register_timm_models

register_timm_models("mobilenetv1", {
    "mobilenetv1_100": dict(
        params=4.2e6, macs=569e6, top1=70.6, source="paper Table 8 (1.0 MobileNet-224)",
        notes="timm's variant uses ReLU6 (the TF release); the paper says ReLU."),
}, paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications (arXiv 2017)")
