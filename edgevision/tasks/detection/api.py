"""What edgevision adds to torchvision's detectors: checked inputs, the export view, the size knob.

The detectors are torchvision's own classes (:class:`torchvision.models.detection.SSD`,
:class:`~torchvision.models.detection.RetinaNet`) with this mixin in front, so training losses,
anchor matching, box coding and NMS are torchvision's. The mixin

- checks images and targets before torchvision does (its checks are asserts deep inside, and a
  label >= num_classes is not checked at all: it indexes out of range in the loss), raising one
  ValueError/TypeError line that says what is wrong;
- gives ``export_forward(x)``: backbone + neck + heads on an already resized and normalised
  batch, returning the raw head tensors (no anchors, no decoding, no NMS) for ONNX export,
  counting and benchmarking, with ``export_output_names`` and ``export_input_size``;
- makes ``img_size`` settable (``create_model(..., img_size=S)`` sets it): the size the model's
  own GeneralizedRCNNTransform resizes images to.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    h, w = size
    return int(h), int(w)


class DetectorAPI:
    """Mixin placed before a torchvision detector class (see the module docstring)."""

    task = "detection"
    in_chans = 3
    export_output_names = ("cls_logits", "bbox_regression")
    min_input_size = 32
    input_multiple = 1

    # --- size ---------------------------------------------------------------------------

    @property
    def img_size(self) -> tuple[int, int]:
        return self._img_size

    @img_size.setter
    def img_size(self, size) -> None:
        h, w = _size_hw(size)
        self._img_size = (h, w)
        t = self.transform
        t.min_size, t.max_size = (min(h, w),), max(h, w)
        if t.fixed_size is not None:  # SSD: resized to exactly this size; torchvision's order is (w, h)
            t.fixed_size = (w, h)

    @property
    def export_input_size(self) -> tuple[int, int]:
        return self._img_size

    # --- checked forward ----------------------------------------------------------------

    def forward(self, images, targets=None):
        """torchvision's detection API: list of [3,H,W] float images in [0, 1] (or an [N,3,H,W]
        batch); train mode with targets -> dict of losses; eval mode -> list of
        {boxes (xyxy, input pixels), scores, labels}."""
        images = self._check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("in train mode the detector needs targets (a list of dicts with "
                                 "'boxes' [N,4] xyxy and 'labels' [N]); call model.eval() for detections")
            self._check_targets(targets, images)
        elif targets is not None:
            self._check_targets(targets, images)
        return super().forward(images, targets)

    def _check_images(self, images) -> list[torch.Tensor]:
        name = type(self).__name__
        if isinstance(images, torch.Tensor):
            if images.dim() != 4:
                raise ValueError(f"{name} takes a list of [3,H,W] images or an [N,3,H,W] batch; "
                                 f"got a tensor of shape {tuple(images.shape)}")
            images = list(images.unbind(0))
        if not isinstance(images, (list, tuple)) or not images:
            raise TypeError(f"{name} takes a non-empty list of [3,H,W] image tensors; got {type(images).__name__}")
        p = next(self.parameters(), None)
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor):
                raise TypeError(f"image {i} is a {type(im).__name__}, not a torch.Tensor [3,H,W]")
            if im.dim() != 3 or im.shape[0] != self.in_chans:
                raise ValueError(f"image {i} has shape {tuple(im.shape)}; {name} takes RGB images "
                                 f"[{self.in_chans},H,W] (convert grey or RGBA images to RGB)")
            if not im.is_floating_point():
                raise TypeError(f"image {i} has dtype {im.dtype}; give float images scaled to [0, 1] "
                                f"(e.g. torchvision.transforms.functional.to_dtype(img, torch.float32, scale=True))")
            if min(im.shape[1:]) < 1:
                raise ValueError(f"image {i} is empty (shape {tuple(im.shape)})")
            if p is not None and im.device != p.device:
                raise ValueError(f"{name} is on {p.device} but image {i} is on {im.device}; move one with .to()")
        return list(images)

    def _check_targets(self, targets, images) -> None:
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(f"targets must be a list with one dict per image ({len(images)}); got {n}")
        k = self.num_classes
        for i, (t, im) in enumerate(zip(targets, images)):
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} must be a dict with 'boxes' [N,4] (xyxy pixels) and 'labels' [N]")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 \
                    or not boxes.is_floating_point():
                raise ValueError(f"target {i}: 'boxes' must be a float tensor [N,4] (x1,y1,x2,y2); "
                                 f"got {getattr(boxes, 'shape', type(boxes).__name__)}")
            if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() \
                    or labels.shape[0] != boxes.shape[0]:
                raise ValueError(f"target {i}: 'labels' must be an int64 tensor [N] with one label per box "
                                 f"({boxes.shape[0]} boxes)")
            if boxes.numel() and not torch.isfinite(boxes).all():
                raise ValueError(f"target {i}: boxes contain NaN or infinite coordinates")
            bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
            if bad.numel():
                j = int(bad[0])
                raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} has zero or negative area "
                                 f"(needs x2 > x1 and y2 > y1); drop such boxes from the annotations "
                                 f"({bad.numel()} in this image)")
            if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= k):
                v = int(labels.min()) if int(labels.min()) < 1 else int(labels.max())
                raise ValueError(f"target {i}: label {v} out of range: labels are 1..{k - 1} (0 is the "
                                 f"background) for num_classes={k}; build with num_classes=K+1 for K classes")

    # --- export view --------------------------------------------------------------------

    def export_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs of an already resized and normalised batch [B,3,H,W]:
        (cls_logits [B, anchors, num_classes], bbox_regression [B, anchors, 4])."""
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        out = self.head(feats)
        return out["cls_logits"], out["bbox_regression"]

    def export_module(self) -> nn.Module:
        """An nn.Module whose forward is :meth:`export_forward` (for exporters and counters)."""
        return ExportView(self)


class ExportView(nn.Module):
    """``forward = model.export_forward``; shares the model's weights."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.in_chans = getattr(model, "in_chans", 3)

    def forward(self, x: torch.Tensor):
        return self.model.export_forward(x)
