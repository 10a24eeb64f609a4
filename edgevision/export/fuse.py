"""Deploy-time fusion: fold BatchNorm into the conv/linear that feeds it.

Generic over module graphs without relying on torch.fx (our models' input checks are
data-dependent Python, which fx's symbolic tracing cannot follow). Instead one example
forward is observed:
- forward hooks record, per module call, its input and output tensor objects;
- a TorchFunctionMode counts how many tensor-producing torch calls consume each tensor.
A (conv, bn) pair (BN of exact torch type, not a subclass that does more) is folded only
when the BN's input *is* the conv's output, that output has no other consumer (so nothing
else sees the pre-BN values, e.g. a residual), and each module is called exactly once.
The fold itself is torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``; the BN is
replaced by ``nn.Identity``.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.overrides import TorchFunctionMode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _ConsumerCounter(TorchFunctionMode):
    """Counts uses of each tensor by torch calls that produce tensors (shape queries excluded)."""

    def __init__(self):
        super().__init__()
        self.uses: Counter = Counter()
        self.keep: list = []  # hold every tensor seen, so Python ids are not reused mid-trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(True for _ in _tensors(out)):
            for t in _tensors((args, kwargs)):
                self.uses[id(t)] += 1
                self.keep.append(t)
            self.keep.extend(_tensors(out))
        return out


def _example_input(model: nn.Module) -> torch.Tensor:
    side = max(64, getattr(model, "min_input_size", 32))
    m = getattr(model, "input_multiple", 1) or 1
    side = -(-side // m) * m
    return torch.randn(1, getattr(model, "in_chans", 3), side, side)


def find_bn_pairs(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """Names of (conv_or_linear, batchnorm) pairs that can be folded, found on one forward."""
    example = _example_input(model) if example is None else example
    names = {m: n for n, m in model.named_modules()}
    calls: Counter = Counter()
    produced_by: dict[int, nn.Module] = {}  # id(output tensor) -> conv/linear module
    bn_inputs: list[tuple[nn.Module, int]] = []
    hooks = []

    def hook(mod, inputs, output):
        calls[mod] += 1
        if isinstance(mod, _CONVS) and isinstance(output, torch.Tensor):
            produced_by[id(output)] = mod
        elif isinstance(mod, nn.Linear) and isinstance(output, torch.Tensor) and output.dim() == 2:
            produced_by[id(output)] = mod  # (N, C) only: BatchNorm1d then normalizes features
        elif type(mod) in _BNS and inputs and isinstance(inputs[0], torch.Tensor):
            # Exact types only: subclasses such as timm's BatchNormAct2d also apply an activation.
            bn_inputs.append((mod, id(inputs[0])))

    for mod in names:
        if isinstance(mod, _CONVS + _BNS + (nn.Linear,)):
            hooks.append(mod.register_forward_hook(hook))
    counter = _ConsumerCounter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    pairs = []
    for bn, tid in bn_inputs:
        src = produced_by.get(tid)
        if src is None or calls[src] != 1 or calls[bn] != 1 or counter.uses[tid] != 1:
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if isinstance(src, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        pairs.append((names[src], names[bn]))
    return pairs


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fuse_bn(model: nn.Module, example: torch.Tensor | None = None, inplace: bool = True) -> nn.Module:
    """Fold every foldable BatchNorm into its conv/linear; returns the model in eval mode.

    Outputs match the unfused model in eval mode (to float rounding, ~1e-6). Training a
    fused model is not meaningful: the BN statistics are gone.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for src_name, bn_name in find_bn_pairs(model, example):
        src = model.get_submodule(src_name)
        bn = model.get_submodule(bn_name)
        fused = fuse_linear_bn_eval(src, bn) if isinstance(src, nn.Linear) else fuse_conv_bn_eval(src, bn)
        _set_submodule(model, src_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
    return model
