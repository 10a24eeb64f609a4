"""Model registry: name -> builder plus the metadata users choose models by.

Every model file registers its variants with :func:`register_model`. The decorator
records published figures (with their source), the official weight URL, and the
checkpoint converters the family provides, and also registers the builder into
timm's registry when timm has no model of that name, so ``timm.create_model``
builds our models after ``import edgevision`` without shadowing timm's own.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

# A converter maps a foreign state dict (timm, torchvision, official repo) to ours.
Converter = Callable[[dict], dict]


@dataclass
class ModelInfo:
    """Metadata of one registered model. Published figures carry their source."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    paper: str = ""
    published_params: float | None = None  # as published, e.g. 5.4e6
    published_macs: float | None = None  # multiply-adds at the default input size
    published_top1: float | None = None  # ImageNet-1k top-1, percent
    published_source: str = ""  # where the published figures come from
    input_size: tuple[int, int, int] = (3, 224, 224)
    weights_url: str | None = None  # official weights (never downloaded by tests/demo)
    # name -> converter, e.g. {"timm": f, "torchvision": g, "official": h}; tried by key match.
    converters: dict[str, Converter] = field(default_factory=dict)
    notes: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "published_params": self.published_params,
            "published_macs": self.published_macs,
            "published_top1": self.published_top1,
            "published_source": self.published_source,
            "input_size": list(self.input_size),
            "weights_url": self.weights_url,
            "checkpoint_formats": ["edgevision", *self.converters],
            "notes": self.notes,
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    family: str,
    *,
    paper: str = "",
    params: float | None = None,
    macs: float | None = None,
    top1: float | None = None,
    source: str = "",
    input_size: tuple[int, int, int] = (3, 224, 224),
    weights_url: str | None = None,
    converters: dict[str, Converter] | None = None,
    notes: str = "",
    name: str | None = None,
):
    """Decorator registering ``fn(**kwargs) -> nn.Module`` under ``name`` (default: fn.__name__).

    The builder receives the keyword arguments of :func:`edgevision.create_model` that
    concern the architecture: num_classes, in_chans, drop_rate, drop_path_rate and
    any family-specific options.
    """

    def deco(fn):
        model_name = name or fn.__name__
        if model_name in _REGISTRY:
            raise ValueError(f"model {model_name!r} is registered twice")
        _REGISTRY[model_name] = ModelInfo(
            name=model_name,
            family=family,
            builder=fn,
            paper=paper,
            published_params=params,
            published_macs=macs,
            published_top1=top1,
            published_source=source,
            input_size=input_size,
            weights_url=weights_url,
            converters=dict(converters or {}),
            notes=notes,
        )
        _register_into_timm(model_name, fn)
        return fn

    return deco


def _register_into_timm(model_name: str, fn) -> None:
    """Expose a model through timm.create_model, unless timm already owns that name."""
    import timm.models._registry as timm_registry

    import edgevision.timm_models as home

    if timm_registry.is_model(model_name):
        return  # never shadow timm's own model of the same name

    def timm_entry(pretrained: bool = False, **kwargs):
        # timm passes its pretrained-config plumbing; our weights come from edgevision.hub.
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        from edgevision.factory import create_model

        return create_model(model_name, pretrained=pretrained, **kwargs)

    timm_entry.__name__ = model_name
    timm_entry.__qualname__ = model_name
    timm_entry.__module__ = home.__name__
    setattr(home, model_name, timm_entry)
    timm_registry.register_model(timm_entry)


def _ensure_models_imported() -> None:
    import edgevision.models  # noqa: F401  (registers every family)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell-style pattern (and family), sorted."""
    _ensure_models_imported()
    names = [n for n, info in _REGISTRY.items() if fnmatch.fnmatch(n, pattern)]
    if family is not None:
        names = [n for n in names if _REGISTRY[n].family == family]
    return sorted(names)


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; unknown names raise with close matches."""
    _ensure_models_imported()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY.keys(), n=5, cutoff=0.5)
        if not close:  # also try substring matches, e.g. "emo" -> emo_1m, emo_2m...
            close = [n for n in sorted(_REGISTRY) if name.lower() in n][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Run `edgevision list` to see all models."
        ) from None
