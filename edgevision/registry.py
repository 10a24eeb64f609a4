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
    weights_sha256: str | None = None  # SHA-256 of the file at weights_url (hub verifies it)
    # timm pretrained-config overrides for the registered weights: mean, std, crop_pct,
    # interpolation, license, weights_source, ... (see :func:`pretrained_cfg`).
    cfg: dict = field(default_factory=dict)
    # name -> converter, e.g. {"timm": f, "torchvision": g, "official": h}; tried by key match.
    converters: dict[str, Converter] = field(default_factory=dict)
    notes: str = ""
    # What the model predicts: classification | detection | segmentation | sequence.
    task: str = "classification"
    # Not listed by list_models (a generic entry such as net_config, built only with arguments).
    hidden: bool = False

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "task": self.task,
            "paper": self.paper,
            "published_params": self.published_params,
            "published_macs": self.published_macs,
            "published_top1": self.published_top1,
            "published_source": self.published_source,
            "input_size": list(self.input_size),
            "weights_url": self.weights_url,
            "weights_sha256": self.weights_sha256,
            "pretrained_cfg": {k: v for k, v in pretrained_cfg(self.name).items()
                               if k not in ("notes",)},
            "checkpoint_formats": ["edgevision", *self.converters],
            "notes": self.notes,
        }


_REGISTRY: dict[str, ModelInfo] = {}
TASKS = ("classification", "detection", "segmentation", "sequence", "attributes")


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
    weights_sha256: str | None = None,
    converters: dict[str, Converter] | None = None,
    notes: str = "",
    name: str | None = None,
    cfg: dict | None = None,
    task: str = "classification",
    hidden: bool = False,
):
    """Decorator registering ``fn(**kwargs) -> nn.Module`` under ``name`` (default: fn.__name__).

    The builder receives the keyword arguments of :func:`edgevision.create_model` that
    concern the architecture: num_classes, in_chans, drop_rate, drop_path_rate and
    any family-specific options. ``task`` says what the model predicts (see
    :data:`TASKS`); ``edgevision list --task`` and :func:`list_models` filter on it.
    ``cfg`` overrides fields of the model's timm pretrained
    config (preprocessing of the registered weights, licence, source; see
    :func:`pretrained_cfg`).
    """

    def deco(fn):
        model_name = name or fn.__name__
        if model_name in _REGISTRY:
            raise ValueError(f"model {model_name!r} is registered twice")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} for {model_name!r}; choose from {', '.join(TASKS)}")
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
            weights_sha256=weights_sha256,
            converters=dict(converters or {}),
            notes=notes,
            cfg=dict(cfg or {}),
            task=task,
            hidden=hidden,
        )
        _register_into_timm(model_name, fn)
        return fn

    return deco


def _register_into_timm(model_name: str, fn) -> None:
    """Expose a model through timm.create_model, unless timm already owns that name.

    The entry point honours timm's pretrained plumbing: ``pretrained=True`` loads the file of
    ``pretrained_cfg_overlay=dict(file=PATH)`` (or of a ``pretrained_cfg`` dict) when given,
    else fetches the registered weights through :mod:`edgevision.hub`. Its default pretrained
    config is registered with timm too, so ``timm.models.get_pretrained_cfg(name)`` works.
    """
    import timm.models._registry as timm_registry

    import edgevision.timm_models as home

    if timm_registry.is_model(model_name):
        return  # never shadow timm's own model of the same name

    def timm_entry(pretrained: bool = False, **kwargs):
        cfg = kwargs.pop("pretrained_cfg", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        kwargs.pop("cache_dir", None)
        from edgevision.factory import create_model

        if pretrained:
            source = dict(cfg) if isinstance(cfg, dict) else {}
            source.update(overlay)
            if source.get("file"):
                return create_model(model_name, checkpoint=source["file"], **kwargs)
            if source.get("url"):
                from edgevision.hub import fetch_weights

                return create_model(model_name, checkpoint=fetch_weights(model_name, url=source["url"]),
                                    **kwargs)
        return create_model(model_name, pretrained=pretrained, **kwargs)

    timm_entry.__name__ = model_name
    timm_entry.__qualname__ = model_name
    timm_entry.__module__ = home.__name__
    setattr(home, model_name, timm_entry)
    home.default_cfgs[model_name] = _timm_cfg_dict(model_name)
    timm_registry.register_model(timm_entry)


# timm's PretrainedCfg fields; our cfg adds a few (sha256, weights_source, dataset).
_TIMM_CFG_FIELDS = {
    "url", "file", "hf_hub_id", "source", "input_size", "test_input_size", "min_input_size",
    "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes",
    "label_offset", "first_conv", "classifier", "license", "description", "origin_url",
    "paper_name", "notes",
}


def _timm_cfg_dict(name: str) -> dict:
    return {k: v for k, v in pretrained_cfg(name).items() if k in _TIMM_CFG_FIELDS}


from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # noqa: E402  (one copy: timm's)
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD  # noqa: E402


def pretrained_cfg(name: str) -> dict:
    """The timm-style pretrained config of a registered model's default weights.

    Fields: input_size, min_input_size, crop_pct, mean, std, interpolation, num_classes,
    url, sha256, license, paper_name, dataset (label set of the classifier), weights_source,
    notes; family/variant overrides come from ``register_model(cfg=...)``. ``first_conv``
    and ``classifier`` are filled in from the built model by :func:`edgevision.create_model`.
    """
    info = _REGISTRY[name] if name in _REGISTRY else model_info(name)
    cfg = dict(
        url=info.weights_url,
        sha256=info.weights_sha256,
        input_size=tuple(info.input_size),
        min_input_size=None,
        crop_pct=0.875,
        crop_mode="center",
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=1000,
        dataset="imagenet-1k",
        license=None,
        weights_source=None,
        paper_name=info.paper or None,
        notes=(info.notes,) if info.notes else None,
        architecture=name,
    )
    cfg.update(info.cfg)
    return cfg


def _ensure_models_imported() -> None:
    import edgevision.models  # noqa: F401  (registers every family)
    import edgevision.tasks  # noqa: F401  (registers the task models: detection, segmentation, ...)


def list_models(pattern: str = "*", family: str | None = None, task: str | None = "classification") -> list[str]:
    """Registered model names matching a shell-style pattern (and family and task), sorted.

    ``task`` defaults to image classifiers (the models the zoo-wide tools and tests iterate
    over); pass "detection", "segmentation", "sequence", or None for every task.
    """
    _ensure_models_imported()
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    names = [n for n, info in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and not info.hidden
             and (task is None or info.task == task)]
    if family is not None:
        names = [n for n in names if _REGISTRY[n].family == family]
    return sorted(names)


def dense_backbones() -> list[str]:
    """The classifiers every detection/segmentation head is registered on: the published families.

    Networks described by a net config (search results, family "netconfig") are left out so the
    dense zoo stays the papers' backbones; build a detector on one in code."""
    return [n for n in list_models() if _REGISTRY[n].family != "netconfig"]


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; unknown names raise with close matches."""
    if not isinstance(name, str):
        raise TypeError(f"the model name must be a str such as 'emo_1m'; got {type(name).__name__} {name!r}")
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
