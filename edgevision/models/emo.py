"""EMO-1M/2M/5M/6M (Zhang et al., "Rethinking Mobile Block for Efficient Attention-based
Models", ICCV 2023), faithful to the official code (zhangzjn/EMO, ``model/emo.py``).

The network is a stem and four stages of iRMB blocks (inverted residual mobile block):
norm -> [windowed attention] -> 1x1 "v" expansion -> depthwise conv + BN + SiLU (inner
residual) -> 1x1 projection (outer residual). Stages 3-4 use LayerNorm/GELU and, in every
block but the first, EW-MHSA: attention in 7x7 windows computed on the normalised input
itself (``attn_pre``) before the v expansion.

Faithfulness notes (all verified against official logits, max |d| <= 2e-6):
- Windows are **strided** by default: with n_h x n_w windows, pixel (r, c) falls in window
  (r mod n_h, c mod n_w), as the official rearrange does; the released weights need it.
  ``window_mode="contiguous"`` gives Swin-style blocks instead (a different network).
- Any input size: the attention stages zero-pad bottom/right to a multiple of 7 (no mask,
  padded tokens are keys/values, as official), then crop. The v expansion is pointwise, so it
  is applied after the crop: same result, fewer MACs than the official code when padding.
- Every BN and LN uses eps 1e-6; GELU is the exact (erf) one.
- Traceable: torch.fx records the pad/crop as calls; no Python branch on sizes, and windows
  and channel-LayerNorm outputs are copied to contiguous memory before views, so one
  ``torch.export`` program with dynamic height/width is right for every window count
  (see :mod:`edgevision.layers.shapes`).
- ``output_stride`` (8, 16, default 32) turns the stride of the last stages into dilation for
  dense heads (DeepLab's rule: a kept stage's first block runs at stride 1 with the previous
  dilation, its other depthwise convs dilate by 2); weights are unchanged.
- ``drop_rate`` is dropout before the classifier (timm convention); ``drop_path_rate`` is
  spread linearly over the stage blocks (the stem gets none), as official. The official
  training defaults (drop_path 0.04036 for 1M, 0.05 otherwise) are not applied implicitly.

Layout: ``stem.{conv,bn,block}``, ``stages.{i}.{j}.{norm,qk,v,conv_local,proj}``, ``norm``,
``head``. The official keys (``stage0.0.convs.0.0``, ``stage{i+1}.{j}``, LayerNorm wrapped as
``.norm.norm``) are renamed by :func:`convert_official_checkpoint`; the per-block names are
the official ones, so the mapping is a handful of prefix rules that work for every variant.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models._efficientnet_blocks import SqueezeExcite

from edgevision.layers.attention import (
    check_window_mode,
    multihead_attention,
    window_partition,
    window_unpartition,
)
from edgevision.layers.shapes import contiguous_copy, crop_to, pad_to_multiple
from edgevision.models.base import EdgeModel, linear_head
from edgevision.registry import register_model

# Size-dependent helpers: torch.fx.symbolic_trace records them as calls (see layers/shapes.py).
torch.fx.wrap("pad_to_multiple")
torch.fx.wrap("crop_to")
torch.fx.wrap("window_partition")
torch.fx.wrap("window_unpartition")

EPS = 1e-6  # every norm in EMO (BN and LN)
STEM_DIM = 24
WINDOW = 7

# D depths, C widths, E expansion ratios, dim_head (only used in the attention stages 3-4).
CFGS = {
    "emo_1m": dict(depths=(2, 2, 8, 3), dims=(32, 48, 80, 168), exp=(2.0, 2.5, 3.0, 3.5), dim_head=(16, 16, 20, 21)),
    "emo_2m": dict(depths=(3, 3, 9, 3), dims=(32, 48, 120, 200), exp=(2.0, 2.5, 3.0, 3.5), dim_head=(16, 16, 20, 20)),
    "emo_5m": dict(depths=(3, 3, 9, 3), dims=(48, 72, 160, 288), exp=(2.0, 3.0, 4.0, 4.0), dim_head=(24, 24, 32, 32)),
    "emo_6m": dict(depths=(3, 3, 9, 3), dims=(48, 72, 160, 320), exp=(2.0, 3.0, 4.0, 5.0), dim_head=(16, 24, 20, 32)),
}
# Shared by all variants: DW kernel, norm ("bn"/"ln") and v activation per stage; attention in 3-4.
KERNELS = (3, 3, 5, 5)
NORMS = ("bn", "bn", "ln", "ln")
ACTS = ("silu", "silu", "gelu", "gelu")
ATTN = (False, False, True, True)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (the official wraps nn.LayerNorm the same way).

    The result is copied back to contiguous NCHW: a channels-last-strided map makes the next
    reshapes and convs ask whether a side is 1 (their layout choice), which torch.export turns
    into guards on the input size."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return contiguous_copy(x.permute(0, 3, 1, 2))


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.BatchNorm2d(dim, eps=EPS) if kind == "bn" else LayerNorm2d(dim, eps=EPS)


def _act(kind: str) -> nn.Module:
    return nn.SiLU() if kind == "silu" else nn.GELU()


class ConvAct(nn.Module):
    """1x1 conv (+ activation); keys ``conv.*`` like the official ConvNormAct without norm."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool, act: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 1, bias=bias)
        self.act = _act(act) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


class DWConvBNAct(nn.Module):
    """Depthwise kxk conv (no bias) -> BN -> SiLU, in every stage (even the LN/GELU ones)."""

    def __init__(self, dim: int, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, stride, dilation * (kernel // 2), dilation, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim, eps=EPS)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class StemBlock(nn.Module):
    """The stem's iRMB: no norm, no expansion, no skip: DW3x3+BN+SiLU -> SE -> 1x1 (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_local = DWConvBNAct(dim, 3, 1)
        # timm's SE (conv_reduce / conv_expand, the official key names) at reduction ratio 1
        self.se = SqueezeExcite(dim, rd_channels=dim, act_layer=nn.SiLU)
        self.proj = ConvAct(dim, dim, bias=False)

    def forward(self, x):
        return self.proj(self.se(self.conv_local(x)))


class Stem(nn.Module):
    """3x3 stride-2 conv with bias -> BN (no activation) -> StemBlock: /2."""

    def __init__(self, in_chans: int, dim: int = STEM_DIM):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 3, 2, 1)
        self.bn = nn.BatchNorm2d(dim, eps=EPS)
        self.block = StemBlock(dim)

    def forward(self, x):
        return self.block(self.bn(self.conv(x)))


class IRMB(nn.Module):
    """Inverted residual mobile block, optionally with windowed attention (EW-MHSA).

    First block of a stage: stride-2 DW conv, no skip, no attention (``downsample=True``).
    """

    def __init__(self, dim_in: int, dim_out: int, exp_ratio: float, norm: str, act: str, kernel: int,
                 downsample: bool, attn: bool, dim_head: int, window_mode: str = "strided",
                 drop_path: float = 0.0, stride: int | None = None, dilation: int = 1,
                 window: int = WINDOW):
        super().__init__()
        hidden = int(dim_in * exp_ratio)
        self.window = window
        self.has_skip = not downsample and dim_in == dim_out
        self.attn = attn and not downsample
        self.window_mode = window_mode
        self.norm = _norm(norm, dim_in)
        if self.attn:
            self.num_heads = dim_in // dim_head
            self.scale = dim_head ** -0.5
            self.qk = ConvAct(dim_in, 2 * dim_in, bias=True)  # [q | k], each head-major
        self.v = ConvAct(dim_in, hidden, bias=True, act=act)
        stride = (2 if downsample else 1) if stride is None else stride  # 1 in a dilated stage
        self.conv_local = DWConvBNAct(hidden, kernel, stride, dilation)
        self.proj = ConvAct(hidden, dim_out, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of the normalised map over itself in 7x7 windows (zero-padded, then cropped).

        No Python branch on sizes: padding and crop are by zero at multiples of 7, so traced and
        exported graphs keep them for every size (layers/shapes.py)."""
        xp = pad_to_multiple(x, self.window)
        qk = window_partition(self.qk(xp), self.window, self.window_mode)
        tokens = window_partition(xp, self.window, self.window_mode)
        q, k = qk.chunk(2, dim=-1)  # [q | k], as the qk conv lays them out
        out = multihead_attention(q, k, tokens, self.num_heads, self.scale)
        out = window_unpartition(out, self.window, xp.shape[2], xp.shape[3], self.window_mode)
        return crop_to(out, x.shape[2], x.shape[3])

    def forward(self, x):
        shortcut = x
        x = self.norm(x)
        if self.attn:
            x = self.window_attention(x)
        x = self.v(x)
        x = x + self.conv_local(x) if self.has_skip else self.conv_local(x)
        x = self.proj(x)
        return shortcut + self.drop_path(x) if self.has_skip else x


class EMO(EdgeModel):
    def __init__(self, cfg: dict, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, window_mode: str = "strided", output_stride: int = 32, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"EMO got unexpected arguments: {sorted(kwargs)}")
        check_window_mode(window_mode)
        if isinstance(output_stride, bool) or output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32; got {output_stride!r}")
        self.output_stride = output_stride
        depths, dims = cfg["depths"], cfg["dims"]
        # Optional per-stage knobs (search spaces, net configs); the released variants use the defaults.
        kernels, attn, window = cfg.get("kernels", KERNELS), cfg.get("attn", ATTN), cfg.get("window", WINDOW)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.window_mode = window_mode
        self.min_input_size = 32
        self.input_multiple = 1
        self.stem = Stem(in_chans)
        n_blocks = sum(depths)  # linear schedule, in Python so that meta-device builds work
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # official: stem gets none
        stages, dim_prev, n = [], STEM_DIM, 0
        stride, dilation = 2, 1  # running stride and dilation (stem: /2)
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            # Output stride: past it a stage keeps the resolution, its first block runs at stride 1
            # with the previous dilation and the others dilate by 2 (DeepLab's atrous rule).
            keep = stride * 2 > output_stride
            block_dilation = dilation
            dilation, stride = (dilation * 2, stride) if keep else (dilation, stride * 2)
            blocks = []
            for j in range(depth):
                first = j == 0  # downsampling block: no skip, no attention, doubled expansion
                blocks.append(IRMB(
                    dim_prev, dim, cfg["exp"][i] * (2 if first else 1), NORMS[i], ACTS[i], kernels[i],
                    downsample=first, attn=attn[i], dim_head=cfg["dim_head"][i], window=window,
                    window_mode=window_mode, drop_path=dpr[n], stride=1 if keep and first else None,
                    dilation=block_dilation if first else dilation))
                dim_prev, n = dim, n + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=d, reduction=min(4 * 2 ** i, output_stride), module=f"stages.{i}")
                             for i, d in enumerate(dims)]
        self.norm = LayerNorm2d(dims[-1], eps=EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # Official init: trunc-normal(0.02) Linear with zero bias; convs keep PyTorch's default.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # forward_features / _forward_levels: the base's (stem, then one feature level per stage,
    # through _run_stage so that set_grad_checkpointing applies). As in the official code the
    # final LayerNorm belongs to the head: forward_features returns the last stage's map.

    def forward_head(self, x, pre_logits: bool = False):
        x = self._pool(self.norm(x))  # global_pool='': the normalised map (B, C, H, W)
        if pre_logits:
            return x
        return self.head(self.head_drop(x))


# ----------------------------------------------------------------------------- converter
_OFFICIAL_PREFIX = (
    (re.compile(r"^stage0\.0\.convs\.0\.0\."), "stem.conv."),
    (re.compile(r"^stage0\.0\.convs\.0\.1\."), "stem.bn."),
    (re.compile(r"^stage0\.1\."), "stem.block."),
)
_OFFICIAL_STAGE = re.compile(r"^stage([1-4])\.(\d+)\.(.*)$")


def _official_key(k: str) -> str:
    for pat, new in _OFFICIAL_PREFIX:
        if pat.match(k):
            return pat.sub(new, k)
    m = _OFFICIAL_STAGE.match(k)
    if m:
        rest = re.sub(r"^norm\.norm\.", "norm.", m[3])  # LN wrapper -> our LayerNorm2d
        return f"stages.{int(m[1]) - 1}.{m[2]}.{rest}"
    if k.startswith("norm.norm."):
        return "norm." + k[len("norm.norm."):]
    if k.startswith("head."):
        return k
    raise KeyError(f"not an official EMO key: {k}")


def convert_official_checkpoint(state_dict: dict) -> dict:
    """zhangzjn/EMO keys -> ours (same rules for every variant; order-independent)."""
    if not any(k.startswith("stage0.") for k in state_dict):
        raise KeyError("not an official EMO state dict (no stage0.* keys)")
    return {_official_key(k): v for k, v in state_dict.items()}


_PAPER = "Rethinking Mobile Block for Efficient Attention-based Models (ICCV 2023)"
# The official README's ImageNet table links each checkpoint as resources/EMO_<n>M/net.pth in
# zhangzjn/EMO; /raw/ at the reference snapshot commit downloads it. Like the official loader,
# create_model reads a bare state dict or the official trainer's {"net": ..., "net_E": ...} file.
_URL = "https://github.com/zhangzjn/EMO/raw/27d9b40fea9c2a12a2fe7acc51032184852a99d8/resources/{}/net.pth"
_NOTES = ("Strided (interleaved) 7x7 windows by default, as the released weights need; "
          "window_mode='contiguous' for Swin-style windows. Any input size (attention stages "
          "zero-pad to multiples of 7, as official). MACs are multiply-adds.")
_SOURCE = "paper ImageNet-1K table = official README (params, MACs, top-1); official code: {:,} params"


def _emo(name: str, **kwargs) -> EMO:
    return EMO(CFGS[name], **kwargs)


@register_model("emo", paper=_PAPER, params=1.3e6, macs=261e6, top1=71.5, source=_SOURCE.format(1361168),
                weights_url=_URL.format("EMO_1M"), converters={"official": convert_official_checkpoint},
                notes=_NOTES + " Paper says 1.3M params; the code (and its train log) gives 1.36M.")
def emo_1m(**kwargs):
    return _emo("emo_1m", **kwargs)


@register_model("emo", paper=_PAPER, params=2.3e6, macs=439e6, top1=75.1, source=_SOURCE.format(2377472),
                weights_url=_URL.format("EMO_2M"), converters={"official": convert_official_checkpoint},
                notes=_NOTES + " Paper says 2.3M params; the code (and its train log) gives 2.38M.")
def emo_2m(**kwargs):
    return _emo("emo_2m", **kwargs)


@register_model("emo", paper=_PAPER, params=5.1e6, macs=903e6, top1=78.4, source=_SOURCE.format(5108848),
                weights_url=_URL.format("EMO_5M"), converters={"official": convert_official_checkpoint},
                notes=_NOTES)
def emo_5m(**kwargs):
    return _emo("emo_5m", **kwargs)


@register_model("emo", paper=_PAPER, params=6.1e6, macs=961e6, top1=79.0, source=_SOURCE.format(6168496),
                weights_url=_URL.format("EMO_6M"), converters={"official": convert_official_checkpoint},
                notes=_NOTES + " Paper says 6.1M params; the code (and its train log) gives 6.17M.")
def emo_6m(**kwargs):
    return _emo("emo_6m", **kwargs)
