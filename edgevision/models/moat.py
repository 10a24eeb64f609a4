"""tiny-MOAT-0/1/2/3 (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings
Strong Vision Models", ICLR 2023), following google-research/deeplab2
(model/pixel_encoder/moat.py, model/layers/moat_blocks.py, moat_attention.py).

Facts taken from the deeplab2 configuration:
- stem: 3x3 stride-2 conv (bias) -> BN -> GELU -> 3x3 conv (bias); no norm after the last conv.
- 4 stages [MBConv, MBConv, MOAT, MOAT], blocks [2, 3, 7, 2], each stage's first block
  stride 2; widths per variant (stem = stage-1 width): 32/64/128/256, 40/80/160/320,
  56/112/224/448, 80/160/320/640.
- MBConv: BN pre-norm -> 1x1 expand (4x the *output* width, no bias) -> BN -> GELU ->
  3x3 depthwise (stride, no bias) -> BN -> GELU -> [SE: mean -> 1x1 (out/4, bias) -> SiLU
  -> 1x1 (bias) -> sigmoid] -> 1x1 shrink (bias). Shortcut: 3x3 stride-2 average pool
  (TF SAME, padding excluded) where strided, then 1x1 conv (bias) where widths differ.
- MOAT block: the same MBConv without SE, then x += Attn(LayerNorm(x)) (eps 1e-5); no MLP.
  Attention: q, k, v, o projections with bias, head size 32, scale 32^-0.5, and a learned
  2-D relative-position bias per head of size (2P-1) x (2P-1), P = 14 at stride 16 and
  7 at stride 32, resized bilinearly to (2w-1) x (2w-1) for the window or map size w used.
- head: global mean -> LayerNorm (eps 1e-5) -> linear (a 1x1 conv in TF).
- BatchNorm as TF's defaults (eps 1e-3); GELU exact (erf); stride-2 convs use TF SAME
  padding (bottom/right for even maps) so TF checkpoints would map one to one.

Built: the variant **with** relative position embedding (deeplab2's default
'2d_multi_head'): the published ImageNet numbers (3.4/5.1/9.8/19.5M) are for it. Parameter
counts cannot tell the two apart (the (2P-1)^2-per-head tables add only 23k/29k/40k/58k
parameters, 0.3-0.7%; both variants land within 2% of both published columns).
The shortcut pool is 3x3: deeplab2's get_model default (the block class defaults to 2x2);
it has no parameters and is not counted as MACs.

Attention extent (``attn_mode``, ``window_size``):
- "window" (default): where the map fits in the window the attention is global; larger maps
  are split into windows, zero-padded bottom/right to multiples of the window with padded
  keys masked out, the bias table resized bilinearly to the window. The default windows are
  16x16 (stride 16) and 8x8 (stride 32): the map sizes at 256 px, the resolution of the
  published figures, so 224 and 256 px are global attention exactly as published
  (tiny-MOAT-0 at 256: 1.04 GMACs; published 1.1) and larger inputs (the detection /
  segmentation setting the paper uses windows for) are windowed. deeplab2's downstream
  default is 14/7 (the 224 px map sizes): ``window_size=(14, 7)`` gives it; at 256 px it pads
  16x16 maps into 2x2 windows of mostly padding (1.52 GMACs) and is not the published model.
- "global": one window covering the whole map at every size.
Inputs must be multiples of 32 (every stride-2 step then halves an even map exactly).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from edgevision.models.base import EdgeModel, linear_head
from edgevision.registry import register_model

CFGS = {
    "tiny_moat_0": dict(stem=32, dims=(32, 64, 128, 256)),
    "tiny_moat_1": dict(stem=40, dims=(40, 80, 160, 320)),
    "tiny_moat_2": dict(stem=56, dims=(56, 112, 224, 448)),
    "tiny_moat_3": dict(stem=80, dims=(80, 160, 320, 640)),
}
DEPTHS = (2, 3, 7, 2)
POS_SIZE = (None, None, 14, 7)  # relative-position grid per stage (deeplab2's table shapes)
# Default attention window per stage: the map size at the 256 px input of the published
# figures (stride 16 and 32), so that 224 and 256 px are global attention, as published.
WINDOW = (None, None, 16, 8)
BN_EPS = 1e-3
LN_EPS = 1e-5


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


def same_pad(x, k: int, s: int):
    """TF 'SAME' zero padding (extra pixel at bottom/right) for a k x k, stride-s op."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class SqueezeExcite(nn.Module):
    def __init__(self, chs: int, rd: int):
        super().__init__()
        self.reduce = nn.Conv2d(chs, rd, 1)
        self.expand = nn.Conv2d(rd, chs, 1)

    def forward(self, x):
        s = self.expand(F.silu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """deeplab2 MBConvBlock (pre-norm inverted residual, expansion of the output width)."""

    def __init__(self, cin, cout, stride, expansion=4, se_ratio=0.25, drop_path=0.0):
        super().__init__()
        mid = cout * expansion
        self.stride = stride
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.pre_norm = _bn(cin)
        self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
        self.expand_norm = _bn(mid)
        self.dw_conv = nn.Conv2d(mid, mid, 3, stride, 1 if stride == 1 else 0, groups=mid, bias=False)
        self.dw_norm = _bn(mid)
        self.se = SqueezeExcite(mid, max(1, int(cout * se_ratio))) if se_ratio else nn.Identity()
        self.shrink_conv = nn.Conv2d(mid, cout, 1)
        self.drop_path = DropPath(drop_path)

    def _shortcut(self, x):
        if self.stride > 1:  # 3x3/2 TF-SAME average pool; ceil_mode drops the bottom pad from the mean
            x = F.avg_pool2d(x, 3, self.stride, 0, ceil_mode=True)
        return self.shortcut(x)

    def forward(self, x):
        sc = self._shortcut(x)
        x = F.gelu(self.expand_norm(self.expand_conv(self.pre_norm(x))))
        if self.stride > 1:
            x = same_pad(x, 3, self.stride)
        x = F.gelu(self.dw_norm(self.dw_conv(x)))
        x = self.shrink_conv(self.se(x))
        return sc + self.drop_path(x)


def rel_pos_bias(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(heads, 2P-1, 2P-1) table -> (heads, h*w, h*w) bias, bias[i, j] = T[yj-yi, xj-xi]."""
    if table.shape[-2:] != (2 * h - 1, 2 * w - 1):
        table = F.interpolate(table.unsqueeze(0), size=(2 * h - 1, 2 * w - 1), mode="bilinear",
                              align_corners=False)[0]
    ys = torch.arange(h, device=table.device).repeat_interleave(w)
    xs = torch.arange(w, device=table.device).repeat(h)
    dy = ys[None, :] - ys[:, None] + h - 1
    dx = xs[None, :] - xs[:, None] + w - 1
    return table[:, dy, dx]


class RelPosAttention(nn.Module):
    """MHSA over (B, h, w, C) windows with a 2-D relative-position bias (SDPA)."""

    def __init__(self, dim: int, head_size: int, pos_size: int):
        super().__init__()
        self.num_heads = dim // head_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = nn.Parameter(torch.zeros(self.num_heads, 2 * pos_size - 1, 2 * pos_size - 1))
        nn.init.normal_(self.rel_pos, std=0.02)

    def forward(self, x, key_mask=None):
        """x: (B, h, w, C); key_mask: optional (B, 1, 1, h*w) additive mask (0 / -inf)."""
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x.reshape(b, n, c)).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = rel_pos_bias(self.rel_pos, h, w).to(x.dtype)
        if key_mask is not None:
            bias = bias.unsqueeze(0) + key_mask
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class MOATBlock(nn.Module):
    """MBConv (no SE) then x += Attn(LN(x)), global or in P x P windows."""

    def __init__(self, cin, cout, stride, pos_size, attn_mode, window=None, expansion=4, head_size=32,
                 drop_path=0.0):
        super().__init__()
        self.mbconv = MBConv(cin, cout, stride, expansion, se_ratio=None, drop_path=drop_path)
        self.norm = nn.LayerNorm(cout, eps=LN_EPS)
        self.attn = RelPosAttention(cout, head_size, pos_size)
        self.window = window or pos_size
        self.attn_mode = attn_mode
        self.drop_path = DropPath(drop_path)

    def _attend(self, x):
        """x: (B, H, W, C) normalized -> attention output, same shape."""
        b, hh, ww, c = x.shape
        p = self.window
        if self.attn_mode == "global" or (hh <= p and ww <= p):
            return self.attn(x)
        ph, pw = -hh % p, -ww % p
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        nh, nw = (hh + ph) // p, (ww + pw) // p
        win = x.reshape(b, nh, p, nw, p, c).transpose(2, 3).reshape(b * nh * nw, p, p, c)
        mask = None
        if ph or pw:  # padded keys never receive attention
            valid = F.pad(x.new_ones(1, hh, ww), (0, pw, 0, ph))
            valid = valid.reshape(1, nh, p, nw, p).transpose(2, 3).reshape(nh * nw, 1, 1, p * p)
            mask = torch.zeros_like(valid).masked_fill(valid == 0, float("-inf")).repeat(b, 1, 1, 1)
        out = self.attn(win, mask)
        out = out.reshape(b, nh, nw, p, p, c).transpose(2, 3).reshape(b, nh * p, nw * p, c)
        return out[:, :hh, :ww]

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
        return self.conv2(F.gelu(self.norm1(self.conv1(same_pad(x, 3, 2)))))


class MOAT(EdgeModel):
    def __init__(self, cfg: dict, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, attn_mode: str = "window", window_size=WINDOW[2:],
                 pool_size: int = 3, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"MOAT got unexpected arguments: {sorted(kwargs)}")
        if attn_mode not in ("window", "global"):
            raise ValueError(f"attn_mode must be 'window' or 'global', got {attn_mode!r}")
        window_size = (None, None, *window_size)
        if pool_size != 3:
            raise ValueError(f"only the 3x3 shortcut pool of the released models is built, got {pool_size}")
        dims = cfg["dims"]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.min_input_size = 32
        self.input_multiple = 32
        self.stem = Stem(in_chans, cfg["stem"])
        total, k, prev = sum(DEPTHS), 0, cfg["stem"]
        stages = []
        for i, (depth, c) in enumerate(zip(DEPTHS, dims)):
            blocks = []
            for j in range(depth):
                dp = drop_path_rate * k / total  # deeplab2: survival decays with block id
                stride = 2 if j == 0 else 1
                if POS_SIZE[i] is None:
                    blocks.append(MBConv(prev, c, stride, drop_path=dp))
                else:
                    blocks.append(MOATBlock(prev, c, stride, POS_SIZE[i], attn_mode, window_size[i],
                                            drop_path=dp))
                prev, k = c, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dims[-1], num_classes)
        self.feature_info = [dict(num_chs=cfg["stem"], reduction=2, module="stem")] + [
            dict(num_chs=c, reduction=2 ** (i + 2), module=f"stages.{i}") for i, c in enumerate(dims)
        ]

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x):
        x = self.stem(x)
        feats = [x]
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


_PAPER = "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models (ICLR 2023)"
_NOTES = ("Built with relative position embedding (published params 3.4/5.1/9.8/19.5M with it). "
          "Inputs: multiples of 32. Global attention up to 256 px (the published setting), "
          "16x16 / 8x8 windows (padded, masked) beyond; window_size=(14, 7) for deeplab2's "
          "downstream windows, attn_mode='global' for whole-map attention at any size. "
          "No released PyTorch weights.")
_SRC = "paper Table 5 (tiny-MOAT, 256 px, with pos. emb.); config: google-research/deeplab2"


def _reg(name, params, macs, top1):
    @register_model("moat", paper=_PAPER, params=params, macs=macs, top1=top1, source=_SRC,
                    input_size=(3, 256, 256), notes=_NOTES, name=name)
    def builder(**kwargs):
        return MOAT(CFGS[name], **kwargs)

    builder.__name__ = name
    return builder


tiny_moat_0 = _reg("tiny_moat_0", 3.4e6, 1.1e9, 75.5)
tiny_moat_1 = _reg("tiny_moat_1", 5.1e6, 1.6e9, 78.3)
tiny_moat_2 = _reg("tiny_moat_2", 9.8e6, 3.0e9, 81.0)
tiny_moat_3 = _reg("tiny_moat_3", 19.5e6, 6.0e9, 82.7)
