"""`edgevision eval`: metrics of trained weights; the model's task does the work."""

from __future__ import annotations


def evaluate(model_name: str, data: str, checkpoint: str, output: str | None = None,
             img_size: int | None = None, batch_size: int = 64, workers: int = 2,
             device: str = "auto") -> dict:
    """Metrics, per-class results and plots (confusion matrix, per-class AP/IoU) + eval.json."""
    from edgevision.tasks.base import task_of

    return task_of(model_name).evaluate_checkpoint(model_name, data, checkpoint, output, img_size=img_size,
                                                   batch_size=batch_size, workers=workers, device=device)
