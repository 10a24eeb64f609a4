"""Magnitude pruning: which layers, which pattern, which threshold.

Rules (Fast Sparse ConvNets, Elsen et al. 2020, as defaults): the first convolution (few
weights, and it sees raw pixels), depthwise convolutions (few weights, and their cost is
memory-bound) and the classifier stay dense; every other convolution with ``groups == 1``
and every other ``nn.Linear`` is prunable. Each rule can be turned off, and ``exclude``
names layers (substrings of module names) to keep dense.

Patterns: ``"unstructured"`` prunes single weights; ``"RxC"`` (``"1x4"``, ``"4x1"``,
``"8x1"``, ...) prunes blocks of R output channels x C input channels (SparseByteNN's
fine-grained groups; a block of a kxk convolution spans its whole kernel, i.e. 3x3 kernels
are pruned as whole kernel patterns). A block's score is its mean |w|; the lowest-scored
blocks go. Scope ``"layer"`` prunes every layer to the target; ``"global"`` ranks all
blocks of all layers together (one threshold), so layers with many small weights lose more.
Already pruned weights are zero, so they score lowest and stay pruned: masks only grow as
the sparsity rises (as in Zhu & Gupta's gradual pruning).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from edgevision.sparse.masks import add_mask, masked_modules, set_mask
from edgevision.sparse.schedule import check_sparsity

SCOPES = ("layer", "global")
PATTERNS = ("unstructured", "1x4", "4x1", "8x1")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """(rows, cols) of a block pattern; (1, 1) with unstructured meaning single weights."""
    if pattern == "unstructured":
        return (1, 1)
    m = re.fullmatch(r"(\d+)x(\d+)", str(pattern))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"unknown pruning pattern {pattern!r}; choose from: {', '.join(PATTERNS)} "
                         "(or any 'RxC' block of R output x C input channels)")
    return int(m.group(1)), int(m.group(2))


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose from: {', '.join(SCOPES)}")
    return scope


def _first_conv(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            c = get()
        except Exception:  # some heads raise for features-only models
            c = None
        if isinstance(c, nn.Module) and hasattr(c, "weight"):
            return c
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def prunable_layers(model: nn.Module, keep_first: bool = True, keep_depthwise: bool = True,
                    keep_classifier: bool = True, include_linear: bool = True,
                    exclude: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Name -> module of the layers the rules allow to prune (see the module docs)."""
    first = _first_conv(model) if keep_first else None
    head = _classifier(model) if keep_classifier else None
    out = {}
    for name, m in model.named_modules():
        if m is first or m is head or any(e in name for e in exclude):
            continue
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            if m.groups > 1 and (keep_depthwise or not depthwise):
                continue  # grouped convs: only depthwise ones, and only when asked
        elif not (include_linear and isinstance(m, nn.Linear)):
            continue
        out[name] = m
    return out


def _block_scores(w: torch.Tensor, rows: int, cols: int):
    """(scores [Ob, Ib], weights per block [Ob, Ib]) for blocks of rows x cols (x whole kernel)."""
    a = w.detach().abs().float()
    o, i = a.shape[0], a.shape[1]
    a = a.reshape(o, i, -1)
    k = a.shape[2]
    mag = a.sum(2)
    po, pi = -o % rows, -i % cols
    cnt = torch.nn.functional.pad(torch.full((o, i), float(k)), (0, pi, 0, po))
    mag = torch.nn.functional.pad(mag, (0, pi, 0, po))
    ob, ib = (o + po) // rows, (i + pi) // cols
    mag = mag.reshape(ob, rows, ib, cols).sum((1, 3))
    cnt = cnt.reshape(ob, rows, ib, cols).sum((1, 3))
    return mag / cnt, cnt


def _expand(block_keep: torch.Tensor, w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    o, i = w.shape[0], w.shape[1]
    m = block_keep.repeat_interleave(rows, 0).repeat_interleave(cols, 1)[:o, :i]
    return m.reshape(o, i, *([1] * (w.dim() - 2))).expand_as(w).clone()


def _unit_scores(w: torch.Tensor, rows: int, cols: int):
    if (rows, cols) == (1, 1) or w.dim() < 2:
        a = w.detach().abs().float().flatten()
        return a, torch.ones_like(a)
    s, c = _block_scores(w, rows, cols)
    return s.flatten(), c.flatten()


def _keep_from_scores(scores: torch.Tensor, counts: torch.Tensor, target: float) -> torch.Tensor:
    """Keep-mask over units: prune the lowest-scored until ``target`` of all weights are gone."""
    order = torch.argsort(scores, stable=True)
    cum = torch.cumsum(counts[order], 0)
    # the most units whose weights sum to at most target * total (rounding: +half a weight)
    n_prune = int(torch.searchsorted(cum, target * float(counts.sum()) + 0.5, right=True).item())
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[order[:n_prune]] = False
    return keep


def _unit_mask(keep: torch.Tensor, w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if (rows, cols) == (1, 1) or w.dim() < 2:
        return keep.reshape(w.shape)
    o, i = w.shape[0], w.shape[1]
    return _expand(keep.reshape(-(-o // rows), -(-i // cols)), w, rows, cols)


@torch.no_grad()
def prune_layers(layers: dict[str, nn.Module], sparsity: float, scope: str = "layer",
                 pattern: str = "unstructured") -> None:
    """Set the masks of ``layers`` (adding them if needed) to ``sparsity`` by magnitude."""
    sparsity = check_sparsity(sparsity)
    scope = check_scope(scope)
    rows, cols = parse_pattern(pattern)
    for m in layers.values():
        add_mask(m)
    units = {n: _unit_scores(m.weight, rows, cols) for n, m in layers.items()}
    if scope == "layer":
        for n, m in layers.items():
            s, c = units[n]
            set_mask(m, _unit_mask(_keep_from_scores(s, c, sparsity), m.weight, rows, cols))
        return
    scores = torch.cat([units[n][0] for n in layers])
    counts = torch.cat([units[n][1] for n in layers])
    keep = _keep_from_scores(scores, counts, sparsity)
    at = 0
    for n, m in layers.items():
        k = units[n][0].numel()
        set_mask(m, _unit_mask(keep[at: at + k], m.weight, rows, cols))
        at += k


def prune(model: nn.Module, sparsity: float = 0.9, scope: str = "layer", pattern: str = "unstructured",
          **rules) -> nn.Module:
    """One-shot magnitude pruning of ``model`` in place (masks added as buffers); returns it.

    ``rules``: keep_first, keep_depthwise, keep_classifier, include_linear, exclude (see
    :func:`prunable_layers`). Fine-tune afterwards: the masks keep pruned weights at zero.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune expects a torch.nn.Module, got {type(model).__name__}")
    check_sparsity(sparsity)
    check_scope(scope)
    parse_pattern(pattern)
    layers = prunable_layers(model, **rules)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no prunable layers (convs with groups=1 or linears other "
                         "than the first conv and the classifier); relax the rules (keep_first=False, ...)")
    prune_layers(layers, sparsity, scope, pattern)
    return model


def sparsity_report(model: nn.Module) -> dict:
    """Per masked layer: weights, zeros, sparsity; plus the total over masked layers."""
    rows, total, zeros = {}, 0, 0
    for n, m in masked_modules(model).items():
        z = int((m.weight == 0).sum())
        rows[n] = {"weights": m.weight.numel(), "zeros": z, "sparsity": z / m.weight.numel()}
        total, zeros = total + m.weight.numel(), zeros + z
    return {"layers": rows, "total": total, "zeros": zeros, "sparsity": zeros / total if total else 0.0}
