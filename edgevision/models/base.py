"""What every edgevision classifier shares: the timm-like surface and input checks.

A family's model class subclasses :class:`EdgeModel` and provides
- ``self.feature_info``: list of ``dict(num_chs=, reduction=, module=)``, one per stage
  output that ``features_only`` can return, in order;
- ``forward_intermediates(x) -> list[Tensor]``: the maps described by feature_info;
- ``forward_features(x)``, ``forward_head(x, pre_logits=False)``, ``reset_classifier(n)``;
- attributes ``num_classes``, ``num_features``, ``in_chans``, ``min_input_size`` (smallest
  side in pixels the architecture accepts) and, optionally, ``input_multiple`` (sides must be
  a multiple of it; 1 when any size works).

``forward`` validates the input first, so a wrong channel count or a too-small image is
a one-line error naming what was expected instead of a shape error deep inside.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class InputShapeError(ValueError):
    """The input tensor does not fit the model (channels, rank, or spatial size)."""


def linear_head(num_features: int, num_classes: int) -> nn.Module:
    """The classifier of every family: a Linear, or Identity for num_classes=0 (features)."""
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


class EdgeModel(nn.Module):
    in_chans: int = 3
    min_input_size: int = 32
    input_multiple: int = 1
    num_classes: int
    num_features: int
    feature_info: list

    def check_input(self, x: torch.Tensor) -> None:
        """Raise InputShapeError unless x is an NCHW batch this model can run."""
        if torch.jit.is_scripting():
            return
        name = type(self).__name__
        if x.dim() != 4:
            raise InputShapeError(
                f"{name} expects a 4-D batch (N, C, H, W); got shape {tuple(x.shape)}"
            )
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        if c != self.in_chans:
            raise InputShapeError(
                f"{name} was built for in_chans={self.in_chans} but the input has {c} "
                f"channels (shape {tuple(x.shape)}); rebuild with in_chans={c} or convert the image"
            )
        if h < self.min_input_size or w < self.min_input_size:
            raise InputShapeError(
                f"{name} needs inputs of at least {self.min_input_size}x{self.min_input_size} "
                f"pixels; got {h}x{w}"
            )
        m = self.input_multiple
        if m > 1 and (h % m or w % m):
            raise InputShapeError(
                f"{name} needs height and width that are multiples of {m}; got {h}x{w}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each of ``self.stages`` after ``self.stem`` (when there is one); families
        whose maps are not simply the stage outputs override this."""
        stem = getattr(self, "stem", None)
        if stem is not None:
            x = stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for num_classes (0: none); families whose head is not ``head``
        (or that have two) override this."""
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))


class FeatureInfo:
    """timm-style accessor over the feature_info dicts of the selected outputs."""

    def __init__(self, info: list[dict]):
        self.info = [dict(d) for d in info]

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self.info]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self.info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self.info]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, i):
        return self.info[i]

    def __iter__(self):
        return iter(self.info)


class FeatureNet(nn.Module):
    """Wraps an EdgeModel so that forward returns its multi-scale feature maps."""

    def __init__(self, model: EdgeModel, out_indices: tuple[int, ...] | None = None):
        super().__init__()
        n = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(n))
        out_indices = tuple(i % n if i < 0 else i for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < n]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: the model has {n} feature levels")
        model.reset_classifier(0)
        self.model = model
        self.out_indices = out_indices
        self.feature_info = FeatureInfo([model.feature_info[i] for i in out_indices])
        self.in_chans = model.in_chans

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.model.check_input(x)
        feats = self.model.forward_intermediates(x)
        return [feats[i] for i in self.out_indices]
