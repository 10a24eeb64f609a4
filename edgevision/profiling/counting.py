"""Parameter and MAC counting, one counter for every model.

MACs are torch's FlopCounterMode FLOPs divided by 2 (it counts 2 FLOPs per multiply-add)
with the math SDPA backend forced: the fused CPU attention kernel is not counted reliably
(KeyError 'Global' seen), the math path decomposes into counted matmuls. Counted: conv,
linear, matmul/bmm and attention. Not counted: norms, activations, pooling, elementwise ops
(fvcore additionally counts norms, which is why its totals are 1-5% higher).

Dense task models (detection, segmentation: they have ``export_output_names``) are counted on
``model.export_forward(x)``: backbone, neck and heads on an already resized and normalised
batch, without the resize/normalise transform, anchor decoding or NMS.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _device_of(model: nn.Module) -> torch.device:
    # A model built under torch.device("meta") is counted without computing anything.
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _forward_of(model: nn.Module):
    """What one counted pass runs: export_forward for dense task models, else the model."""
    if hasattr(model, "export_output_names") and callable(getattr(model, "export_forward", None)):
        return model.export_forward
    return model


def _as_size(input_size) -> tuple[int, int, int, int]:
    if isinstance(input_size, int):
        return (1, 3, input_size, input_size)
    size = tuple(input_size)
    if len(size) == 2:
        return (1, 3, *size)
    if len(size) == 3:
        return (1, *size)
    return size  # type: ignore[return-value]


@torch.no_grad()
def count_macs(model: nn.Module, input_size=(1, 3, 224, 224), by_op: bool = False, exact_shape: bool = False):
    """Multiply-adds of one forward pass at input_size (N,C,H,W; (C,H,W); (H,W) or int side).

    ``exact_shape=True`` takes ``input_size`` as the full input shape as it is (e.g. a sensor
    window (N, C, T)). With by_op=True returns (total, {op_name: macs}).
    """
    size = tuple(input_size) if exact_shape else _as_size(input_size)
    if len(size) == 4 and hasattr(model, "in_chans") and size[1] != model.in_chans:
        size = (size[0], model.in_chans, size[2], size[3])
    x = torch.randn(size, device=_device_of(model))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            _forward_of(model)(x)
    finally:
        model.train(was_training)
    total = counter.get_total_flops() // 2
    if not by_op:
        return total
    per_op = {str(op).split(".")[-1]: n // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return total, per_op


def _summary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with containers of stages/blocks expanded one level."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            rows.extend((f"{name}.{sub}", mod) for sub, mod in child.named_children())
        else:
            rows.append((name, child))
    return rows


@torch.no_grad()
def module_summary(model: nn.Module, input_size=(1, 3, 224, 224)) -> list[dict]:
    """Per-stage rows: module name, type, output shape, params, MACs (same counter as count_macs).

    Rows follow registration order, which for every edgevision model is execution order.
    """
    size = _as_size(input_size)
    if hasattr(model, "in_chans") and size[1] != model.in_chans:
        size = (size[0], model.in_chans, size[2], size[3])
    modules = _summary_modules(model)
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, mod in modules:
        def hook(_m, _inp, out, name=name):
            t = out[0] if isinstance(out, (list, tuple)) else out
            if isinstance(t, torch.Tensor):
                shapes[name] = tuple(t.shape)

        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            _forward_of(model)(torch.randn(size, device=_device_of(model)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, mod in modules:
        # export_forward calls the children directly: they are roots of the count then
        flops = sum(counts.get(f"{root}.{name}", counts.get(type(mod).__name__, {})).values())
        rows.append(
            dict(
                module=name,
                type=type(mod).__name__,
                output_shape=list(shapes.get(name, ())),
                params=count_params(mod),
                macs=flops // 2,
            )
        )
    return rows
