"""Size-dependent tensor plumbing that traces and exports at any (also symbolic) input size.

Families that accept any input size pad a map to a multiple of a window or patch, crop the
result back, and move between NCHW maps and (B, N, C) tokens (EMO, EdgeViT, EfficientFormer,
NASNet-A). These helpers are written for torch.fx and for torch.export with dynamic height and
width:

- no Python branch on sizes: padding by zero is a no-op amount, not a skipped call;
- the padded side is ``m * ((n - 1) // m + 1)``, the expression a stride-``m`` conv or pool
  gives (``(n + 2p - k) // s + 1``), so export's symbolic shapes see sizes as equal where the
  maths has them equal, instead of guards it cannot prove;
- a crop is a *negative* pad: its output side is exactly the requested one, where a slice
  ``x[..., :h]`` gives ``min(h, H)``, which export turns into a guard on the input size;
- a permuted tensor is copied to contiguous memory before a view (:func:`contiguous_copy`).

They are ``torch.fx.wrap``-ed here; a module that imports them registers them again with
``torch.fx.wrap("name")`` so that ``torch.fx.symbolic_trace`` records them as calls there too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_side(n, multiple: int):
    """Smallest multiple of ``multiple`` that is >= n (n >= 1; int or SymInt)."""
    return multiple * ((n - 1) // multiple + 1)


@torch.fx.wrap
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad NCHW ``x`` at the bottom/right so both sides are multiples of ``multiple``."""
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(x, (0, padded_side(w, multiple) - w, 0, padded_side(h, multiple) - h))


@torch.fx.wrap
def crop_to(x: torch.Tensor, h, w) -> torch.Tensor:
    """The top-left ``h x w`` of NCHW ``x`` (h, w no larger than its sides), as a negative pad."""
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def contiguous_copy(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy, always. ``reshape``/``contiguous`` of a permuted tensor copy as well,
    but first ask whether it already is contiguous, which depends on whether some side is 1;
    with symbolic sizes that question becomes a guard that pins the input size."""
    return x.clone(memory_format=torch.contiguous_format)


@torch.fx.wrap
def tokens_to_map(x: torch.Tensor, h, w) -> torch.Tensor:
    """(B, h*w, C) tokens, row-major -> contiguous (B, C, h, w) map."""
    return contiguous_copy(x.transpose(1, 2)).view(x.shape[0], x.shape[2], h, w)


@torch.fx.wrap
def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> contiguous (B, H*W, C) tokens, row-major."""
    b, c, h, w = x.shape
    return contiguous_copy(x.permute(0, 2, 3, 1)).view(b, h * w, c)


@torch.fx.wrap
def subsample(x: torch.Tensor, r: int) -> torch.Tensor:
    """``x[:, :, ::r, ::r]`` of an NCHW map (ceil(H / r) x ceil(W / r)), contiguous: the map is
    zero-padded to multiples of r and the first pixel of each r x r cell taken, so the output
    sides are the padded sides / r exactly, also symbolically."""
    x = pad_to_multiple(x, r)
    b, c, h, w = x.shape
    return contiguous_copy(x.view(b, c, h // r, r, w // r, r)[:, :, :, 0, :, 0])
