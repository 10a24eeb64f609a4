"""Cross-layer equalization (CLE, Nagel et al., "Data-Free Quantization", ICCV 2019).

Depthwise convs have per-channel weight ranges that differ by orders of magnitude, so one
int8 scale per tensor wastes most of its levels on a few channels. For a pair
``conv1 -> ReLU -> conv2`` the network is unchanged when output channel c of conv1 (weights
and bias) is divided by s_c and input channel c of conv2 is multiplied by s_c, because ReLU
is positively homogeneous (relu(x / s) = relu(x) / s). With r1_c = max|W1[c]| and
r2_c = max|W2[:, c]|, s_c = sqrt(r1_c / r2_c) makes both ranges sqrt(r1_c * r2_c).

Runs on the model after BatchNorm folding (:func:`edgevision.export.fuse.fuse_bn`), so a
conv's BN is already in its weights. ReLU6 is *not* homogeneous (the clip at 6 would move
to 6 / s_c per channel); as in the paper, and AIMET's implementation, pairs joined by ReLU6
are equalized only with ``relu6="replace"``, which swaps those ReLU6 for ReLU first. That
changes the fp32 network wherever an activation exceeded 6: measure it (the int8 benchmark
reports fp32 top-1 after the swap). ``relu6="skip"`` leaves such pairs alone (exact).
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_cle_pairs(model: nn.Module) -> list[tuple[str, str | None, str]]:
    """(conv1, activation or None, conv2) module names where conv1's output reaches only conv2,
    through Identity modules and at most one ReLU/ReLU6: the pairs CLE can rescale.

    Found on a torch.fx trace (every model here traces); the names are the model's own. A
    BatchNorm, residual add or any other op between the convs ends the chain.
    """
    gm = fx.symbolic_trace(model)
    pairs = []
    for node in gm.graph.nodes:
        conv1 = _module(gm, node)
        if type(conv1) is not nn.Conv2d:
            continue
        nxt, act_name = _single_user(node), None
        while nxt is not None:
            mod = _module(gm, nxt)
            if isinstance(mod, (nn.Identity, nn.Dropout)):
                nxt = _single_user(nxt)
            elif isinstance(mod, (nn.ReLU, nn.ReLU6)) and act_name is None:
                act_name, nxt = nxt.target, _single_user(nxt)
            else:
                break
        conv2 = _module(gm, nxt) if nxt is not None else None
        if type(conv2) is nn.Conv2d and conv2.in_channels == conv1.out_channels and conv2 is not conv1:
            pairs.append((node.target, act_name, nxt.target))
    return pairs


def _in_channel_index(conv: nn.Conv2d) -> torch.Tensor:
    """For each weight row o and column j, the input channel it reads: (out, in_per_group)."""
    out_ch, in_pg = conv.weight.shape[:2]
    group = torch.arange(out_ch) // (out_ch // conv.groups)
    return group[:, None] * in_pg + torch.arange(in_pg)[None, :]


def _input_channel_range(conv: nn.Conv2d) -> torch.Tensor:
    """max |W| over everything that reads input channel c, per input channel c."""
    w = conv.weight.detach().abs().flatten(2).amax(-1)  # (out, in_per_group)
    idx = _in_channel_index(conv)
    r = torch.zeros(conv.in_channels, dtype=w.dtype)
    return r.scatter_reduce(0, idx.flatten(), w.flatten(), reduce="amax")


@torch.no_grad()
def _equalize_pair(conv1: nn.Conv2d, conv2: nn.Conv2d, max_scale: float) -> float:
    """Rescale one pair in place; returns max |log s| (how much moved, for convergence)."""
    r1 = conv1.weight.detach().abs().flatten(1).amax(1)
    r2 = _input_channel_range(conv2)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.ones_like(r1)
    s[ok] = torch.sqrt(r1[ok] / r2[ok])
    s = s.clamp(1.0 / max_scale, max_scale)
    conv1.weight.div_(s.view(-1, *([1] * (conv1.weight.dim() - 1))))
    if conv1.bias is not None:
        conv1.bias.div_(s)
    idx = _in_channel_index(conv2)
    conv2.weight.mul_(s[idx].view(*idx.shape, *([1] * (conv2.weight.dim() - 2))))
    return float(s.log().abs().max())


def equalize(model: nn.Module, relu6: str = "skip", iterations: int = 20, max_scale: float = 1e3,
             inplace: bool = False) -> tuple[nn.Module, list[tuple[str, str | None, str]]]:
    """Cross-layer equalize every conv -> ReLU -> conv pair of a BN-folded ``model``.

    Returns (model, equalized pairs). ``relu6``: "skip" (pairs through ReLU6 untouched, output
    exact) or "replace" (those ReLU6 become ReLU, then the pair is equalized). Chains
    (pw -> dw -> pw) are swept ``iterations`` times or until no scale moves by 1e-4.
    Fold BatchNorm first (fuse_bn): a BN left between two convs ends the chain, so that pair
    is not equalized (never wrongly rescaled).
    """
    if relu6 not in ("skip", "replace"):
        raise ValueError(f"relu6 must be 'skip' or 'replace'; got {relu6!r}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    pairs = []
    for c1, act, c2 in find_cle_pairs(model):
        mod = model.get_submodule(act) if act else None
        if isinstance(mod, nn.ReLU6):
            if relu6 == "skip":
                continue
            _replace(model, act, nn.ReLU(inplace=getattr(mod, "inplace", False)))
        pairs.append((c1, act, c2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-channel reductions: extra threads only add sync (10x slower on a busy machine)
    try:
        for _ in range(iterations):
            moved = max((_equalize_pair(model.get_submodule(c1), model.get_submodule(c2), max_scale)
                         for c1, _, c2 in pairs), default=0.0)
            if moved < 1e-4:
                break
    finally:
        torch.set_num_threads(threads)
    return model, pairs


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)
