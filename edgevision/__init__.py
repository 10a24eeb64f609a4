"""edgevision: faithful efficient vision networks for phones and edge devices."""

__version__ = "0.1.0"

import edgevision.models  # noqa: E402,F401  (registers all families, also into timm)
from edgevision.checkpoints import CheckpointError, CheckpointMismatchError, save_model  # noqa: E402
from edgevision.export.fuse import fuse_bn as fuse  # noqa: E402  (deploy-time BN folding)
from edgevision.export.optimize import optimize  # noqa: E402  (the fast eager path)
from edgevision.factory import create_model  # noqa: E402
from edgevision.models.base import InputShapeError  # noqa: E402
from edgevision.registry import UnknownModelError, list_models, model_info  # noqa: E402

__all__ = [
    "create_model",
    "list_models",
    "model_info",
    "save_model",
    "fuse",
    "optimize",
    "CheckpointError",
    "CheckpointMismatchError",
    "InputShapeError",
    "UnknownModelError",
    "__version__",
]
