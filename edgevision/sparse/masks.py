"""Pruning masks that live in the model: a ``weight_mask`` buffer on each pruned module.

Why buffers and a pre-hook rather than ``torch.nn.utils.prune``: that API renames the
parameter to ``weight_orig`` and recomputes ``weight`` on every call, so a pruned model's
state dict no longer loads into the plain model (and exporters see a different graph).
Here ``weight`` stays the parameter, the mask is a persistent bool buffer (so it rides in
the model's state dict through checkpoints, resume and DDP broadcast), and a forward
pre-hook multiplies the weight by its mask in place before each call: whatever the
optimizer did to pruned weights during the last step is undone before they are used, so
the effective weights are always masked and the saved weights are exactly zero there.

The gradient of a pruned weight is masked too (a tensor hook on ``weight``, registered by the
pre-hook so that copies of the model get it as well). Without it the pruned weights' gradients,
which can be orders of magnitude larger than the kept ones' (the loss is steep in a weight the
network lost), enter ``clip_grad_norm_``'s global norm: pruning mid-training with clipping on
then scales every real gradient down to nothing and training stalls at chance (measured on
EfficientNet-Lite0 at 90%, benchmarks/results/sparse_accuracy_gradmask.md). They would also feed
the optimizer's moment estimates of weights that cannot move.

Loading a state dict checks the masks: a mask whose shape differs from the layer's weight,
or a pruned layer without a mask in a strict load, is one clear ValueError.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

MASK = "weight_mask"
_GRAD_HOOK = "_edgevision_mask_grad"  # set on a weight Parameter whose gradient is masked


class _MaskGrad:
    """Tensor hook: the gradient times the module's current mask (none after strip_masks)."""

    def __init__(self, module: nn.Module):
        self.module = weakref.ref(module)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        m = self.module()
        mask = m._buffers.get(MASK) if m is not None else None
        return grad if mask is None else grad * mask


def _mask_grad(module: nn.Module) -> None:
    """Mask ``module.weight``'s gradient, once per Parameter object (a deep copy, e.g. an EMA
    model, has new Parameters without tensor hooks: its first forward adds them)."""
    w = module.weight
    if w.requires_grad and not getattr(w, _GRAD_HOOK, False):
        w.register_hook(_MaskGrad(module))
        setattr(w, _GRAD_HOOK, True)


def _apply_mask_hook(module: nn.Module, args):
    mask = module._buffers.get(MASK)
    if mask is not None:
        with torch.no_grad():
            module.weight.mul_(mask)
        _mask_grad(module)


def _check_mask_on_load(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    key = prefix + MASK
    if key not in state_dict:
        if strict and module._buffers.get(MASK) is not None:
            raise ValueError(f"checkpoint has no pruning mask for layer '{prefix[:-1]}' ({key}): it was not "
                             "saved from this pruned model; load it before pruning, or prune after loading")
        return
    got, want = tuple(state_dict[key].shape), tuple(module.weight.shape)
    if got != want:
        raise ValueError(f"pruning mask {key} has shape {got} but the layer's weight is {want}: "
                         "the checkpoint's masks do not match this model")


def has_mask(module: nn.Module) -> bool:
    return module._buffers.get(MASK) is not None


def add_mask(module: nn.Module, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Give ``module`` a mask (all ones unless given); returns the mask buffer."""
    if has_mask(module):
        if mask is not None:
            set_mask(module, mask)
        return module._buffers[MASK]
    w = module.weight
    buf = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(device=w.device, dtype=torch.bool)
    if buf.shape != w.shape:
        raise ValueError(f"mask shape {tuple(buf.shape)} does not match weight shape {tuple(w.shape)}")
    module.register_buffer(MASK, buf.clone(), persistent=True)
    module.register_forward_pre_hook(_apply_mask_hook)
    module._register_load_state_dict_pre_hook(_check_mask_on_load, with_module=True)
    apply_mask(module)
    return module._buffers[MASK]


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    buf = module._buffers[MASK]
    if mask.shape != buf.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(buf.shape)}")
    buf.copy_(mask.to(torch.bool))
    apply_mask(module)


@torch.no_grad()
def apply_mask(module: nn.Module) -> None:
    """Zero the pruned weights now (the pre-hook does it before every forward anyway)."""
    module.weight.mul_(module._buffers[MASK])


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if has_mask(m)}


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    for m in masked_modules(model).values():
        apply_mask(m)


def strip_masks(model: nn.Module) -> nn.Module:
    """Bake the masks into the weights (zeros) and drop buffers and hooks: a plain model whose
    state dict loads anywhere; :func:`edgevision.sparse.compile` finds its sparsity from the zeros."""
    for m in masked_modules(model).values():
        apply_mask(m)
        del m._buffers[MASK]
        for hooks in (m._forward_pre_hooks, m._load_state_dict_pre_hooks):
            for k in [k for k, h in hooks.items() if getattr(h, "hook", h) in (_apply_mask_hook, _check_mask_on_load)]:
                del hooks[k]
        w = m.weight
        if getattr(w, "_backward_hooks", None):
            for k in [k for k, h in w._backward_hooks.items() if isinstance(h, _MaskGrad)]:
                del w._backward_hooks[k]
        if getattr(w, _GRAD_HOOK, False):
            delattr(w, _GRAD_HOOK)
    return model


def add_masks_from_state_dict(model: nn.Module, state_dict: dict) -> list[str]:
    """Add (all-ones) masks to every module that has one in ``state_dict``, so a pruned
    checkpoint loads strictly into a freshly built model; returns the module names."""
    names = []
    for key in state_dict:
        if key.endswith("." + MASK):
            name = key[: -len(MASK) - 1]
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"checkpoint has a pruning mask for '{name}', which this model does not have: "
                                 "the checkpoint's masks do not match this model") from None
            if not hasattr(mod, "weight"):
                raise ValueError(f"checkpoint has a pruning mask for '{name}', a layer without weights")
            add_mask(mod)
            names.append(name)
    return names


def weight_sparsity(w: torch.Tensor) -> float:
    return float((w == 0).sum()) / max(1, w.numel())
