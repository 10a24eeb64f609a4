"""create_model: build a registered model, attach its pretrained config, load weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from edgevision.checkpoints import load_checkpoint, read_metadata
from edgevision.models.base import (
    EdgeModel,
    FeatureNet,
    check_indices_type,
    check_input_shape,
    check_num_classes,
    take_indices,
)
from edgevision.models.netconfig import is_config_path, load_config
from edgevision.registry import model_info, pretrained_cfg


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    drop_path_rate: float = 0.0,
    checkpoint: str | None = None,
    pretrained: bool = False,
    out_indices: tuple[int, ...] | None = None,
    img_size: int | tuple[int, int] | None = None,
    global_pool: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` (timm's signature).

    checkpoint: a file in our format, timm's, torchvision's or the family's official
    format (detected by its keys and converted), loaded strictly before any
    ``features_only`` wrapping so the classifier weights are checked too. A checkpoint
    whose head does not match ``num_classes`` fails with the key diff; fine-tuning with a
    new head is done by the training engine. Preprocessing saved with our own weights
    (mean/std/size/crop) updates ``model.pretrained_cfg``.

    pretrained: fetch the registered official weights once into the cache
    (:mod:`edgevision.hub`, SHA-256 checked) and load them like ``checkpoint``.

    img_size: the default input size recorded in ``model.pretrained_cfg`` (every family
    here runs at any size it allows; this is what data pipelines resolve to).
    global_pool: 'avg' (default) or '' (no pooling; needs num_classes=0).
    """
    config_file = None
    if is_config_path(name):  # a JSON net config: built through the generic net_config entry
        config_file, kwargs["config"] = str(name), load_config(name)
        num_classes = kwargs["config"].get("num_classes") if num_classes is None else num_classes
        in_chans = kwargs["config"].get("in_chans") if in_chans is None else in_chans
        name = "net_config"
    info = model_info(name)
    if in_chans is None:  # the registered input's channels: 3 for images, 9 for UCI HAR windows, ...
        in_chans = info.input_size[0]
    if num_classes is None:  # the registered default: 1000 (ImageNet), 91 for COCO detectors, ...
        num_classes = info.cfg.get("num_classes", 1000)
    if features_only and info.task != "classification":
        raise ValueError(f"features_only=True is for backbones; {name!r} is a {info.task} model")
    _check_args(name, num_classes, in_chans, drop_path_rate, checkpoint, pretrained, features_only)
    if "drop_rate" in kwargs:  # timm's classifier dropout: refused at build, not at the first step
        _check_rate("drop_rate", kwargs["drop_rate"])
    if pretrained:
        if checkpoint is not None:
            raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
        from edgevision.hub import fetch_weights

        checkpoint = fetch_weights(name)
    model = info.builder(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate, **kwargs)
    if isinstance(model, EdgeModel):
        if global_pool is not None:
            model.set_global_pool(global_pool, num_classes)
    elif info.task == "classification":  # task models (detection, ...) check their own inputs
        _adopt_foreign(model, in_chans)
        if global_pool is not None:  # timm's own networks take it through their classifier reset
            model.reset_classifier(num_classes, global_pool)
    model.model_name = name
    model.pretrained_cfg = _model_cfg(name, model, in_chans, num_classes)
    if config_file is not None:  # named after the config, with the file recorded
        model.model_name = kwargs["config"].get("name") or Path(config_file).stem
        model.pretrained_cfg.update(architecture=model.model_name, net_config=config_file)
    if img_size is not None:
        _set_img_size(model, img_size)
    if checkpoint is not None:
        model.checkpoint_format = load_checkpoint(model, checkpoint, info.converters, model_name=name)
        model.pretrained_cfg.update(_saved_preprocessing(checkpoint), file=str(checkpoint))
    model.default_cfg = model.pretrained_cfg  # timm's older name for the same dict
    if features_only:
        cfg = model.pretrained_cfg
        model = FeatureNet(model, out_indices) if isinstance(model, EdgeModel) else \
            _timm_features(model, out_indices)
        model.model_name = name
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def _check_rate(arg: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number; got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{arg} must be in [0, 1); got {value}")


def _check_args(name, num_classes, in_chans, drop_path_rate, checkpoint, pretrained, features_only):
    if isinstance(in_chans, bool) or not isinstance(in_chans, int):
        raise TypeError(f"in_chans must be an int; got {type(in_chans).__name__} {in_chans!r}")
    check_num_classes(num_classes)
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    _check_rate("drop_path_rate", drop_path_rate)
    if checkpoint is not None and not isinstance(checkpoint, (str, bytes)) and not hasattr(checkpoint, "__fspath__"):
        raise TypeError(f"checkpoint must be a path; got {type(checkpoint).__name__}")
    for arg, value in (("pretrained", pretrained), ("features_only", features_only)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False; got {value!r}")


def _model_cfg(name: str, model: nn.Module, in_chans: int, num_classes: int) -> dict:
    """Registered cfg of the weights, over timm's own cfg for timm-built models, plus the
    names of the first conv and the classifier read off the built model."""
    info = model_info(name)
    own = dict(getattr(model, "pretrained_cfg", None) or {})
    if own:  # a timm-built network: timm's cfg describes it; our registry adds what we know
        cfg = {**own, **info.cfg, "architecture": name}
        if info.weights_url:  # weights we register replace timm's default ones
            cfg.update(url=info.weights_url, sha256=info.weights_sha256, hf_hub_id=None)
        for k, v in pretrained_cfg(name).items():  # what timm's cfg lacks (paper, dataset, ...)
            if cfg.get(k) is None:
                cfg[k] = v
    else:
        cfg = pretrained_cfg(name)
    cfg["input_size"] = (in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:])
    if in_chans != 3:  # per-channel normalisation no longer applies as registered
        cfg["mean"], cfg["std"] = (sum(cfg["mean"]) / 3,) * in_chans, (sum(cfg["std"]) / 3,) * in_chans
    smallest = getattr(model, "min_input_size", None)
    if smallest:
        cfg["min_input_size"] = (in_chans, smallest, smallest)
    cfg["first_conv"] = cfg.get("first_conv") if own else _first_conv(model)
    cfg["classifier"] = cfg.get("classifier") if own else ",".join(getattr(model, "classifier_names", ()))
    cfg["num_classes"] = cfg.get("num_classes", 1000)  # classes of the registered weights
    return cfg


def _first_conv(model: nn.Module) -> str | None:
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return n
    return None


def _set_img_size(model: nn.Module, img_size) -> None:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise TypeError(f"img_size must be an int or (height, width); got {img_size!r}")
    smallest = getattr(model, "min_input_size", 1)
    multiple = getattr(model, "input_multiple", 1)
    if min(size) < smallest or any(s % multiple for s in size):
        rule = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise ValueError(f"img_size={img_size}: {type(model).__name__} needs sides >= {smallest}{rule}")
    cfg = model.pretrained_cfg
    cfg["input_size"] = (cfg["input_size"][0], *size)
    model.img_size = size


_SAVED_KEYS = ("mean", "std", "crop_pct", "interpolation", "img_size", "classes")


def _saved_preprocessing(checkpoint) -> dict:
    """Preprocessing stored in the metadata of weights we saved (training engine)."""
    meta = read_metadata(checkpoint)
    out = {}
    for k in _SAVED_KEYS:
        if k not in meta:
            continue
        try:
            v = json.loads(meta[k])
        except ValueError:
            v = meta[k]
        if k == "img_size":
            out["input_size"] = (3, int(v), int(v))
        elif k == "classes":
            out["label_names"], out["num_classes"], out["dataset"] = tuple(v), len(v), None
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _input_check_hook(module: nn.Module, args) -> None:
    if args:
        check_input_shape(module, args[0])


def _checked_forward_intermediates(self, x, indices=None, *args, **kwargs):
    """timm's forward_intermediates of a timm-built network, with our input check first and
    timm's asserts on ``indices``/``output_fmt`` as a ValueError naming the argument."""
    check_input_shape(self, x)
    check_indices_type(indices)
    try:
        return type(self).forward_intermediates(self, x, indices, *args, **kwargs)
    except AssertionError as e:  # timm: "last-n (9) is out of range (1 to 5)", "Output shape must be NCHW."
        arg = "output_fmt" if "output" in str(e).lower() else "indices"
        raise ValueError(f"forward_intermediates: {arg}: {e}") from None


def _checked_reset_classifier(self, num_classes, *args, **kwargs):
    check_num_classes(num_classes)
    return type(self).reset_classifier(self, num_classes, *args, **kwargs)


# pickle reduces a bound method to getattr(obj, __name__): the class's own method then
_checked_forward_intermediates.__name__ = "forward_intermediates"
_checked_reset_classifier.__name__ = "reset_classifier"


def _adopt_foreign(model: nn.Module, in_chans: int) -> None:
    """A timm-built network: give it our one-line input errors (a forward pre-hook, and the
    same check before forward_intermediates; fx and torch.export are unaffected) and the
    attributes the rest of edgevision reads."""
    import types

    model.in_chans = in_chans
    if not hasattr(model, "min_input_size"):
        model.min_input_size = 1
    model.register_forward_pre_hook(_input_check_hook)
    # bound to the instance (copy.deepcopy rebinds them to the copy)
    model.forward_intermediates = types.MethodType(_checked_forward_intermediates, model)
    model.reset_classifier = types.MethodType(_checked_reset_classifier, model)


def _timm_features(model: nn.Module, out_indices):
    """features_only for a timm-built network: timm's own feature wrapper."""
    from timm.models._features import FeatureListNet

    n = len(model.feature_info)
    indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
    take, _ = take_indices(n, list(indices), "out_indices")  # ValueError naming the range, as for our families
    # timm's feature wrapper needs nested Sequentials flattened to find its blocks.N taps
    net = FeatureListNet(model, out_indices=tuple(take), flatten_sequential=True)
    net.in_chans = model.in_chans
    net.min_input_size = model.min_input_size
    net.register_forward_pre_hook(_input_check_hook)
    return net
