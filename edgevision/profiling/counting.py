"""Parameter and MAC counting, one counter for every model.

MACs are torch's FlopCounterMode FLOPs divided by 2 (it counts 2 FLOPs per multiply-add)
with the math SDPA backend forced: the fused CPU attention kernel is not counted reliably
(KeyError 'Global' seen), the math path decomposes into counted matmuls. Counted: conv,
linear, matmul/bmm and attention. Not counted: norms, activations, pooling, elementwise ops
(fvcore additionally counts norms, which is why its totals are 1-5% higher).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
def count_macs(model: nn.Module, input_size=(1, 3, 224, 224), by_op: bool = False):
    """Multiply-adds of one forward pass at input_size (N,C,H,W; (C,H,W); (H,W) or int side).

    With by_op=True returns (total, {op_name: macs}).
    """
    size = _as_size(input_size)
    if len(size) == 4 and hasattr(model, "in_chans") and size[1] != model.in_chans:
        size = (size[0], model.in_chans, size[2], size[3])
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(size, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    finally:
        model.train(was_training)
    total = counter.get_total_flops() // 2
    if not by_op:
        return total
    per_op = {str(op).split(".")[-1]: n // 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return total, per_op
