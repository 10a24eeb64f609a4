"""M-MobileNet (Kurniawan, Satrya & Kamalov, "Lightweight Fish Classification Model for
Sustainable Marine Management: Indonesian Case", arXiv 2401.02278): MobileNet with slimmer top
layers and two outputs, the species and a consumability verdict.

What the paper says: the MobileNet backbone is kept; its top (the "standard head") is replaced
by a narrower fully connected layer with batch normalisation and Swish, using "only 50% of the
top layer parameters" — about 531k against the about 1,025k of MobileNet's top, which is the
ImageNet classifier ``Linear(1024 -> 1000)`` = 1,024,000 weights + 1,000 biases = 1,025,000
(their 531k matches ``Dense(1024 -> 512)`` + BatchNorm + ``Dense(512 -> 8)`` as Keras counts
it, i.e. 51.8%). The consumability verdict comes from the predicted species and a species ->
attribute table (FishBase).

Ours (``m_mobilenetv1_100``, ``m_mobilenetv2_100`` on timm's MobileNetV1/V2, so their ImageNet
weights load into ``backbone``):

    pooled features [B, F] -> Linear(F -> h, no bias) -> BatchNorm1d(h) -> Swish (SiLU)
        -> Dropout -> species: Linear(h -> K)  and  attribute: Linear(h -> 1)

trained jointly (cross-entropy on the species + binary cross-entropy on the attribute, whose
target is the table's value for the true species). ``h`` is the widest multiple of 8, at most
F/2 (the paper's 512 for F=1024), for which the whole top — both outputs — stays within 50% of
the standard head of the same backbone (``Linear(F -> 1000)``: 1,025,000 parameters for V1,
1,281,000 for V2); the paper's own 512-wide layer is 51.8%, so we take h a little narrower
(488 for V1 with 10 classes). :func:`head_param_counts` gives the exact figures. The verdict is
read two ways: from the attribute output, and from the table at the predicted species (the
paper's way); both are evaluated.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn

from edgevision.models.base import check_input_shape, check_num_classes
from edgevision.registry import register_model

STANDARD_CLASSES = 1000  # MobileNet's standard top: the ImageNet classifier


def standard_head_params(num_features: int, num_classes: int = STANDARD_CLASSES) -> int:
    """Parameters of MobileNet's standard top: Linear(num_features -> num_classes) with bias."""
    return num_features * num_classes + num_classes


def m_head_params(num_features: int, hidden: int, num_classes: int) -> int:
    """Parameters of our top: Linear(F->h, no bias) + BatchNorm(h) affine + Linear(h->K) + Linear(h->1)."""
    return num_features * hidden + 2 * hidden + (hidden + 1) * num_classes + (hidden + 1)


def default_hidden(num_features: int, num_classes: int, ratio: float = 0.5) -> int:
    """Widest multiple of 8, at most F/2, keeping the top within ``ratio`` of the standard head."""
    budget = ratio * standard_head_params(num_features)
    h = (num_features // 2) // 8 * 8
    while h > 8 and m_head_params(num_features, h, num_classes) > budget:
        h -= 8
    return h


class MMobileNet(nn.Module):
    """timm MobileNet backbone (pooled features) + the slim two-output top."""

    def __init__(self, backbone: str = "mobilenetv1_100", num_classes: int = 1000, in_chans: int = 3,
                 hidden: int | None = None, drop_rate: float = 0.2, drop_path_rate: float = 0.0):
        super().__init__()
        check_num_classes(num_classes)
        self.backbone = timm.create_model(backbone, num_classes=0, in_chans=in_chans,
                                          drop_path_rate=drop_path_rate)
        self.num_features = self.backbone.num_features
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.hidden = hidden or default_hidden(self.num_features, max(num_classes, 1))
        # timm's preprocessing of the backbone; no released M-MobileNet weights (the backbone's
        # ImageNet weights load through the "timm" converter: --checkpoint in training)
        self.pretrained_cfg = dict(self.backbone.pretrained_cfg, first_conv="backbone.conv_stem",
                                   classifier="species_head", url=None, hf_hub_id=None, num_classes=0)
        self._build_top(num_classes)

    def _build_top(self, num_classes: int) -> None:
        self.num_classes = num_classes
        if num_classes == 0:  # features only: no top (the fine-tuning engine loads the rest)
            self.top, self.species_head, self.attribute_head = nn.Identity(), nn.Identity(), None
            return
        self.top = nn.Sequential(nn.Linear(self.num_features, self.hidden, bias=False), nn.BatchNorm1d(self.hidden),
                                 nn.SiLU(inplace=True), nn.Dropout(self.drop_rate))
        self.species_head = nn.Linear(self.hidden, num_classes)
        self.attribute_head = nn.Linear(self.hidden, 1)

    # --- timm's model API ---------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.top(self.backbone.forward_head(x, pre_logits=True))
        return h if pre_logits else self.species_head(h)

    def forward(self, x: torch.Tensor, with_attribute: bool = False):
        """Species logits [B, K]; ``with_attribute=True``: (species logits, attribute logit [B])."""
        check_input_shape(self, x)  # one clear line for a wrong channel count, rank or dtype
        h = self.forward_head(self.forward_features(x), pre_logits=True)
        if not with_attribute:
            return self.species_head(h)
        if self.attribute_head is None:
            raise ValueError("this M-MobileNet was built with num_classes=0 (features only): it has no outputs")
        return self.species_head(h), self.attribute_head(h)[:, 0]

    def get_classifier(self) -> nn.Module:
        return self.species_head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh top for ``num_classes`` species (0: features only), same hidden width."""
        check_num_classes(num_classes)
        if global_pool is not None:
            self.backbone.reset_classifier(0, global_pool)
        self._build_top(num_classes)

    def head_param_counts(self) -> dict:
        """Exact parameter counts: our top (both outputs) against MobileNet's standard head."""
        ours = sum(p.numel() for m in (self.top, self.species_head, self.attribute_head) if m is not None
                   for p in m.parameters())
        std = standard_head_params(self.num_features)
        same_k = standard_head_params(self.num_features, self.num_classes) if self.num_classes else 0
        return {"head_params": ours, "hidden": self.hidden, "num_features": self.num_features,
                "standard_head": f"Linear({self.num_features} -> {STANDARD_CLASSES}) (MobileNet's ImageNet top)",
                "standard_head_params": std, "ratio": ours / std,
                "linear_head_same_classes_params": same_k}

    def export_module(self) -> nn.Module:
        """A module whose forward returns (species logits, attribute probability) for export."""
        return _BothOutputs(self)


class _BothOutputs(nn.Module):
    def __init__(self, model: MMobileNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        species, attr = self.model(x, with_attribute=True)
        return species, torch.sigmoid(attr)


def convert_timm(state_dict: dict) -> dict:
    """timm's (ImageNet) MobileNet state dict -> ours: the backbone's keys under ``backbone.``;
    the ImageNet classifier is dropped (our top is new)."""
    if any(k.startswith("backbone.") for k in state_dict):
        return state_dict
    return {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("classifier.")}


_PAPER = ("Lightweight Fish Classification Model for Sustainable Marine Management: Indonesian Case "
          "(M-MobileNet; Kurniawan, Satrya & Kamalov, arXiv 2401.02278)")


def _register(name: str, backbone: str, notes: str):
    @register_model("m_mobilenet", name=name, task="attributes", paper=_PAPER, converters={"timm": convert_timm},
                    source="paper abstract: up to 97% (species and consumability) on 37,462 fish images",
                    notes=notes)
    def build(num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0, **kwargs):
        return MMobileNet(backbone, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                          **kwargs)

    return build


m_mobilenetv1_100 = _register("m_mobilenetv1_100", "mobilenetv1_100",
                              "timm mobilenetv1_100 backbone (its ImageNet weights load); slim two-output top")
m_mobilenetv2_100 = _register("m_mobilenetv2_100", "mobilenetv2_100",
                              "timm mobilenetv2_100 backbone (its ImageNet weights load); slim two-output top")
