"""Segmentation losses: ``--seg-loss ce`` (the published recipes' pixel cross-entropy, the
default) or ``ce+dice`` (cross-entropy plus a soft Dice term, as in nnU-Net).

Why Dice: mIoU weights every class equally, but cross-entropy weights every *pixel* equally,
so on scenes where the background is ~90% of the pixels the small objects' boundaries barely
move the loss. The soft Dice term is an overlap ratio per class, so each present class counts
the same whatever its area. Measured on the generated scenes (``benchmarks/bench_dense_train.py
--seg-loss``, results in ``benchmarks/results/dense_train*.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgevision.tasks.segmentation.data import IGNORE

SEG_LOSSES = ("ce", "ce+dice")
AUX_WEIGHT = 0.5  # torchvision's reference recipe (references/segmentation/train.py)


def check_seg_loss(kind: str) -> None:
    if kind not in SEG_LOSSES:
        raise ValueError(f"--seg-loss must be one of {', '.join(SEG_LOSSES)}; got {kind!r}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over the classes present in ``target`` of 2|P∩T| / (|P| + |T|), with P the
    softmax probabilities and T the one-hot labels, summed over the whole batch; ignored pixels
    count for neither. ``logits`` (N, K, H, W) at the size of ``target`` (N, H, W)."""
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    prob = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0).long(), k).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    area_t = onehot.sum(dims)
    dice = (2 * inter + smooth) / (prob.sum(dims) + area_t + smooth)
    present = area_t > 0
    if not bool(present.any()):  # every pixel ignored: no overlap to score
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def _one(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
    if kind == "ce+dice":
        loss = loss + soft_dice_loss(logits, target)
    return loss


def seg_loss(out: dict, target: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """The loss on ``out["out"]`` plus ``AUX_WEIGHT`` x the same loss on ``out["aux"]``."""
    loss = _one(out["out"], target, kind)
    if out.get("aux") is not None:
        loss = loss + AUX_WEIGHT * _one(out["aux"], target, kind)
    return loss
