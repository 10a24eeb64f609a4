"""MnasNet (Tan et al., CVPR 2019): platform-aware NAS mobile networks; timm's models.

``semnasnet_100`` is MnasNet-A1 (with SE: 1/4 of the block *input* width, ReLU, sigmoid),
``mnasnet_100`` is MnasNet-B1 (no SE; torchvision's ``mnasnet1_0``, whose checkpoints
convert), as in timm.
"""

from edgevision.models._mobile_cnn import TORCHVISION_MNASNET, register_timm_models

register_timm_models("mnasnet", {
    "semnasnet_100": dict(params=3.9e6, macs=312e6, top1=75.2, source="paper Table 1 (MnasNet-A1)",
                          notes="MnasNet-A1 (with squeeze-excite)."),
    "mnasnet_100": dict(params=4.38e6, macs=314e6, top1=73.456,
                        source="torchvision MNASNet1_0_Weights.IMAGENET1K_V1 metadata "
                               "(B1 is not in the paper's table)",
                        layouts={"torchvision": TORCHVISION_MNASNET},
                        notes="MnasNet-B1 (no squeeze-excite), torchvision's mnasnet1_0."),
}, paper="MnasNet: Platform-Aware Neural Architecture Search for Mobile (CVPR 2019)")
