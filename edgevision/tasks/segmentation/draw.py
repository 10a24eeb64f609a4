"""Pictures of segmentations: a colour overlay drawn with torchvision's helper."""

from __future__ import annotations

import torch


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours (VOC's bit-interleaved palette; class 0 black)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def draw_overlay(image: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float = 0.55,
                 skip_background: bool = True) -> torch.Tensor:
    """uint8 [3,H,W] image with each predicted class (label map [H,W]) painted in its colour."""
    from torchvision.utils import draw_segmentation_masks

    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    first = 1 if skip_background else 0
    ids = list(range(first, num_classes))
    masks = torch.stack([labels == k for k in ids]) if ids else torch.zeros(0, *labels.shape, dtype=torch.bool)
    if not masks.any():
        return image
    cols = palette(num_classes)[first:]
    return draw_segmentation_masks(image.cpu(), masks.cpu(), alpha=alpha, colors=cols)
