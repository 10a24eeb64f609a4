"""What the official EMO segmentation network computes beyond ours: window padding.

The official mmseg configs (zhangzjn/EMO down-stream-tasks/mmsegmentation/configs) use 7x7
attention windows for EMO-1M/2M and 16x16 for EMO-5M. The official block pads the normalised map
to a multiple of the window and runs both the ``qk`` and the ``v`` 1x1 convs on the padded map
(``attn_pre``: v after attention, before the crop). Ours keeps the released 7x7 windows, runs
``qk`` on the map padded to 7 and ``v`` after the crop (same values, fewer MACs). The published
MACs come from mmcv's hook counter (convolutions; attention matmuls unseen), so the official
count = ours without attention matmuls + :func:`official_padding_macs`.
"""

from __future__ import annotations

import math

import torch

# Attention window of each official downstream config (mmseg, ADE20K).
OFFICIAL_WINDOW = {"emo_1m": 7, "emo_2m": 7, "emo_5m": 16}


def _padded(h: int, w: int, window: int) -> int:
    return math.ceil(h / window) * window * math.ceil(w / window) * window


@torch.no_grad()
def official_padding_macs(model: torch.nn.Module, backbone: str, input_size: tuple[int, int]) -> int:
    """Official minus our 1x1-conv MACs of the attention blocks of an EMO segmentation model at
    ``input_size`` (H, W): qk on maps padded to the official window instead of 7, v on the padded
    map instead of the cropped one. Runs a shape-only forward when the model is on the meta device."""
    from edgevision.models.emo import IRMB, WINDOW

    window = OFFICIAL_WINDOW[backbone]
    total = []

    def hook(block, inputs, _out):
        h, w = inputs[0].shape[-2:]
        qk = block.qk.conv.in_channels * block.qk.conv.out_channels
        v = block.v.conv.in_channels * block.v.conv.out_channels
        official = _padded(h, w, window)
        total.append((official - _padded(h, w, WINDOW)) * qk + (official - h * w) * v)

    blocks = [m for m in model.modules() if isinstance(m, IRMB) and m.attn]
    handles = [b.register_forward_hook(hook) for b in blocks]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, getattr(model, "in_chans", 3), *input_size, device=device))
    finally:
        model.train(was_training)
        for hd in handles:
            hd.remove()
    return int(sum(total))
