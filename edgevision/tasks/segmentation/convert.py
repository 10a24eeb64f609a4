"""torchvision segmentation state dicts -> ours (``create_model(name, checkpoint=...)``).

torchvision's ``lraspp_mobilenet_v3_large`` / ``deeplabv3_mobilenet_v3_large`` keep the backbone
as ``backbone.<i>.*`` (an IntermediateLayerGetter over ``mobilenet_v3_large().features``) and the
heads as ``classifier.*`` / ``aux_classifier.*``. Our models use torchvision's head classes under
the same names, so heads copy as they are; the backbone is timm's network, paired with
torchvision's by execution order exactly as the classifier converters do
(:mod:`edgevision.models._mobile_cnn`): every pair must agree on role and shape, and the BN eps
difference (torchvision 1e-3, timm 1e-5) is folded into ``running_var`` (exact in eval).
"""

from __future__ import annotations

import functools

import torch

from edgevision.models._mobile_cnn import (
    _SKIP,
    _TORCHVISION_ORDER,
    pair_in_order,
    shift_bn_eps,
)

TORCHVISION_BN_EPS = 1e-3
_PREFIX = "backbone."


@functools.lru_cache(maxsize=8)
def _target_backbone(name: str, num_classes: int, aux: bool) -> tuple[tuple[str, tuple], ...]:
    from edgevision.registry import model_info

    with torch.device("meta"):
        model = model_info(name).builder(num_classes=num_classes, aux_loss=aux) if aux else \
            model_info(name).builder(num_classes=num_classes)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()
                 if k.startswith(_PREFIX) and not k.endswith(_SKIP))


def _num_classes(sd: dict) -> int:
    for k in ("classifier.high_classifier.weight", "classifier.4.weight"):  # LR-ASPP, DeepLabHead
        if k in sd:
            return int(sd[k].shape[0])
    raise KeyError("not a torchvision segmentation state dict (no classifier.high_classifier / classifier.4)")


def convert_torchvision(sd: dict, name: str) -> dict:
    """torchvision state dict of ``name``'s torchvision twin -> our layout (module doc)."""
    if "backbone.0.0.weight" not in sd:
        raise KeyError("not a torchvision segmentation state dict (no backbone.0.0.weight)")
    aux = any(k.startswith("aux_classifier.") for k in sd)
    dst = _target_backbone(name, _num_classes(sd), aux)
    src = sorted((k for k in sd if k.startswith(_PREFIX) and not k.endswith(_SKIP)),
                 key=lambda k: _TORCHVISION_ORDER(k[len(_PREFIX):]))
    out = pair_in_order(sd, src, dst, f"torchvision -> {name}: backbone tensors paired in execution order")
    out = shift_bn_eps(out, TORCHVISION_BN_EPS)
    out.update({k: v for k, v in sd.items() if not k.startswith(_PREFIX)})  # heads: same classes, same keys
    return out


def torchvision_converter(name: str):
    fn = functools.partial(convert_torchvision, name=name)
    fn.__doc__ = f"torchvision state dict -> {name}"
    return fn
