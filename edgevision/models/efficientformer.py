"""EfficientFormer L1/L3/L7 (Li et al., "EfficientFormer: Vision Transformers at MobileNet
Speed", NeurIPS 2022), at any input size.

Layout (state-dict key names) follows timm's ``efficientformer`` so timm checkpoints load
after dropping its ``attention_bias_idxs`` buffer; the official repository's
(snap-research/EfficientFormer) keys are remapped by :func:`convert_official_checkpoint`.

Differences from the official code and timm, on purpose:
- **Any input size.** The learned attention-bias table is fixed to a 7x7 token grid
  (224 px input). For another final grid HxW the table, indexed by the absolute offset
  (|dy|, |dx|), is resized from 7x7 to HxW with bicubic interpolation, align_corners=True
  (offset 0, a token's bias to itself, and the largest offset stay pinned to the table's
  corners). At 7x7 the table is used as stored, so 224 px gives exactly the fixed-grid result.
  The resize is computed from its bicubic taps (A = -0.75, as ``F.interpolate``; equal to it
  within 1e-14 in float64, float32 rounding aside), without ``F.interpolate``'s branch on a
  1-point output, so one ``torch.export`` program resizes for each input's grid.
- **No bias cache.** The official attention caches the gathered bias in eval() and serves a
  stale one if weights change afterwards; here it is gathered on every forward (a gather of
  heads x N x N values, negligible next to the matmuls).
- **Attention written out**, as timm's (q k^T * scale + bias, softmax, @ v) rather than
  ``F.scaled_dot_product_attention``: with a float mask SDPA runs its math path anyway, whose
  reshapes of a transposed k make torch.export pin the input size.
- **Features.** ``forward_features`` returns the normalised (B, N, C) tokens, and with
  ``global_pool=''`` ``forward_head`` returns them unpooled, as timm's EfficientFormer;
  ``forward_intermediates`` returns NCHW maps at strides 4-32 (the last stage's tokens
  un-flattened, before the final norm). torchvision's ``create_feature_extractor`` at
  ``stages.3`` returns that stage's tokens (the NCHW map is never built in ``forward``).
- Training mode follows timm: forward returns the average of ``head`` and ``head_dist``
  unless ``set_distilled_training(True)`` was called, in which case training-mode forward
  returns the tuple (head, head_dist) for a distillation loss. (The official code always
  returns the tuple in training.) Eval always returns the average, as official.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from edgevision.layers.shapes import contiguous_copy, map_to_tokens, tokens_to_map
from edgevision.models.base import (
    EdgeModel,
    fixed_output_stride,
    linear_head,
    stage_block_groups,
)
from edgevision.registry import register_model

# Size-dependent helpers: torch.fx.symbolic_trace records them as calls (see layers/shapes.py).
torch.fx.wrap("tokens_to_map")
torch.fx.wrap("map_to_tokens")

CFGS = {
    "efficientformer_l1": dict(depths=(3, 2, 6, 4), dims=(48, 96, 224, 448), num_vit=1),
    "efficientformer_l3": dict(depths=(4, 4, 12, 6), dims=(64, 128, 320, 512), num_vit=4),
    "efficientformer_l7": dict(depths=(6, 6, 18, 8), dims=(96, 192, 384, 768), num_vit=8),
}

BIAS_GRID = 7  # the attention-bias table's token grid (224 px / 32)


class LayerScale(nn.Module):
    """Per-channel scale; channel axis is last for tokens, 1 for NCHW maps."""

    def __init__(self, dim: int, init: float = 1e-5, channels_first: bool = False):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))
        self.channels_first = channels_first

    def forward(self, x):
        g = self.gamma.view(1, -1, 1, 1) if self.channels_first else self.gamma
        return x * g


class Stem(nn.Sequential):
    """Two 3x3 stride-2 convs (with bias), each + BN + ReLU: stride 4."""

    def __init__(self, in_chans: int, out_chs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chs // 2, 3, 2, 1)
        self.norm1 = nn.BatchNorm2d(out_chs // 2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, 2, 1)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()


class Downsample(nn.Module):
    """3x3 stride-2 conv with bias + BN between stages."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.norm(self.conv(x))


class Flat(nn.Module):
    """NCHW -> (B, N, C) tokens (contiguous). Parameterless; it keeps the official block indices."""

    def forward(self, x):
        return map_to_tokens(x)


class PoolMixer(nn.Module):
    """PoolFormer token mixer: avgpool3x3 (padding not counted) minus identity."""

    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) - x


class ConvMlp(nn.Module):
    """1x1 conv -> BN -> GELU -> 1x1 conv -> BN (Meta4D MLP)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.drop(self.norm2(self.fc2(x)))


class Meta4D(nn.Module):
    """x += ls1 * (pool(x) - x); x += ls2 * ConvMlp(x)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 ls_init: float = 1e-5):
        super().__init__()
        self.token_mixer = PoolMixer()
        self.ls1 = LayerScale(dim, ls_init, channels_first=True)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale(dim, ls_init, channels_first=True)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.ls1(self.token_mixer(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


def _cubic_taps(n_out, n_in: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D bicubic resampling from n_in to n_out points with align_corners=True, as torch's
    ``upsample_bicubic2d`` defines it (A = -0.75, source index clamped to the border; a single
    output point samples point 0): (n_out, 4) weights and the (n_out, 4) source points they
    apply to. Tensor ops only: ``F.interpolate`` branches on whether n_out is 1, a guard that
    would pin an exported program's input size. At n_out == n_in the weights are exactly
    (0, 1, 0, 0) on the output's own point: the identity."""
    a = -0.75
    i = torch.arange(n_out, device=ref.device, dtype=ref.dtype)
    src = (n_in - 1) / i[-1:].clamp(min=1) * i  # scale (in - 1) / (out - 1), as torch; 0 for out = 1
    i0 = src.floor()
    t = (src - i0)[:, None]
    x1, x2 = t + 1, 1 - t
    w = torch.cat([
        ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a,  # tap i0 - 1
        ((a + 2) * t - (a + 3)) * t * t + 1,  # tap i0
        ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,  # tap i0 + 1
        ((a * (x2 + 1) - 5 * a) * (x2 + 1) + 8 * a) * (x2 + 1) - 4 * a,  # tap i0 + 2
    ], dim=1)
    taps = (i0.long()[:, None] + torch.arange(-1, 3, device=ref.device)).clamp(0, n_in - 1)
    return w, taps


@torch.fx.wrap
def attention_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(heads, 49) |offset| table -> (heads, N, N) bias for an HxW token grid.

    The table is a function of (|dy|, |dx|) sampled on 0..6; it is resized to 0..H-1 x 0..W-1
    by bicubic interpolation with align_corners=True (separable weight matrices, equal to
    ``F.interpolate`` up to float rounding), which at 7x7 returns the table exactly as stored.
    No branch on the grid: under torch.export the resize and the gather follow the symbolic
    grid, so an exported program interpolates for the grid of each input, not the grid seen at
    export. (torch.fx.symbolic_trace records this function as one call.)
    """
    h, w = grid
    heads = table.shape[0]
    wy, ty = _cubic_taps(h, BIAS_GRID, table)  # (h, 4) weights and table rows
    wx, tx = _cubic_taps(w, BIAS_GRID, table)  # (w, 4)
    t = table.reshape(heads, BIAS_GRID, BIAS_GRID)[:, ty[:, :, None, None], tx[None, None, :, :]]
    t = (t * wx).sum(-1)  # (heads, h, 4, w): along x first, then y, as torch does
    t = (t * wy[:, :, None]).sum(2)  # (heads, h, w)
    ys = torch.arange(h, device=table.device)
    xs = torch.arange(w, device=table.device)
    dy = (ys[:, None] - ys[None, :]).abs()  # (h, h)
    dx = (xs[:, None] - xs[None, :]).abs()  # (w, w)
    idx = dy[:, None, :, None] * w + dx[None, :, None, :]  # (h, w, h, w): query (y, x), key (y', x')
    return t.reshape(heads, h * w)[:, idx.reshape(h * w, h * w)]


class Attention(nn.Module):
    """MHSA with key_dim 32, value dim 4*32 per head; qkv laid out per head as [q|k|v]."""

    def __init__(self, dim: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, BIAS_GRID * BIAS_GRID))

    def forward(self, x, grid: tuple[int, int]):
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, self.num_heads, 2 * self.key_dim + self.val_dim).transpose(1, 2)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=-1)
        bias = attention_bias(self.attention_biases, grid).to(q.dtype)  # no cache: never stale
        # Written out (as timm does) rather than F.scaled_dot_product_attention: with a float
        # mask SDPA takes its math path, whose matmuls reshape a transposed k; with a dynamic
        # token count that reshape asks whether the count is 1, a guard that would pin an
        # exported program's input size. Here q, k^T, v and the merged heads are contiguous copies.
        attn = (contiguous_copy(q) @ contiguous_copy(k.transpose(-2, -1))) * self.scale + bias
        x = attn.softmax(dim=-1) @ contiguous_copy(v)
        return self.proj(contiguous_copy(x.transpose(1, 2)).view(b, n, self.num_heads * self.val_dim))


class Meta3D(nn.Module):
    """Pre-norm transformer block on tokens with layer scale."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 ls_init: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, ls_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, grid: tuple[int, int]):
        x = x + self.drop_path(self.ls1(self.token_mixer(self.norm1(x), grid)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class Stage(nn.Module):
    """Optional downsample, then Meta4D blocks; in the last stage Flat + num_vit Meta3D blocks."""

    def __init__(self, in_chs, dim, depth, downsample, num_vit, dpr, drop):
        super().__init__()
        self.tokens_out = bool(num_vit)  # the last stage ends in (B, N, C) tokens
        self.downsample = Downsample(in_chs, dim) if downsample else nn.Identity()
        blocks = []
        for i in range(depth):
            if num_vit and i == depth - num_vit:
                blocks.append(Flat())
            if num_vit and i >= depth - num_vit:
                blocks.append(Meta3D(dim, drop=drop, drop_path=dpr[i]))
            else:
                blocks.append(Meta4D(dim, drop=drop, drop_path=dpr[i]))
        self.blocks = nn.Sequential(*blocks)

    def output_grid(self, x: torch.Tensor):
        """(H, W) of this stage's output for input map x (the stride-2 3x3 conv: ceil(side / 2))."""
        h, w = x.shape[2], x.shape[3]
        if isinstance(self.downsample, Downsample):  # a module-structure branch, not a size branch
            return (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w

    def forward(self, x):
        x = self.downsample(x)
        grid = (x.shape[2], x.shape[3])
        for blk in self.blocks:
            x = blk(x, grid) if isinstance(blk, Meta3D) else blk(x)
        return x


class EfficientFormer(EdgeModel):
    classifier_names = ("head", "head_dist")
    no_weight_decay_keywords = ("attention_biases",)  # as timm's EfficientFormer

    def __init__(self, cfg: dict, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, proj_drop_rate: float = 0.0, **kwargs):
        super().__init__()
        fixed_output_stride(kwargs, "EfficientFormer",
                            "its pooling mixers cannot dilate and its last stage's attention bias is tied to its grid")
        if kwargs:
            raise TypeError(f"EfficientFormer got unexpected arguments: {sorted(kwargs)}")
        depths, dims = cfg["depths"], cfg["dims"]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.min_input_size = 32  # final map >= 1 token
        self.input_multiple = 1
        self.distilled_training = False

        self.stem = Stem(in_chans, dims[0])
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear over blocks
        stages, start, prev = [], 0, dims[0]
        for i, (d, c) in enumerate(zip(depths, dims)):
            num_vit = cfg["num_vit"] if i == len(depths) - 1 else 0
            stages.append(Stage(prev, c, d, i > 0, num_vit, rates[start:start + d], proj_drop_rate))
            start, prev = start + d, c
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dims[-1], num_classes)
        self.head_dist = linear_head(dims[-1], num_classes)
        self.feature_info = [
            dict(num_chs=c, reduction=2 ** (i + 2), module=f"stages.{i}") for i, c in enumerate(dims)
        ]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def _forward_levels(self, x, stop: int):
        """Stage outputs as NCHW maps at strides 4/8/16/32 (the last stage's tokens un-flattened,
        without the final norm); the running tensor after the last stage is (B, N, C) tokens."""
        x = self.stem(x)
        maps = []
        for i in range(stop + 1):
            stage = self.stages[i]
            h, w = stage.output_grid(x)
            x = self._run_stage(stage, x)
            maps.append(tokens_to_map(x, h, w) if stage.tokens_out else x)
        return maps, x

    def forward_features(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self._features_tail(x)  # (B, N, C) tokens

    def _features_tail(self, x):
        return self.norm(x)

    def _pool(self, x):
        """Token pooling: 'avg' averages the N tokens; '' keeps the normalised (B, N, C) tokens
        (timm's EfficientFormer with global_pool='' returns the same)."""
        return x.mean(dim=1) if self.global_pool == "avg" else x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self._pool(x))
        if pre_logits:
            return x
        y, y_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return y, y_dist
        return (y + y_dist) / 2

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's format (stem, then per stage; as timm's ConvNeXt for the fine grouping)."""
        return stage_block_groups(r"^stem", coarse)


# ----------------------------------------------------------------------------- converters
_STEM = {"patch_embed.0": "stem.conv1", "patch_embed.1": "stem.norm1",
         "patch_embed.3": "stem.conv2", "patch_embed.4": "stem.norm2"}


def _official_key(k: str) -> str:
    for old, new in _STEM.items():
        if k.startswith(old + "."):
            return new + k[len(old):]
    m = re.match(r"network\.(\d+)\.(\d+)\.(.*)", k)
    if m:  # network.{2i}.{j}: block j of stage i
        n, j, rest = int(m[1]), m[2], m[3]
        if n % 2:
            raise KeyError(f"unexpected block under downsample index: {k}")
        rest = re.sub(r"^layer_scale_([12])", r"ls\1.gamma", rest)
        return f"stages.{n // 2}.blocks.{j}.{rest}"
    m = re.match(r"network\.(\d+)\.(proj|norm)\.(.*)", k)
    if m:  # network.{2i-1}: downsample into stage i
        n = int(m[1])
        return f"stages.{(n + 1) // 2}.downsample.{'conv' if m[2] == 'proj' else 'norm'}.{m[3]}"
    if k.startswith("dist_head."):
        return "head_dist." + k[len("dist_head."):]
    if k.split(".")[0] in ("norm", "head"):
        return k
    raise KeyError(f"not an official EfficientFormer key: {k}")


def convert_official_checkpoint(state_dict: dict) -> dict:
    """snap-research/EfficientFormer keys -> ours. Index-based (not order-based), any variant."""
    if "stem.conv1.weight" in state_dict:
        raise KeyError("already in timm/edgevision layout")
    return {_official_key(k): v for k, v in state_dict.items() if not k.endswith("attention_bias_idxs")}


def timm_to_ours(state_dict: dict) -> dict:
    """timm's efficientformer layout is ours minus the 7x7 index buffer we recompute per grid."""
    if "stem.conv1.weight" not in state_dict:
        raise KeyError("not a timm EfficientFormer state dict")
    return {k: v for k, v in state_dict.items() if not k.endswith("attention_bias_idxs")}


_CONVERTERS = {"timm": timm_to_ours, "official": convert_official_checkpoint}
_PAPER = "EfficientFormer: Vision Transformers at MobileNet Speed (NeurIPS 2022)"
_NOTES = ("Any input size: the 7x7 attention-bias table is resized (bicubic, align_corners=True) "
          "to the final token grid; exact fixed-grid result at 224. Eval output = mean of head "
          "and head_dist. Params include head_dist (official distillation=True default).")
_URL = "https://github.com/snap-research/EfficientFormer"


# Evaluation preprocessing of the official release (and timm's port): 0.95 center crop.
_CFG = dict(crop_pct=0.95, license="Apache-2.0", weights_source="snap-research/EfficientFormer")


@register_model("efficientformer", paper=_PAPER, params=12.3e6, macs=1.3e9, top1=79.2,
                source="paper Table 1 (L1); official code: 12,289,928 params",
                converters=_CONVERTERS, notes=_NOTES, weights_url=None, cfg=_CFG)
def efficientformer_l1(**kwargs):
    return EfficientFormer(CFGS["efficientformer_l1"], **kwargs)


@register_model("efficientformer", paper=_PAPER, params=31.3e6, macs=3.9e9, top1=82.4,
                source="paper Table 1 (L3); official code: 31,406,000 params",
                converters=_CONVERTERS, notes=_NOTES, weights_url=None, cfg=_CFG)
def efficientformer_l3(**kwargs):
    return EfficientFormer(CFGS["efficientformer_l3"], **kwargs)


@register_model("efficientformer", paper=_PAPER, params=82.1e6, macs=10.2e9, top1=83.3,
                source="paper Table 1 (L7); official code: 82,229,328 params",
                converters=_CONVERTERS, notes=_NOTES, weights_url=None, cfg=_CFG)
def efficientformer_l7(**kwargs):
    return EfficientFormer(CFGS["efficientformer_l7"], **kwargs)
