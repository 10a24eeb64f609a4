"""Segmentation metrics from a confusion matrix: mIoU, pixel accuracy, per-class IoU (ignore 255)."""

from __future__ import annotations

import numpy as np
import torch


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int = 255) -> torch.Tensor:
    """[K,K] counts (rows: true class, columns: predicted) over pixels whose label is not ``ignore``."""
    keep = (target != ignore) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(cm, classes: list[str]) -> dict:
    """miou (mean over classes present in labels or predictions), pixel_acc, per_class_iou
    {name: IoU or None when the class appears in neither}."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    total = cm.sum()
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_acc": float(tp.sum() / total) if total else 0.0,
            "per_class_iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)},
            "pixels": int(total)}
