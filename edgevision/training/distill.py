"""Knowledge distillation for classifier training (``--teacher``): the student also matches a
trained teacher's softened predictions.

The loss is Hinton et al.'s (2015): (1 - alpha) * CE(student, labels) + alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T)); T^2 keeps the soft term's gradients on the
scale of the hard one. Its use here is recovering accuracy after pruning: a sparse network
fine-tuned against its own dense fine-tune keeps more of it than one trained on labels alone
(the practice of sparse transfer-learning work, e.g. Kurtic et al. 2022, Iofinova et al. 2022).

The teacher is any classifier of the registry with weights trained on the same classes: its
checkpoint's class list (saved with edgevision's weights) must equal the run's, since logits
are matched position by position.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_distill_options(cfg) -> None:
    """One clear line for a bad --teacher/--distill-* before any work."""
    if not cfg.teacher:
        return
    from edgevision.registry import model_info

    task = model_info(cfg.model).task
    if task != "classification":
        raise ValueError(f"--teacher (distillation) is for classifiers; {cfg.model!r} is a {task} model")
    if not Path(cfg.teacher).is_file():
        raise ValueError(f"--teacher {cfg.teacher}: no such file (give the teacher's weights, e.g. a "
                         "model.safetensors written by `edgevision train`)")
    if not 0.0 < cfg.distill_alpha <= 1.0:
        raise ValueError(f"--distill-alpha must be in (0, 1] (the weight of the teacher's term); got {cfg.distill_alpha}")
    if not cfg.distill_temp > 0:
        raise ValueError(f"--distill-temp must be > 0; got {cfg.distill_temp}")


def build_teacher(cfg, classes: list[str], device, channels_last: bool = False) -> nn.Module:
    """The frozen teacher in eval mode on ``device``; refuses weights trained on other classes."""
    from edgevision.checkpoints import read_metadata
    from edgevision.factory import create_model

    saved = read_metadata(cfg.teacher).get("classes")
    if saved is not None and json.loads(saved) != list(classes):
        raise ValueError(f"--teacher {cfg.teacher} was trained on classes {json.loads(saved)}, this run has "
                         f"{list(classes)}: distillation matches logits by position, so they must be equal")
    name = cfg.teacher_model or cfg.model
    teacher = create_model(name, num_classes=len(classes), checkpoint=cfg.teacher).eval().to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=1)
    log_q = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)
