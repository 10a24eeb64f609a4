"""PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevision.io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Losses (left) and the other train/val metrics (right) per epoch, whatever the task logs:
    train_acc/val_top1 for classification, val_map/val_map50 for detection, val_miou, ..."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    cols = [k for k in history[0] if k.startswith(("train_", "val_"))]
    losses = [k for k in cols if k.endswith("loss")]
    metrics = [k for k in cols if not k.endswith("loss")]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(9 if metrics else 4.5, 3.5), squeeze=False)
    a = axes[0][0]
    for k in losses:
        a.plot(ep, [h.get(k, float("nan")) for h in history], "o-", label=k.replace("_loss", "").replace("_", " "))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    if metrics:
        b = axes[0][1]
        for k in metrics:
            b.plot(ep, [h.get(k, float("nan")) for h in history], "o-", label=k.replace("_", " "))
        pct = any(k in ("train_acc", "val_top1") for k in metrics)
        b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)" if pct else "metric"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)  # atomic; a full disk is one clear WriteError
    finally:
        plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts annotated."""
    plt = _plt()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)  # atomic; a full disk is one clear WriteError
    finally:
        plt.close(fig)
    return Path(path)
