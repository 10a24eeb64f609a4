"""Deploy-time fusion: fold BatchNorm into the conv/linear that feeds it.

Every model here traces with torch.fx, but torch's fx route
(``torch.fx.experimental.optimization.fuse``) returns a bare GraphModule: the model's class,
timm API, ``pretrained_cfg`` and state-dict names would be lost. So the pairs are found by
observing one example forward, and folded in place in the original modules with torch's own
folding functions:
- forward hooks record, per module call, its input and output tensor objects;
- a TorchFunctionMode counts how many tensor-producing torch calls consume each tensor.
A (conv, bn) pair (BN of exact torch type, not a subclass that does more) is folded only
when the BN's input *is* the conv's output, that output has no other consumer (so nothing
else sees the pre-BN values, e.g. a residual), and each module is called exactly once.
The fold itself is torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``; the BN is
replaced by ``nn.Identity``. timm's ``BatchNormAct2d`` (BN, then dropout and activation: the
norm of timm's CNNs) folds the same way after a conv and is replaced by its dropout and
activation. A pre-norm (bn, conv) pair, BN output fed only to a conv
without padding (or BatchNorm1d to a linear), is folded the other way round.
"""

from __future__ import annotations

import copy
from collections import Counter
from functools import partial

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.overrides import TorchFunctionMode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_bn_act(mod: nn.Module) -> bool:
    """timm's BatchNormAct2d exactly: BN, then ``drop`` and ``act`` (post-norm folding only)."""
    from timm.layers import BatchNormAct2d

    return type(mod) is BatchNormAct2d


def _after_bn(bn: nn.Module) -> nn.Module:
    """What stays of a folded BN: nothing, or a BatchNormAct2d's dropout and activation."""
    if not _is_bn_act(bn):
        return nn.Identity()
    return bn.act if isinstance(bn.drop, nn.Identity) else nn.Sequential(bn.drop, bn.act)


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


def _trace(model: nn.Module, example: torch.Tensor) -> dict:
    """One observed forward: module call counts, who produced/consumed which tensor, uses."""
    names = {m: n for n, m in model.named_modules()}
    calls: Counter = Counter()
    produced_by: dict[int, nn.Module] = {}  # id(output tensor) -> conv/linear module
    bn_inputs: list[tuple[nn.Module, int]] = []
    bn_outputs: dict[int, nn.Module] = {}  # id(output tensor) -> batchnorm
    layer_inputs: list[tuple[nn.Module, int]] = []  # (conv/linear, id(its input))

    def hook(mod, inputs, output):
        calls[mod] += 1
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if isinstance(mod, _CONVS) and isinstance(output, torch.Tensor):
            produced_by[id(output)] = mod
            if x is not None:
                layer_inputs.append((mod, id(x)))
        elif isinstance(mod, nn.Linear) and isinstance(output, torch.Tensor) and output.dim() == 2:
            produced_by[id(output)] = mod  # (N, C) only: BatchNorm1d then normalizes features
            if x is not None:
                layer_inputs.append((mod, id(x)))
        elif type(mod) in _BNS and x is not None:
            # Exact types only: subclasses such as timm's BatchNormAct2d also apply an activation.
            bn_inputs.append((mod, id(x)))
            if isinstance(output, torch.Tensor) and (type(mod) is not nn.BatchNorm1d or x.dim() == 2):
                bn_outputs[id(output)] = mod
        elif _is_bn_act(mod) and x is not None:
            bn_inputs.append((mod, id(x)))  # its output is activated: never a pre-norm fold

    hooks = [mod.register_forward_hook(hook) for mod in names if isinstance(mod, _CONVS + _BNS + (nn.Linear,))]
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
    return dict(names=names, calls=calls, produced_by=produced_by, bn_inputs=bn_inputs,
                bn_outputs=bn_outputs, layer_inputs=layer_inputs, uses=counter.uses)


def _foldable_bn(bn: nn.Module) -> bool:
    return bn.track_running_stats and bn.running_mean is not None


def find_bn_pairs(model: nn.Module, example: torch.Tensor | None = None, _trace_result=None
                  ) -> list[tuple[str, str]]:
    """Names of (conv_or_linear, batchnorm) pairs, BN right after the layer, that can be folded."""
    t = _trace_result or _trace(model, _example_input(model) if example is None else example)
    calls, uses = t["calls"], t["uses"]
    pairs = []
    for bn, tid in t["bn_inputs"]:
        src = t["produced_by"].get(tid)
        if src is None or calls[src] != 1 or calls[bn] != 1 or uses[tid] != 1 or not _foldable_bn(bn):
            continue
        if isinstance(src, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        pairs.append((t["names"][src], t["names"][bn]))
    return pairs


def _no_padding(conv: nn.Module) -> bool:
    pad = conv.padding
    return pad == "valid" if isinstance(pad, str) else all(p == 0 for p in pad)


def find_bn_input_pairs(model: nn.Module, example: torch.Tensor | None = None, _trace_result=None
                        ) -> list[tuple[str, str]]:
    """Names of (batchnorm, conv_or_linear) pairs, BN right before the layer (pre-norm), that fold.

    Folding a BN into the *following* layer is exact only when the layer sees every BN
    output unchanged: convs without padding (zero padding would be applied after the BN
    shift), Linear after BatchNorm1d on (N, C) inputs; the BN output must have no other use.
    """
    t = _trace_result or _trace(model, _example_input(model) if example is None else example)
    calls, uses = t["calls"], t["uses"]
    pairs = []
    for layer, tid in t["layer_inputs"]:
        bn = t["bn_outputs"].get(tid)
        if bn is None or calls[bn] != 1 or calls[layer] != 1 or uses[tid] != 1 or not _foldable_bn(bn):
            continue
        if isinstance(layer, nn.Linear) != isinstance(bn, nn.BatchNorm1d):
            continue
        if isinstance(layer, _CONVS) and (not _no_padding(layer) or bn.num_features != layer.in_channels):
            continue
        pairs.append((t["names"][bn], t["names"][layer]))
    return pairs


@torch.no_grad()
def _fold_bn_into_next(bn: nn.Module, layer: nn.Module) -> nn.Module:
    """``layer(bn(x))`` as one layer: the BN's per-channel affine map moves into the weights."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    fused = copy.deepcopy(layer)
    w = fused.weight
    if isinstance(layer, nn.Linear):
        s, t = scale.to(w.dtype), shift.to(w.dtype)
        extra = w @ t
        w.mul_(s[None, :])
    else:
        out_ch, in_per_group = w.shape[:2]
        groups = layer.groups
        # input channel seen by weight[o, j]: the first channel of o's group, plus j
        ar = partial(torch.arange, device=scale.device)
        idx = (ar(out_ch) // (out_ch // groups))[:, None] * in_per_group + ar(in_per_group)
        view = (out_ch, in_per_group) + (1,) * (w.dim() - 2)
        s, t = scale[idx].view(view).to(w.dtype), shift[idx].view(view).to(w.dtype)
        extra = (w * t).flatten(1).sum(1)
        w.mul_(s)
    if fused.bias is None:
        fused.bias = nn.Parameter(extra)
    else:
        fused.bias.add_(extra)
    return fused


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fuse_bn(model: nn.Module, example: torch.Tensor | None = None, inplace: bool = True,
            following: bool = True) -> nn.Module:
    """Fold every foldable BatchNorm into its conv/linear; returns the model in eval mode.

    First BNs that follow a conv/linear (post-norm, the common case); then, with
    ``following``, BNs used as pre-norm right before an unpadded conv or a linear (EdgeViT's
    blocks, MOAT's MBConv). Outputs match the unfused model in eval mode (to float rounding,
    ~1e-6). Training a fused model is not meaningful: the BN statistics are gone.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    example = _example_input(model) if example is None else example
    traced = _trace(model, example)
    done = set()
    for src_name, bn_name in find_bn_pairs(model, _trace_result=traced):
        src = model.get_submodule(src_name)
        bn = model.get_submodule(bn_name)
        fused = fuse_linear_bn_eval(src, bn) if isinstance(src, nn.Linear) else fuse_conv_bn_eval(src, bn)
        _set_submodule(model, src_name, fused)
        _set_submodule(model, bn_name, _after_bn(bn))
        done.add(bn_name)
    if following:
        for bn_name, layer_name in find_bn_input_pairs(model, _trace_result=traced):
            if bn_name in done:
                continue
            bn = model.get_submodule(bn_name)
            layer = model.get_submodule(layer_name)  # already fused with a BN after it, if any
            _set_submodule(model, layer_name, _fold_bn_into_next(bn, layer))
            _set_submodule(model, bn_name, nn.Identity())
    return model
