"""create_model: build a registered model, optionally wrap it for features, load weights."""

from __future__ import annotations

import torch.nn as nn

from edgevision.checkpoints import load_checkpoint
from edgevision.models.base import FeatureNet
from edgevision.registry import model_info


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    drop_path_rate: float = 0.0,
    checkpoint: str | None = None,
    pretrained: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` (timm-like signature).

    checkpoint: a file in our format, timm's, torchvision's or the family's official
    format (detected by its keys and converted), loaded strictly before any
    ``features_only`` wrapping so the classifier weights are checked too. A checkpoint
    whose head does not match ``num_classes`` fails with the key diff; fine-tuning with a
    new head is done by the training engine.

    pretrained: fetch the registered official weights once into the cache
    (:mod:`edgevision.hub`) and load them like ``checkpoint``.
    """
    info = model_info(name)
    if pretrained:
        if checkpoint is not None:
            raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
        from edgevision.hub import fetch_weights

        checkpoint = fetch_weights(name)
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    model = info.builder(
        num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs
    )
    model.model_name = name
    if checkpoint is not None:
        model.checkpoint_format = load_checkpoint(model, checkpoint, info.converters, model_name=name)
    if features_only:
        model = FeatureNet(model, out_indices)
        model.model_name = name
    return model
