"""Secure MobileNet-V1 (Jha et al., "DeepPeep", ACM JETC 2020, arXiv 2007.15248): a MobileNet-V1
changed by design manoeuvres so that its execution trace reveals less of its building blocks.

What is taken from the paper (its abstract, the only part the search tools reach): the network
is MobileNet-V1 modified by "design maneuvering" against the DeepPeep attack, which reads
building blocks (depthwise-separable pairs, kernel sizes, widths) off the layer-wise latency
profile; on P100/P4000 GPUs it is reported ~60% faster than MobileNet-V1 and ~2% more accurate,
"with very-low memory and computation overheads". No code or weights were released.

What is our reading (the paper's layer table could not be retrieved): one manoeuvre, the one
that explains all three reported effects at once: the depthwise-separable block that runs at
the stem's resolution (MobileNet-V1's first block, 32 -> 64 channels at H/2 x W/2) becomes a
standard 3x3 convolution.
- It removes the depthwise/pointwise pair whose latency ratio is DeepPeep's signature, exactly
  where it is most legible: a 32-channel depthwise conv on the largest map is the most
  memory-bound layer of the network (fewest MACs per byte moved), so on a GPU it costs far
  more time than its 3.6M MACs suggest; a dense conv there is compute-bound instead.
- Memory overhead is tiny (+16k parameters, +0.4%); compute grows by +202M MACs at 224 px
  (+35%): cheap on accelerators, not on a CPU (see benchmarks/results/leak_defence.md).
- A dense 3x3 conv has 9x the weights of the separable pair it replaces, the usual source of
  a small accuracy gain in the first layers.
Everything else is timm's ``mobilenetv1_100`` unchanged (stem 32, 12 further DS blocks with
ReLU6 after both convs, no residuals, no head conv, global pool, Linear on 1024 channels), and
the network is the same timm ``EfficientNet`` class, so the vanilla/secure comparison differs
in that one block only. The design is data (:data:`ARCH`), as for any timm-built network.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from edgevision.registry import register_model

# timm arch-def strings (timm's decode_arch_def). Vanilla mobilenetv1_100 (timm's
# _gen_mobilenet_v1) is the same list with stage 0 = 'dsa_r1_k3_s1_c64'.
VANILLA_ARCH = [
    ["dsa_r1_k3_s1_c64"],
    ["dsa_r2_k3_s2_c128"],
    ["dsa_r2_k3_s2_c256"],
    ["dsa_r6_k3_s2_c512"],
    ["dsa_r2_k3_s2_c1024"],
]
ARCH = [
    ["cn_r1_k3_s1_c64"],  # the manoeuvre: dense 3x3 conv instead of DS(dw3x3 32, pw 32->64)
    *VANILLA_ARCH[1:],
]
STEM_SIZE = 32


def build_mobilenetv1_arch(arch, variant: str = "mobilenetv1_arch", num_classes: int = 1000, in_chans: int = 3,
                           drop_rate: float = 0.2, drop_path_rate: float = 0.0, **kwargs) -> nn.Module:
    """timm's EfficientNet class with MobileNet-V1's settings (stem 32, ReLU6, BN eps 1e-5,
    no head conv) around the blocks of ``arch``: ``build_mobilenetv1_arch(VANILLA_ARCH)`` is
    timm's ``mobilenetv1_100`` (same modules and state-dict keys). Dropout 0.2 before the
    classifier, as edgevision builds the registry's mobile CNNs."""
    from timm.layers import get_act_layer
    from timm.models import build_model_with_cfg
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    # timm's own cfg fields for an EfficientNet-class network (first conv, classifier, pool
    # size), as timm gives mobilenetv1_100; the registry adds paper, licence and weights.
    cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
               interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv="conv_stem", classifier="classifier")
    return build_model_with_cfg(
        EfficientNet, variant, pretrained=False, pretrained_cfg=cfg,
        block_args=decode_arch_def(arch), num_classes=num_classes, in_chans=in_chans,
        stem_size=STEM_SIZE, num_features=0, round_chs_fn=partial(round_channels, multiplier=1.0),
        act_layer=get_act_layer("relu6"), norm_layer=nn.BatchNorm2d,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)


@register_model(
    "secure_mobilenet", name="secure_mobilenetv1_100",
    paper="DeepPeep: Exploiting Design Ramifications to Decipher the Architecture of Compact DNNs "
          "(Jha et al., ACM JETC 2020, arXiv 2007.15248)",
    params=4.248e6, macs=770.6e6,
    source="not published (the paper's layer table was not retrievable): counts of edgevision's reading "
           "(module docstring), measured",
    notes="Our reading of the paper's Secure MobileNet-V1: timm's mobilenetv1_100 with its first "
          "depthwise-separable block replaced by a dense 3x3 conv. No official weights exist.",
)
def secure_mobilenetv1_100(**kwargs) -> nn.Module:
    return build_mobilenetv1_arch(ARCH, "secure_mobilenetv1_100", **kwargs)
