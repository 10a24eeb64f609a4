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
    """Loss and accuracy per epoch (train and val) side by side."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [h["val_top1"] for h in history], "o-", label="val top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.legend(), b.grid(alpha=0.3)
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
