"""Training, evaluation and fine-tuning (single process or torchrun/DDP), crash-safe.

Entry points::

    from edgevision.training import prepare_sample_dataset, train, evaluate
    root = prepare_sample_dataset("runs/data")            # bundled Fashion-MNIST as ImageFolder
    summary = train({"model": "mobilenetv3_small_075", "recipe": "demo", "data": str(root)})
    summary["final_val_top1"]
"""

from edgevision.training.data import (
           export_imagefolder,
           load_fashion_mnist,
           prepare_sample_dataset,
)
from edgevision.training.engine import TrainConfig, evaluate, make_config, train
from edgevision.training.recipes import RECIPES, list_recipes

__all__ = ["TrainConfig", "make_config", "train", "evaluate", "prepare_sample_dataset",
           "export_imagefolder", "load_fashion_mnist", "RECIPES", "list_recipes"]
