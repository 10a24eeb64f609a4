"""The mobile CNNs (MobileNetV1/V2/V3, MnasNet A1/B1, EfficientNet-Lite0) are timm's models.

timm implements these networks exactly, so each registered name builds timm's own model
(``edgevision.create_model(name)`` has the class and state-dict keys of
``timm.create_model(name)``; timm's kwargs such as ``drop_rate`` and ``bn_eps`` pass through).
What edgevision adds is here: converters from other checkpoint layouts into timm's.

A converter pairs tensors by structure, not by name: the source keys are put in module
execution order (a :class:`SourceLayout` knows how its children are ordered), the target
order is the state dict of timm's model built on the meta device, and the two lists are
zipped. Every pair must agree on the tensor's role (weight, bias, running_mean, running_var)
and shape, a Linear weight standing for a 1x1 conv or back; otherwise the converter raises
:class:`CheckpointMismatchError` listing the pairs that disagree. ``num_batches_tracked`` is
not paired (it is not a weight; loads ignore it).

BatchNorm eps: timm builds these models with eps 1e-5; torchvision's MobileNetV3 and the
TF-trained EfficientNet weights assume 1e-3. A converter from an eps-1e-3 source adds the
difference to ``running_var`` (BN divides by sqrt(var + eps)), so the converted model is the
source network exactly in eval mode. Build with ``bn_eps=1e-3`` (timm's option) only to train
with the source's eps, and then load the unshifted weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch

from edgevision.checkpoints import CheckpointMismatchError
from edgevision.registry import register_model

# Tensors of one module in registration order; BN's step counter is not paired.
_PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
_SKIP = "num_batches_tracked"
TIMM_BN_EPS = 1e-5


def timm_builder(name: str) -> Callable[..., torch.nn.Module]:
    """``build(**kwargs)`` = ``timm.create_model(name, pretrained=False, **kwargs)``."""

    def build(reduced_tail: bool = False, **kwargs):
        # Dropout 0.2 before the classifier, as the papers train these networks (timm's
        # builder defaults to 0.0 and leaves it to its training script's --drop).
        kwargs.setdefault("drop_rate", 0.2)
        if reduced_tail:
            return mobilenetv3_large_reduced_tail(name, **kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"timm's ``{name}`` (``timm.create_model({name!r}, **kwargs)``)."
    return build


# MobileNetV3-Large as timm writes it (timm.models.mobilenetv3._gen_mobilenet_v3), with the
# MobileNetV3 paper's reduced tail (section 6.3, torchvision's ``reduced_tail=True``): the last
# stage's output halved (160 -> 80), its expansions and the last 1x1 conv halved (960 -> 480),
# the head conv halved (1280 -> 640). For detection/segmentation heads on the stride-32 map.
_MNV3_LARGE_REDUCED_TAIL = [
    ["ds_r1_k3_s1_e1_c16_nre"],
    ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
    ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
    ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
    ["ir_r2_k3_s1_e6_c112_se0.25"],
    ["ir_r3_k5_s2_e6_c80_se0.25"],  # first block: 112 -> 672 expansion -> 80; then 80 -> 480 -> 80
    ["cn_r1_k1_s1_c{last}"],
]


def mobilenetv3_large_reduced_tail(name: str, **kwargs) -> torch.nn.Module:
    """timm's MobileNetV3 class built from the reduced-tail arch above (``name`` gives the width:
    ``mobilenetv3_large_100`` -> 1.0, ``_075`` -> 0.75); timm kwargs (bn_eps, bn_momentum, ...)
    pass through as for ``timm.create_model``."""
    if not name.startswith("mobilenetv3_large_"):
        raise ValueError(f"reduced_tail=True exists for MobileNetV3-Large only, not {name!r}")
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import (
        decode_arch_def,
        resolve_bn_args,
        round_channels,
    )
    from timm.models.mobilenetv3 import _create_mnv3

    mult = int(name.rsplit("_", 1)[1]) / 100
    # torchvision: last conv = 6 x the stage's (rounded) output; timm scales every 'cn' width by
    # the multiplier, so write the unscaled width that rounds to it (480 at 1.0, 384 at 0.75).
    last = round(6 * round_channels(80, mult) / mult)
    arch = [[b.format(last=last) for b in stage] for stage in _MNV3_LARGE_REDUCED_TAIL]
    se_layer = functools.partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=torch.nn.ReLU,
                                 rd_round_fn=round_channels)
    model_kwargs = dict(
        block_args=decode_arch_def(arch),
        num_features=round_channels(640, mult),
        stem_size=16,
        round_chs_fn=functools.partial(round_channels, multiplier=mult),
        norm_layer=functools.partial(torch.nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=get_act_layer(kwargs.pop("act_layer", "hard_swish")),
        se_layer=se_layer,
        **kwargs,
    )
    return _create_mnv3(name, False, **model_kwargs)


@dataclass(frozen=True)
class SourceLayout:
    """A foreign checkpoint layout: how to recognise it and how to order its tensors.

    order(key) -> sort key putting the tensors in module execution order; it raises KeyError
    for a key the layout does not have. bn_eps: the eps the source's BatchNorms use.
    """

    name: str
    marker: str  # a key every checkpoint of this layout has
    order: Callable[[str], tuple]
    bn_eps: float = TIMM_BN_EPS

    def converter(self, target: str) -> Callable[[dict], dict]:
        """The converter of this layout into timm's ``target`` model."""
        fn = functools.partial(convert_layout, layout=self, target=target)
        fn.__doc__ = f"{self.name} state dict -> timm {target}"
        return fn


def _param_rank(key: str, leaf: str) -> int:
    try:
        return _PARAM_ORDER[leaf]
    except KeyError:
        raise KeyError(f"unexpected tensor {key!r}") from None


def sequential_order(names: dict[str, int]) -> Callable[[str], tuple]:
    """Order of nn.Sequential-style keys: numeric children by number, named ones by ``names``.

    Only siblings are compared, so ``names`` just has to rank each set of named siblings.
    """

    def order(key: str) -> tuple:
        *path, leaf = key.split(".")
        parts = []
        for p in path:
            if p.isdigit():
                parts.append((0, int(p)))
            elif p in names:
                parts.append((1, names[p]))
            else:
                raise KeyError(f"unexpected module {p!r} in {key!r}")
        return (*parts, (2, _param_rank(key, leaf)))

    return order


@functools.lru_cache(maxsize=32)
def _target_layout(target: str, num_classes: int, in_chans: int) -> tuple[tuple[str, tuple], ...]:
    with torch.device("meta"):
        model = timm.create_model(target, num_classes=num_classes, in_chans=in_chans)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith(_SKIP))


def _trim(shape: tuple) -> tuple:
    return shape[:2] + tuple(d for d in shape[2:] if d != 1)


def _fits(src: tuple, dst: tuple) -> bool:
    """Same shape, or a Linear weight (O, I) against a 1x1 conv weight (O, I, 1, 1)."""
    return src == dst or (len(src) >= 2 and len(dst) >= 2 and _trim(src) == _trim(dst))


def shift_bn_eps(sd: dict, from_eps: float, to_eps: float = TIMM_BN_EPS) -> dict:
    """Fold a BatchNorm eps difference into running_var: exact in eval mode.

    BN(x) = (x - mean) / sqrt(var + eps); var' = var + from_eps - to_eps keeps it identical.
    """
    delta = from_eps - to_eps
    if delta == 0:
        return dict(sd)
    return {k: (v + delta if k.endswith("running_var") else v) for k, v in sd.items()}


def convert_layout(sd: dict, layout: SourceLayout, target: str) -> dict:
    """Convert a ``layout`` state dict into timm's ``target`` layout by structure (module doc)."""
    if layout.marker not in sd:
        raise KeyError(f"not a {layout.name} state dict (no {layout.marker})")
    src = sorted((k for k in sd if not k.endswith(_SKIP)), key=layout.order)
    weights = [k for k in src if sd[k].dim() >= 2]
    if not weights:
        raise KeyError(f"not a {layout.name} state dict (no weights)")
    # Build the target with the source's head and input width, so every tensor pairs.
    dst = _target_layout(target, int(sd[weights[-1]].shape[0]), int(sd[weights[0]].shape[1]))
    out = pair_in_order(sd, src, dst, f"{layout.name} -> timm {target}: {len(src)} tensors in the checkpoint, "
                                      f"{len(dst)} in the model, paired in execution order")
    return shift_bn_eps(out, layout.bn_eps)


def pair_in_order(sd: dict, src: list[str], dst: list[tuple[str, tuple]], context: str) -> dict:
    """``{dst key: sd[src key]}`` pairing the two lists in order, each pair checked for the same
    role (weight/bias/running_mean...) and shape; any misfit raises CheckpointMismatchError
    listing every missing, unexpected and mis-shaped tensor."""
    out, mismatched = {}, []
    for s, (d, shape) in zip(src, dst):
        v = sd[s]
        same_role = s.rsplit(".", 1)[-1] == d.rsplit(".", 1)[-1]
        if not same_role or not _fits(tuple(v.shape), shape):
            mismatched.append((f"{s} -> {d}", tuple(v.shape), shape))
            continue
        out[d] = v.reshape(shape)
    if mismatched or len(src) != len(dst):
        n = min(len(src), len(dst))
        raise CheckpointMismatchError(missing=[d for d, _ in dst[n:]], unexpected=src[n:],
                                      mismatched=mismatched, context=context)
    return out


def register_timm_models(family: str, variants: dict[str, dict], layouts: dict[str, SourceLayout] | None = None,
                         **shared) -> None:
    """Register each variant (name -> register_model metadata) as timm's model of that name.

    layouts: format name -> source layout; each variant gets that layout's converter into it
    (a variant's own ``layouts`` entry replaces the shared one).
    """
    for name, meta in variants.items():
        meta = {**shared, **meta}
        own = meta.pop("layouts", layouts) or {}
        converters = {fmt: layout.converter(name) for fmt, layout in own.items()}
        register_model(family, name=name, converters=converters, **meta)(timm_builder(name))


# --- torchvision (mobilenet_v2, mobilenet_v3_large/small, mnasnet*) -----------------------
# Named siblings: features/layers before classifier, fc1 before fc2 (SE); the rest are numbered.
_TORCHVISION_ORDER = sequential_order(
    {"features": 0, "layers": 0, "classifier": 1, "conv": 0, "block": 0, "fc1": 0, "fc2": 1})

TORCHVISION_MOBILENETV2 = SourceLayout("torchvision MobileNetV2", "features.0.0.weight", _TORCHVISION_ORDER)
# MobileNetV3: classifier.0 is the pre-logits Linear, timm's conv_head (1x1 conv); BN eps 1e-3.
TORCHVISION_MOBILENETV3 = SourceLayout("torchvision MobileNetV3", "classifier.3.weight", _TORCHVISION_ORDER,
                                       bn_eps=1e-3)
TORCHVISION_MNASNET = SourceLayout("torchvision MNASNet", "layers.0.weight", _TORCHVISION_ORDER)

# --- EfficientNet-PyTorch (lukemelas) -----------------------------------------------------
_EFFNET_PT_TOP = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc")
_EFFNET_PT_BLOCK = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_se_reduce", "_se_expand",
                    "_project_conv", "_bn2")


def _effnet_pytorch_order(key: str) -> tuple:
    """``_conv_stem``, ``_bn0``, ``_blocks.i.<child>`` (flat, in order), ``_conv_head``, ``_bn1``, ``_fc``."""
    parts = key.split(".")
    try:
        if parts[0] == "_blocks" and len(parts) == 4:
            return (_EFFNET_PT_TOP.index("_blocks"), int(parts[1]), _EFFNET_PT_BLOCK.index(parts[2]),
                    _param_rank(key, parts[3]))
        if len(parts) == 2:
            return (_EFFNET_PT_TOP.index(parts[0]), 0, 0, _param_rank(key, parts[1]))
    except ValueError:
        pass
    raise KeyError(f"unexpected key {key!r} for the EfficientNet-PyTorch layout")


# TF-trained weights: BN eps 1e-3.
EFFICIENTNET_PYTORCH = SourceLayout("EfficientNet-PyTorch", "_conv_stem.weight", _effnet_pytorch_order,
                                    bn_eps=1e-3)
