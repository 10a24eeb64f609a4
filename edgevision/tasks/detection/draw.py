"""Pictures of detections: boxes, labels and scores drawn with torchvision's helper."""

from __future__ import annotations

from pathlib import Path

import torch


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, labels, scores=None, classes=None,
                    width: int = 2) -> torch.Tensor:
    """uint8 [3,H,W] image with boxes (xyxy pixels) labelled ``class score``."""
    from torchvision.utils import draw_bounding_boxes

    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    names = []
    for i, lab in enumerate([int(v) for v in labels]):
        name = classes[lab - 1] if classes and 1 <= lab <= len(classes) else str(lab)
        names.append(f"{name} {float(scores[i]):.2f}" if scores is not None else name)
    if not len(names):
        return image
    return draw_bounding_boxes(image, boxes.detach().cpu().float(), labels=names, width=width, colors="red")


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 [3,H,W] tensor as PNG/JPEG atomically."""
    from PIL import Image

    from edgevision.io import atomic_write

    arr = image.permute(1, 2, 0).cpu().numpy()
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format=fmt))
    return path


def plot_per_class(values: dict, path: str | Path, title: str, xlabel: str) -> Path:
    """Horizontal bar chart of per-class AP or IoU (None -> no ground truth, drawn empty)."""
    from edgevision.io import save_figure
    from edgevision.training.plots import _plt

    plt = _plt()
    names = list(values)
    vals = [0.0 if values[n] is None else float(values[n]) for n in names]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(names) + 1)))
    ax.barh(range(len(names)), vals, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1), ax.set_xlabel(xlabel), ax.set_title(title), ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
