"""Compatibility names of the former one-file engine (now split by job; see loop.py)."""

from edgevision.tasks.classification import (  # noqa: F401
    classifier_keys,
    evaluate_model,
    freeze_backbone,
    load_backbone,
    prelogits_layer,
    resize_head,
    train_step,
)
from edgevision.training.config import (  # noqa: F401
    TrainConfig,
    check_tensorboard,
    make_config,
    scaled_lr,
)
from edgevision.training.evaluation import evaluate  # noqa: F401
from edgevision.training.loop import Run, train  # noqa: F401
from edgevision.training.runtime import (  # noqa: F401
    model_norm,
    resolve_amp,
    set_deterministic,
    unwrap,
)
from edgevision.training.signals import KILL_ENV, KILL_GROUP_ENV, KILL_SIGNAL_ENV  # noqa: F401
