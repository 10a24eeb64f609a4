"""Attention helpers on ``F.scaled_dot_product_attention`` and window partitioning.

Everything here is plain reshape/permute/slice arithmetic on shapes (no einops, no
data-dependent control flow), so it traces, compiles and exports to ONNX; permuted windows are
copied to contiguous memory before each view, so that torch.export with dynamic sizes needs no
guard on whether a window count is 1 (see :mod:`edgevision.layers.shapes`).

Window partitions of an NCHW map whose sides are multiples of ``window``:
- ``"strided"`` (EMO's released weights): the map is split into n_h x n_w windows where
  pixel (r, c) belongs to window (r mod n_h, c mod n_w); each window is a dilated grid
  spanning the whole map (row r = i * n_h + a for window row a, in-window row i).
- ``"contiguous"`` (Swin-style): window (r // window, c // window), blocks of adjacent pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgevision.layers.shapes import contiguous_copy

WINDOW_MODES = ("strided", "contiguous")


def check_window_mode(mode: str) -> str:
    if mode not in WINDOW_MODES:
        raise ValueError(f"window_mode must be one of {WINDOW_MODES}; got {mode!r}")
    return mode


def window_partition(x: torch.Tensor, window: int, mode: str = "strided") -> torch.Tensor:
    """(B, C, H, W) -> (B * n_h * n_w, window * window, C) tokens, windows ordered (b, a_h, a_w)."""
    b, c, h, w = x.shape
    nh, nw = h // window, w // window
    if mode == "strided":  # row = i * nh + a: split rows as (i, a), window index a is the fast axis
        x = x.reshape(b, c, window, nh, window, nw).permute(0, 3, 5, 2, 4, 1)
    else:  # row = a * window + i
        x = x.reshape(b, c, nh, window, nw, window).permute(0, 2, 4, 3, 5, 1)
    return contiguous_copy(x).view(b * nh * nw, window * window, c)


def window_unpartition(x: torch.Tensor, window: int, h: int, w: int, mode: str = "strided") -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * n_h * n_w, window**2, C) -> (B, C, h, w)."""
    nh, nw = h // window, w // window
    c = x.shape[-1]
    b = x.shape[0] // (nh * nw)
    x = x.reshape(b, nh, nw, window, window, c)
    if mode == "strided":  # (b, a_h, a_w, i, j, c) -> (b, c, i, a_h, j, a_w)
        x = x.permute(0, 5, 3, 1, 4, 2)
    else:  # -> (b, c, a_h, i, a_w, j)
        x = x.permute(0, 5, 1, 3, 2, 4)
    return contiguous_copy(x).view(b, c, h, w)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d); channels are head-major as in both official codes."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                        scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax(q k^T * scale) v over tokens (B, N, C) with head-major channel split; -> (B, N, Cv)."""
    out = F.scaled_dot_product_attention(
        split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads),
        dropout_p=dropout_p, scale=scale,
    )
    return merge_heads(out)
