"""1-D networks for sensor windows [B, C, T] -> logits [B, K]: ``resnet1d`` and
``residual_mobilenet1d`` (the two single-network baselines and FusionActNet's parts).

FusionActNet (Saha et al., arXiv 2310.02011) names its parts "Residual network" and "Residual
MobileNet" but publishes no widths, depths or kernel sizes in the text we could read; the
configurations below are ours (said here and in the registry notes):

- ``resnet1d``: input BatchNorm (per-channel standardisation learnt from the training data,
  so an exported model takes raw sensor values), a 7-tap stem conv to 32 channels, then three
  stages of two ResNet basic blocks with 5-tap kernels at widths 32/64/128 (strides 1/2/2),
  global average pooling over time, dropout and a Linear classifier;
- ``residual_mobilenet1d``: input BatchNorm, a 3-tap stem to 16 channels, MobileNetV2-style
  inverted residuals with depthwise 5-tap convs (expansion t, width c, repeats n, stride s):
  (1,16,1,1) (4,24,2,2) (4,32,2,2) (4,64,2,2) (4,96,1,1), a 1x1 head conv to 256, pooling,
  dropout, Linear.

Both subclass :class:`~edgevision.models.base.EdgeModel` (timm's model API: forward_features,
forward_head(pre_logits), forward_intermediates, reset_classifier, ...) with the input check
replaced by a sequence one: a [B, C, T] float tensor whose C is ``in_chans`` and whose T is
``window`` (the window the model was built for; ``window=None`` accepts any length).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgevision.layers.conv1d import BasicBlock1d, ConvBnAct1d, InvertedResidual1d
from edgevision.models.base import (
    EdgeModel,
    InputShapeError,
    check_num_classes,
    is_fx_tracing,
    linear_head,
)
from edgevision.registry import register_model

# UCI HAR's published window: 128 steps (2.56 s at 50 Hz) of 9 inertial channels.
DEFAULT_WINDOW = 128
DEFAULT_CHANS = 9
# Sensor values are standardised inside the model (input BatchNorm): no outside mean/std.
SEQUENCE_CFG = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, interpolation="", num_classes=6,
                    dataset="uci-har (architecture default; no released weights)", license=None)


def check_sequence_input(model: nn.Module, x) -> None:
    """One clear line unless ``x`` is a float [B, C, T] batch with C == model.in_chans and
    T == model.window (when the model has one)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return
    name = getattr(model, "model_name", None) or type(model).__name__
    in_chans = model.in_chans
    if is_fx_tracing():
        torch._assert(x.shape[1] == in_chans, f"{name} expects {in_chans} sensor channels")
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of sensor windows [B, C, T]; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects float sensor windows; got dtype {x.dtype} (convert with .float())")
    if x.dim() != 3:
        raise InputShapeError(f"{name} expects a 3-D batch of sensor windows [B, C, T]; got shape "
                              f"{tuple(x.shape)} (add the batch dimension with x[None] for one window)")
    if x.shape[1] != in_chans:
        raise InputShapeError(f"{name} was built for {in_chans} sensor channels but the input has "
                              f"{x.shape[1]} (shape {tuple(x.shape)}); rebuild with in_chans={x.shape[1]} "
                              f"or select the channels the model was trained on")
    window = getattr(model, "window", None)
    if window is not None and x.shape[2] != window:
        raise InputShapeError(f"{name} was built for windows of {window} steps but the input has "
                              f"{x.shape[2]} (shape {tuple(x.shape)}); re-window the data to {window} "
                              f"steps or rebuild with window={x.shape[2]}")
    if x.shape[2] < model.min_length:
        raise InputShapeError(f"{name} needs windows of at least {model.min_length} steps; got {x.shape[2]}")


def check_window(window) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (steps per window) or None (any length); got {window!r}")
    return window


def _check_no_drop_path(name: str, drop_path_rate: float) -> None:
    if drop_path_rate:
        raise ValueError(f"{name} has no stochastic depth; drop_path_rate must be 0 (got {drop_path_rate}); "
                         f"use drop_rate for classifier dropout")


class SequenceNet(EdgeModel):
    """EdgeModel over [B, C, T]: ``stem`` then ``stages``, average pooling over time, Linear."""

    min_input_size = 0  # no 2-D minimum: the sequence check below uses min_length
    min_length = 1

    def _init_common(self, in_chans: int, num_classes: int, window: int | None, drop_rate: float):
        check_num_classes(num_classes)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.window = check_window(window)
        self.drop_rate = drop_rate

    def check_input(self, x: torch.Tensor) -> None:
        check_sequence_input(self, x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2) if self.global_pool == "avg" else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


class ResNet1d(SequenceNet):
    """Stem conv, stages of ResNet basic blocks over time, pooling, Linear."""

    def __init__(self, in_chans: int = DEFAULT_CHANS, num_classes: int = 6, window: int | None = DEFAULT_WINDOW,
                 widths=(32, 64, 128), depths=(2, 2, 2), strides=(1, 2, 2), kernel_size: int = 5,
                 stem_kernel: int = 7, drop_rate: float = 0.2):
        super().__init__()
        self._init_common(in_chans, num_classes, window, drop_rate)
        self.stem = nn.Sequential(nn.BatchNorm1d(in_chans, affine=False),
                                  ConvBnAct1d(in_chans, widths[0], stem_kernel))
        stages, info, prev, reduction = [], [], widths[0], 1
        for i, (w, d, s) in enumerate(zip(widths, depths, strides)):
            blocks = [BasicBlock1d(prev if j == 0 else w, w, kernel_size, s if j == 0 else 1) for j in range(d)]
            stages.append(nn.Sequential(*blocks))
            prev, reduction = w, reduction * s
            info.append(dict(num_chs=w, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        self.num_features = prev
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(prev, num_classes)
        self._init_weights()


# (expansion t, width c, repeats n, first stride s): MobileNetV2's table, shortened for windows
# of ~100 steps (total stride 8) and narrowed for sensor data.
_MBV1D_CFG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))


class ResidualMobileNet1d(SequenceNet):
    """Stem conv, inverted residuals with depthwise 1-D convs, 1x1 head conv, pooling, Linear."""

    def __init__(self, in_chans: int = DEFAULT_CHANS, num_classes: int = 6, window: int | None = DEFAULT_WINDOW,
                 cfg=_MBV1D_CFG, stem_width: int = 16, head_width: int = 256, kernel_size: int = 5,
                 drop_rate: float = 0.2):
        super().__init__()
        self._init_common(in_chans, num_classes, window, drop_rate)
        self.stem = nn.Sequential(nn.BatchNorm1d(in_chans, affine=False),
                                  ConvBnAct1d(in_chans, stem_width, 3, act=nn.ReLU6))
        stages, info, prev, reduction = [], [], stem_width, 1
        for i, (t, c, n, s) in enumerate(cfg):
            blocks = [InvertedResidual1d(prev if j == 0 else c, c, kernel_size, s if j == 0 else 1, t)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            prev, reduction = c, reduction * s
            info.append(dict(num_chs=c, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.feature_info = info
        self.conv_head = ConvBnAct1d(prev, head_width, 1, act=nn.ReLU6)
        self.num_features = head_width
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(head_width, num_classes)
        self._init_weights()

    def _features_tail(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(x)


_PAPER = "Decoding Human Activities: Analyzing Wearable Accelerometer and Gyroscope Data for Activity " \
         "Recognition (FusionActNet; Saha et al., arXiv 2310.02011)"


def _build(cls, name, num_classes, in_chans, drop_path_rate, **kwargs):
    _check_no_drop_path(name, drop_path_rate)
    return cls(in_chans=in_chans, num_classes=num_classes, **kwargs)


@register_model("resnet1d", task="sequence", paper=_PAPER, input_size=(DEFAULT_CHANS, DEFAULT_WINDOW),
                cfg=SEQUENCE_CFG, notes="1-D ResNet (basic blocks); widths/depths/kernels are ours (the paper "
                "gives none): 32/64/128, 2 blocks each, 5-tap")
def resnet1d(num_classes: int = 6, in_chans: int = DEFAULT_CHANS, drop_path_rate: float = 0.0, **kwargs):
    return _build(ResNet1d, "resnet1d", num_classes, in_chans, drop_path_rate, **kwargs)


@register_model("residual_mobilenet1d", task="sequence", paper=_PAPER, input_size=(DEFAULT_CHANS, DEFAULT_WINDOW),
                cfg=SEQUENCE_CFG, notes="1-D Residual MobileNet (inverted residuals, depthwise 5-tap); "
                "configuration is ours (the paper gives none)")
def residual_mobilenet1d(num_classes: int = 6, in_chans: int = DEFAULT_CHANS, drop_path_rate: float = 0.0, **kwargs):
    return _build(ResidualMobileNet1d, "residual_mobilenet1d", num_classes, in_chans, drop_path_rate, **kwargs)
