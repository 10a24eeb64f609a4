"""Training, evaluation and fine-tuning (single process or torchrun/DDP), crash-safe.

Entry points::

    from edgevision.training import prepare_sample_dataset, train, evaluate
    root = prepare_sample_dataset("runs/data")            # bundled Fashion-MNIST as ImageFolder
    summary = train({"model": "mobilenetv3_small_075", "recipe": "demo", "data": str(root)})
    summary["final_val_top1"]

The engine is task-agnostic: the model's registry task (classification, detection,
segmentation, sequence) picks a :class:`edgevision.tasks.base.Task` that supplies data, loss and
metrics. One job per file: loop.py (the run), config.py (options), checkpointing.py
(checkpoint/resume), signals.py (SIGINT/SIGTERM, crash test hook), logs.py (progress, logs,
curves), runtime.py (seeds, AMP), distributed.py (torchrun), evaluation.py (``edgevision eval``),
scenes.py (generated detection/segmentation data).
"""

from edgevision.training.config import TrainConfig, make_config
from edgevision.training.data import (
           export_imagefolder,
           load_fashion_mnist,
           prepare_sample_dataset,
)
from edgevision.training.evaluation import evaluate
from edgevision.training.loop import train
from edgevision.training.recipes import RECIPES, list_recipes

__all__ = ["TrainConfig", "make_config", "train", "evaluate", "prepare_sample_dataset",
           "export_imagefolder", "load_fashion_mnist", "RECIPES", "list_recipes"]
