"""tiny-MOAT-0/1/2/3 (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings
Strong Vision Models", ICLR 2023), following google-research/deeplab2
(model/pixel_encoder/moat.py, model/layers/moat_blocks.py, moat_attention.py). Checked against
the official TensorFlow model: ``tests/test_moat_official.py`` loads deeplab2's own tiny-MOAT-0
variables (TF layout, checkpoint names) through ``create_model(..., checkpoint=...)`` and
matches its logits at 256 and 224 px within 2e-6.

Facts taken from the deeplab2 code and configuration:
- stem: 3x3 stride-2 conv (bias) -> BN -> GELU -> 3x3 conv (bias); no norm after the last conv.
- 4 stages [MBConv, MBConv, MOAT, MOAT], blocks [2, 3, 7, 2], each stage's first block
  stride 2; widths per variant (stem = stage-1 width): 32/64/128/256, 40/80/160/320,
  56/112/224/448, 80/160/320/640.
- MBConv: BN pre-norm -> 1x1 expand (4x the *output* width, no bias) -> BN -> GELU ->
  3x3 depthwise (stride, no bias) -> BN -> GELU -> [SE: mean -> 1x1 (out/4, bias) -> SiLU
  -> 1x1 (bias) -> sigmoid] -> 1x1 shrink (bias). Shortcut: average pool (stride 2, TF SAME,
  padding excluded from the mean) where strided, then 1x1 conv (bias) where widths differ.
- MOAT block: the same MBConv without SE, then x += Attn(LayerNorm(x)) (eps 1e-5); no MLP.
  Attention: q, k, v, o projections with bias, head size 32, scale 32^-0.5, and a learned
  2-D relative-position bias per head of size (2P-1) x (2P-1), P = 14 at stride 16 and
  7 at stride 32, resized bilinearly (half-pixel centres) to (2h-1) x (2w-1) for the
  h x w window; bias[query (i,j), key (x,y)] = T[x-i+h-1, y-j+w-1] (key minus query, rows first).
- head: global mean -> LayerNorm (eps 1e-5) -> linear (a 1x1 conv in TF); pooling before the norm.
- BatchNorm as TF's defaults (eps 1e-3); GELU exact (erf); stride-2 convs use TF SAME
  padding (bottom/right for even maps) so TF checkpoints map one to one
  (:func:`convert_official_checkpoint`).

Built: the variant **with** relative position embedding (deeplab2's default
'2d_multi_head'): the published ImageNet numbers (3.4/5.1/9.8/19.5M) are for it. Parameter
counts cannot tell the two apart (the (2P-1)^2-per-head tables add only 23k/29k/40k/58k
parameters, 0.3-0.7%; both variants land within 2% of both published columns).

Shortcut pool (``pool_size``, 3 by default): deeplab2's model builder ``get_model`` passes
``pool_size=3`` to every block, while its block classes default to 2 (their docstring says
2x2 suits classification). The pool has no parameters, so a checkpoint cannot tell which one
a network was trained with; 3 is what ``get_model`` (and so the official fixture) builds, and
the choice matters (2 instead of 3 moves the fixture's logits by 0.16). ``pool_size=2`` builds
the block-default network. On the even maps this model always sees (inputs are multiples of
32), TF's SAME pooling with the pad excluded is exactly ``avg_pool2d(k, 2, ceil_mode=True)``.

Attention extent (``attn_mode``, ``window_size``):
- "window" (default): along each side, the window extent is min(map side, window); a map that
  fits is one global window, a larger one is tiled row-major by windows, zero-padded
  bottom/right to a multiple with the padded keys masked out, and the bias table resized to the
  window. The default windows are 16 (stride 16) and 8 (stride 32): the map sizes at 256 px,
  the resolution of the published figures, so up to 256 px the attention is global exactly as
  published and as the official fixture (tiny-MOAT-0 at 256: 1.04 GMACs; published 1.1), and
  larger inputs (the detection / segmentation setting the paper uses windows for) are windowed.
  ``size_breakpoints`` lists the largest input side that is still global (256). deeplab2 fixes
  its window when the model is built (``window_size=None`` = the build-size map); its downstream
  default is 14/7 (the 224 px map sizes): ``window_size=(14, 7)`` gives it; at 256 px it pads
  16x16 maps into 2x2 windows of mostly padding (1.52 GMACs) and is not the published model.
- "global": one window covering the whole map at every size.
Inputs must be multiples of 32 (every stride-2 step then halves an even map exactly).

Tracing and export: everything that depends on the map size (TF SAME padding, the window
partition and merge, the bias-table resize and gather) lives in module-level
``@torch.fx.wrap`` functions, so ``torch.fx.symbolic_trace`` and torchvision's
``create_feature_extractor`` record them as calls and run them on the real sizes. With concrete
sizes (eager, fx, a static export) they partition into windows as above. With symbolic sizes
(``torch.export`` / ``torch.compile`` with dynamic height and width) they take a branch-free
path: the whole map attends at once, the tile extent is ``torch.sym_min(side, window)`` and a
-inf block mask keeps every query inside its tile, which is the same attention (the padded
keys of a padded window are exactly the keys outside the tile). One exported program is then
correct on both sides of the 256 px breakpoint (exported at 224: max |diff| vs eager 2.4e-7 at
288 and 512 px, the dynamo ONNX export 8.7e-7 in ONNX Runtime up to 320 px); above the
breakpoint it spends O((H*W)^2) on the masked pairs. Windowed-by-reshape would need
branches that torch.export specializes to the example's window count. The legacy TorchScript
tracer freezes Python size arithmetic; ``edgevision.export`` refuses a legacy dynamic-size
export of a model with ``size_breakpoints``.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models._efficientnet_blocks import SqueezeExcite

from edgevision.models.base import EdgeModel, fixed_output_stride, linear_head
from edgevision.registry import register_model

CFGS = {
    "tiny_moat_0": dict(stem=32, dims=(32, 64, 128, 256)),
    "tiny_moat_1": dict(stem=40, dims=(40, 80, 160, 320)),
    "tiny_moat_2": dict(stem=56, dims=(56, 112, 224, 448)),
    "tiny_moat_3": dict(stem=80, dims=(80, 160, 320, 640)),
}
DEPTHS = (2, 3, 7, 2)
POS_SIZE = (None, None, 14, 7)  # relative-position grid per stage (deeplab2's table shapes)
ATTN_REDUCTION = (16, 32)  # strides of the two attention stages
# Default attention window per attention stage: the map sizes at the 256 px input of the
# published figures (stride 16 and 32), so that up to 256 px the attention is global.
WINDOW = (16, 8)
POOL_SIZES = (2, 3)  # deeplab2's block default and its get_model default
BN_EPS = 1e-3
LN_EPS = 1e-5


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


# ----------------------------------------------------------------------------- size-dependent helpers
# Module-level and fx-wrapped: torch.fx records them as calls. With concrete sizes (eager, fx,
# static export) they may branch on sizes; with symbolic sizes (torch.export / torch.compile
# with dynamic shapes) they take a branch-free path, so the graph holds for every size.

def _symbolic(*sizes) -> bool:
    """True where sizes are symbolic (dynamic-shape tracing): no Python branch on them then."""
    return any(isinstance(s, torch.SymInt) for s in sizes)


@torch.fx.wrap
def tf_same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TF 'SAME' zero padding of NCHW x for a k x k, stride-s op (k >= s), the odd pixel at
    bottom/right. TF's total pad max((ceil(n/s) - 1) * s + k - n, 0) equals
    ((-n) mod s) + k - s when k >= s: no max, so the amount stays a symbolic expression."""
    h, w = x.shape[-2], x.shape[-1]
    ph = (-h) % s + k - s
    pw = (-w) % s + k - s
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _extent(side, window):
    """Attention extent along one side: the whole side when it fits the window, else the window."""
    return side if window is None else torch.sym_min(side, window)


@torch.fx.wrap
def window_partition(x: torch.Tensor, window: int | None):
    """(B, H, W, C) -> (windows (B, nwin, h, w, C), additive key mask (nwin, 1, 1, h*w) or None).

    A map that fits the window (or window None) is one window without mask: global attention.
    A larger map is tiled row-major by tiles of min(side, window) per side, zero-padded
    bottom/right to a multiple, the padded keys masked with -inf.

    With symbolic sizes the whole map is returned as one window and :func:`rel_pos_bias`
    confines attention to the same tiles with a block mask instead: the same attention, no
    size branch, so one exported program is right on both sides of the global/windowed
    switch (it computes the masked pairs too, O((H*W)^2) above the switch).
    """
    b, hh, ww, c = x.shape
    if window is None or _symbolic(hh, ww) or (hh <= window and ww <= window):
        return x.unsqueeze(1), None
    wh, wwd = min(hh, window), min(ww, window)
    nh, nw = -(-hh // wh), -(-ww // wwd)
    ph, pw = nh * wh - hh, nw * wwd - ww
    win = F.pad(x, (0, 0, 0, pw, 0, ph)).reshape(b, nh, wh, nw, wwd, c)
    win = win.transpose(2, 3).reshape(b, nh * nw, wh, wwd, c)
    if not (ph or pw):
        return win, None
    valid = F.pad(x.new_ones(hh, ww, dtype=torch.bool), (0, pw, 0, ph))
    valid = valid.reshape(nh, wh, nw, wwd).transpose(1, 2).reshape(nh * nw, 1, 1, wh * wwd)
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
    return win, mask


@torch.fx.wrap
def window_merge(win: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, nwin, h, w, C) -> (B, H, W, C), H, W from ``like``."""
    b, hh, ww, c = like.shape
    wh, wwd = win.shape[2], win.shape[3]
    if _symbolic(hh, ww) or (wh == hh and wwd == ww):  # a single window
        return win[:, 0]
    nh, nw = -(-hh // wh), -(-ww // wwd)
    x = win.reshape(b, nh, nw, wh, wwd, c).transpose(2, 3).reshape(b, nh * wh, nw * wwd, c)
    return x[:, :hh, :ww]


@torch.fx.wrap
def rel_pos_bias(table: torch.Tensor, h: int, w: int, window: int | None = None) -> torch.Tensor:
    """(heads, 2P-1, 2P-1) table -> (heads, h*w, h*w) bias of an h x w token grid.

    Tiles of eh x ew = min(h, window) x min(w, window) (the whole grid when window is None or
    the grid fits): the table is resized bilinearly (half-pixel centres, as tf.image.resize)
    to (2eh-1, 2ew-1), bias[q, k] = T[yk-yq+eh-1, xk-xq+ew-1] within a tile and -inf across
    tiles. At its own size the resize is the identity, exactly.
    """
    sym = _symbolic(h, w)
    eh, ew = _extent(h, window), _extent(w, window)
    if sym or tuple(table.shape[-2:]) != (2 * eh - 1, 2 * ew - 1):
        table = F.interpolate(table.unsqueeze(0), size=(2 * eh - 1, 2 * ew - 1), mode="bilinear",
                              align_corners=False)[0]
    # token coordinates, row-major (broadcast + reshape: plain ops for every exporter)
    ys = torch.arange(h, device=table.device)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, device=table.device)[None, :].expand(h, w).reshape(-1)
    dy = ys[None, :] - ys[:, None] + eh - 1
    dx = xs[None, :] - xs[:, None] + ew - 1
    masked = window is not None and (sym or eh < h or ew < w)
    if masked:  # pairs in different tiles: any valid index, -inf below
        dy, dx = dy.clamp(0, 2 * eh - 2), dx.clamp(0, 2 * ew - 2)
    n = h * w
    bias = table.flatten(1).index_select(1, (dy * (2 * ew - 1) + dx).reshape(-1)).reshape(-1, n, n)
    if not masked:
        return bias
    ty, tx = ys // eh, xs // ew  # tile of each token
    same = (ty[None, :] == ty[:, None]) & (tx[None, :] == tx[:, None])
    return bias.masked_fill(~same, float("-inf"))


@torch.fx.wrap
def rel_pos_attention(qkv: torch.Tensor, table: torch.Tensor, key_mask: torch.Tensor | None,
                      num_heads: int, window: int | None = None) -> torch.Tensor:
    """qkv (..., h, w, 3C) -> (..., h, w, C): per head softmax(q.k / sqrt(d) + bias + mask) v,
    the bias from :func:`rel_pos_bias` (tiles of ``window`` where the grid is larger)."""
    *lead, h, w, c3 = qkv.shape
    n = h * w
    qkv = qkv.reshape(*lead, n, 3, num_heads, c3 // (3 * num_heads))
    if key_mask is None:  # one batch dim: SDPA's fused kernels take 4-D inputs
        qkv = qkv.reshape(-1, n, 3, num_heads, c3 // (3 * num_heads))
    q, k, v = qkv.movedim(-3, 0).transpose(-2, -3)
    bias = rel_pos_bias(table, h, w, window).to(q.dtype)
    if key_mask is not None:  # (nwin, 1, 1, n): broadcasts over the batch and the heads
        bias = bias + key_mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(-2, -3).reshape(*lead, h, w, c3 // 3)


# ----------------------------------------------------------------------------- blocks
class MBConv(nn.Module):
    """deeplab2 MBConvBlock (pre-norm inverted residual, expansion of the output width)."""

    def __init__(self, cin, cout, stride, expansion=4, se_ratio=0.25, drop_path=0.0, pool_size=3):
        super().__init__()
        mid = cout * expansion
        self.stride = stride
        self.pool_size = pool_size
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.pre_norm = _bn(cin)
        self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
        self.expand_norm = _bn(mid)
        self.dw_conv = nn.Conv2d(mid, mid, 3, stride, 1 if stride == 1 else 0, groups=mid, bias=False)
        self.dw_norm = _bn(mid)
        # timm's SE block (mean -> 1x1 -> SiLU -> 1x1 -> sigmoid gate), deeplab2's widths
        self.se = SqueezeExcite(mid, rd_channels=max(1, int(cout * se_ratio)), act_layer=nn.SiLU) \
            if se_ratio else nn.Identity()
        self.shrink_conv = nn.Conv2d(mid, cout, 1)
        self.drop_path = DropPath(drop_path)

    def _shortcut(self, x):
        if self.stride > 1:
            # TF SAME pool, pad excluded: on even maps the pad is 0 (k=2) or one bottom/right
            # pixel (k=3), which ceil_mode's clipped last window leaves out of the mean.
            x = F.avg_pool2d(x, self.pool_size, self.stride, 0, ceil_mode=True)
        return self.shortcut(x)

    def forward(self, x):
        sc = self._shortcut(x)
        x = F.gelu(self.expand_norm(self.expand_conv(self.pre_norm(x))))
        if self.stride > 1:
            x = tf_same_pad(x, 3, self.stride)
        x = F.gelu(self.dw_norm(self.dw_conv(x)))
        x = self.shrink_conv(self.se(x))
        return sc + self.drop_path(x)


class RelPosAttention(nn.Module):
    """MHSA over (..., h, w, C) windows with a 2-D relative-position bias (SDPA)."""

    def __init__(self, dim: int, head_size: int, pos_size: int):
        super().__init__()
        self.num_heads = dim // head_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = nn.Parameter(torch.zeros(self.num_heads, 2 * pos_size - 1, 2 * pos_size - 1))
        nn.init.normal_(self.rel_pos, std=0.02)

    def forward(self, x, key_mask=None, window: int | None = None):
        """x: (..., h, w, C); key_mask: optional additive (0 / -inf) mask broadcastable to
        (..., heads, h*w, h*w), e.g. (nwin, 1, 1, h*w) for x of shape (B, nwin, h, w, C);
        window: confine attention to tiles of this size where h or w is larger (see
        :func:`rel_pos_bias`)."""
        return self.proj(rel_pos_attention(self.qkv(x), self.rel_pos, key_mask, self.num_heads, window))


class MOATBlock(nn.Module):
    """MBConv (no SE) then x += Attn(LN(x)), global where the map fits the window, else windowed."""

    def __init__(self, cin, cout, stride, pos_size, attn_mode="window", window=None, expansion=4,
                 head_size=32, drop_path=0.0, pool_size=3):
        super().__init__()
        self.mbconv = MBConv(cin, cout, stride, expansion, se_ratio=None, drop_path=drop_path,
                             pool_size=pool_size)
        self.norm = nn.LayerNorm(cout, eps=LN_EPS)
        self.attn = RelPosAttention(cout, head_size, pos_size)
        self.window = None if attn_mode == "global" else (window or pos_size)
        self.attn_mode = attn_mode
        self.drop_path = DropPath(drop_path)

    def _attend(self, x):
        """x: (B, H, W, C) normalized -> attention output, same shape."""
        parts = window_partition(x, self.window)
        return window_merge(self.attn(parts[0], parts[1], self.window), x)

    def forward(self, x):
        x = self.mbconv(x)
        y = self._attend(self.norm(x.permute(0, 2, 3, 1)))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Stem(nn.Module):
    def __init__(self, in_chans, chs):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, chs, 3, 2, 0)
        self.norm1 = _bn(chs)
        self.conv2 = nn.Conv2d(chs, chs, 3, 1, 1)

    def forward(self, x):
        return self.conv2(F.gelu(self.norm1(self.conv1(tf_same_pad(x, 3, 2)))))


# ----------------------------------------------------------------------------- model
class MOAT(EdgeModel):
    """tiny-MOAT. ``attn_mode``: 'window' (default) or 'global'; ``window_size``: windows of the
    two attention stages (stride 16, stride 32), global attention where the map fits;
    ``pool_size``: the strided blocks' shortcut pool, 3 (deeplab2's get_model) or 2 (its block
    default). Feature levels: the stem (stride 2), then each stage (4, 8, 16, 32)."""

    no_weight_decay_keywords = ("rel_pos",)  # the relative-position tables (attn.rel_pos)

    def __init__(self, cfg: dict, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, attn_mode: str = "window", window_size=WINDOW,
                 pool_size: int = 3, **kwargs):
        super().__init__()
        fixed_output_stride(kwargs, "MOAT",
                            "its attention stages carry relative-position tables sized to their grid")
        if kwargs:
            raise TypeError(f"MOAT got unexpected arguments: {sorted(kwargs)}")
        if attn_mode not in ("window", "global"):
            raise ValueError(f"attn_mode must be 'window' or 'global', got {attn_mode!r}")
        if not (isinstance(window_size, (tuple, list)) and len(window_size) == 2
                and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in window_size)):
            raise ValueError(f"window_size must be two positive ints (stride-16 and stride-32 "
                             f"windows), got {window_size!r}")
        if isinstance(pool_size, bool) or pool_size not in POOL_SIZES:
            raise ValueError(f"pool_size must be 3 (deeplab2's get_model) or 2 (its block default), "
                             f"got {pool_size!r}")
        dims = cfg["dims"]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.min_input_size = 32
        # A dynamic-size program (torch.export / ONNX) covers sides >= 64: at 32 px the last
        # map is 1x1, which torch.export specializes into a guard, so 32 px runs eagerly only.
        self.min_export_size = 64
        self.input_multiple = 32
        self.attn_mode = attn_mode
        self.window_size = tuple(window_size)
        self.pool_size = pool_size
        windows = (None, None, *window_size)
        # The largest input side still attended globally (above it: windows), per attention stage.
        self.size_breakpoints = () if attn_mode == "global" else \
            tuple(sorted({w * r for w, r in zip(window_size, ATTN_REDUCTION)}))
        self.stem = Stem(in_chans, cfg["stem"])
        total, k, prev = sum(DEPTHS), 0, cfg["stem"]
        stages = []
        for i, (depth, c) in enumerate(zip(DEPTHS, dims)):
            blocks = []
            for j in range(depth):
                dp = drop_path_rate * k / total  # deeplab2: survival decays with block id
                stride = 2 if j == 0 else 1
                if POS_SIZE[i] is None:
                    blocks.append(MBConv(prev, c, stride, drop_path=dp, pool_size=pool_size))
                else:
                    blocks.append(MOATBlock(prev, c, stride, POS_SIZE[i], attn_mode, windows[i],
                                            drop_path=dp, pool_size=pool_size))
                prev, k = c, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dims[-1], num_classes)
        self.feature_info = [dict(num_chs=cfg["stem"], reduction=2, module="stem")] + [
            dict(num_chs=c, reduction=2 ** (i + 2), module=f"stages.{i}") for i, c in enumerate(dims)
        ]

    def _forward_levels(self, x, stop: int):
        """Level 0 is the stem, level i >= 1 is stage i - 1."""
        x = self.stem(x)
        maps = [x]
        for i in range(stop):
            x = self._run_stage(self.stages[i], x)
            maps.append(x)
        return maps, x

    def forward_head(self, x, pre_logits: bool = False):
        x = self._pool(x)  # the official head pools first, then normalizes
        if self.global_pool == "":  # unpooled NCHW map: the channel norm per position
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = self.norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


# ----------------------------------------------------------------------------- official checkpoints
_TF_STEM = {"conv_0": "stem.conv1", "norm_0": "stem.norm1", "conv_1": "stem.conv2"}
_TF_LAYERS = {"shortcut_conv": "shortcut", "pre_norm": "pre_norm", "expand_conv": "expand_conv",
              "expand_norm": "expand_norm", "depthwise_conv": "dw_conv", "depthwise_norm": "dw_norm",
              "se/reduce_conv2d": "se.conv_reduce", "se/expand_conv2d": "se.conv_expand",
              "shrink_conv": "shrink_conv"}
_TF_VARS = {"kernel": "weight", "depthwise_kernel": "weight", "bias": "bias", "gamma": "weight",
            "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_TF_BLOCK = re.compile(r"^moat/block_(\d+)_(\d+)/(.+)/([a-z_]+)$")


def _tf_name(k: str) -> str:
    """Checkpoint-style name: no ':0', no '/ExponentialMovingAverage', the stem scope restored."""
    k = re.sub(r":0$", "", k)
    k = re.sub(r"/ExponentialMovingAverage$", "", k)
    if k.split("/")[0] in _TF_STEM:  # TF2 names the stem variables without the scope
        k = "moat/stem/" + k
    return k


def _tf_tensor(var: str, v: torch.Tensor) -> torch.Tensor:
    if var == "kernel" and v.dim() == 4:  # HWIO -> OIHW
        return v.permute(3, 2, 0, 1).contiguous()
    if var == "depthwise_kernel":  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        return v.permute(2, 3, 0, 1).contiguous()
    return v


def convert_official_checkpoint(state_dict: dict) -> dict:
    """deeplab2 (TensorFlow) tiny-MOAT variables -> ours (every variant; order-independent).

    Keys are the checkpoint names (``moat/stem/conv_0/kernel``, ``moat/block_02_00/attention/q/
    weight``, ...; a ':0' or '/ExponentialMovingAverage' suffix and TF2's unscoped stem names are
    accepted; with both a variable and its moving average, the average wins), values in TF
    layout: conv kernels HWIO, depthwise (kh, kw, C, 1), q/k/v weights (C, heads, d) fused into
    one (3C, C) Linear, o (heads, d, C), the logits head a (1, 1, C, classes) conv.
    Keys outside ``moat/`` pass through unchanged (so the strict load lists them).
    """
    if not any(_tf_name(k).startswith("moat/block_") for k in state_dict):
        raise KeyError("not an official deeplab2 MOAT state dict (no moat/block_* keys)")
    tf: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        name = _tf_name(k)
        if name not in tf or k.endswith("ExponentialMovingAverage"):
            tf[name] = v
    attn_blocks = {m.group(1, 2) for m in map(_TF_BLOCK.match, tf) if m and m[3].startswith("attention")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict] = {}
    for name, v in tf.items():
        if not name.startswith("moat/"):
            out[name] = v
            continue
        scope, var = name.rsplit("/", 1)
        m = _TF_BLOCK.match(name)
        if m:
            block = f"stages.{int(m[1])}.{int(m[2])}"
            layer = m[3]
            if layer.startswith("attention/"):
                proj = layer[len("attention/"):]
                if proj in ("q", "k", "v"):
                    qkv.setdefault(block, {})[(proj, var)] = v
                elif proj == "o" and var == "weight":  # (heads, d, C) -> (C_out, C_in)
                    out[f"{block}.attn.proj.weight"] = v.reshape(-1, v.shape[-1]).t().contiguous()
                elif proj == "o" and var == "bias":
                    out[f"{block}.attn.proj.bias"] = v
                else:
                    raise KeyError(f"not an official MOAT key: {name}")
            elif layer == "attention" and var == "relative_position_embedding":
                out[f"{block}.attn.rel_pos"] = v
            elif layer == "attention_norm":
                out[f"{block}.norm.{_TF_VARS[var]}"] = v
            elif layer in _TF_LAYERS and var in _TF_VARS:
                prefix = f"{block}.mbconv" if m.group(1, 2) in attn_blocks else block
                out[f"{prefix}.{_TF_LAYERS[layer]}.{_TF_VARS[var]}"] = _tf_tensor(var, v)
            else:
                raise KeyError(f"not an official MOAT key: {name}")
        elif scope.startswith("moat/stem/") and scope[len("moat/stem/"):] in _TF_STEM and var in _TF_VARS:
            out[f"{_TF_STEM[scope[len('moat/stem/'):]]}.{_TF_VARS[var]}"] = _tf_tensor(var, v)
        elif scope == "moat/final_layer_norm" and var in ("gamma", "beta"):
            out[f"norm.{_TF_VARS[var]}"] = v
        elif scope == "moat/logits_head" and var == "kernel":  # (1, 1, C, classes) -> (classes, C)
            out["head.weight"] = v.reshape(v.shape[-2], v.shape[-1]).t().contiguous()
        elif scope == "moat/logits_head" and var == "bias":
            out["head.bias"] = v
        else:
            raise KeyError(f"not an official MOAT key: {name}")
    for block, parts in qkv.items():
        try:  # q/k/v weight (C, heads, d) -> (heads*d, C), head-major; bias (heads, d) -> flat
            w = [parts[(p, "weight")].reshape(parts[(p, "weight")].shape[0], -1).t() for p in "qkv"]
            b = [parts[(p, "bias")].reshape(-1) for p in "qkv"]
        except KeyError as e:
            raise KeyError(f"official MOAT block {block} lacks attention {e.args[0]}") from None
        out[f"{block}.attn.qkv.weight"] = torch.cat(w).contiguous()
        out[f"{block}.attn.qkv.bias"] = torch.cat(b)
    return out


_PAPER = "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models (ICLR 2023)"
_NOTES = ("Built with relative position embedding (published params 3.4/5.1/9.8/19.5M with it). "
          "Inputs: multiples of 32. Global attention up to 256 px (the published setting), "
          "16x16 / 8x8 windows (padded, masked) beyond; window_size=(14, 7) for deeplab2's "
          "downstream windows, attn_mode='global' for whole-map attention at any size; "
          "pool_size=3 (deeplab2's get_model; 2 = its block default). Loads deeplab2 (TF) "
          "variables converted to a state dict. No released PyTorch weights.")
_SRC = "paper Table 5 (tiny-MOAT, 256 px, with pos. emb.); config: google-research/deeplab2"
_CONVERTERS = {"official": convert_official_checkpoint}


def _reg(name, params, macs, top1):
    @register_model("moat", paper=_PAPER, params=params, macs=macs, top1=top1, source=_SRC,
                    input_size=(3, 256, 256), notes=_NOTES, name=name, converters=_CONVERTERS)
    def builder(**kwargs):
        return MOAT(CFGS[name], **kwargs)

    builder.__name__ = name
    return builder


tiny_moat_0 = _reg("tiny_moat_0", 3.4e6, 1.1e9, 75.5)
tiny_moat_1 = _reg("tiny_moat_1", 5.1e6, 1.6e9, 78.3)
tiny_moat_2 = _reg("tiny_moat_2", 9.8e6, 3.0e9, 81.0)
tiny_moat_3 = _reg("tiny_moat_3", 19.5e6, 6.0e9, 82.7)
