"""EdgeViT-XXS/XS/S (Pan et al., "EdgeViTs: Competing Light-weight CNNs on Mobile Devices with
Vision Transformers", ECCV 2022), faithful to the official code (saic-fi/edgevit, ``src/edgevit.py``).

Four stages, each a patch-embedding conv (4x4/s4, then 2x2/s2) + channel LayerNorm, then LGL
blocks: LocalAgg (depthwise/pointwise convs with BN) and a sparse global attention block:
sub-sample every r-th pixel, MHSA among those tokens, propagate back with a depthwise
transposed conv (LocalProp), LN, projection; then an MLP. Stage 4 (r = 1) is plain MHSA
without LocalAgg.

Faithfulness notes (verified against official logits, max |d| <= 2e-6):
- The official "sampler" is AvgPool2d(kernel 1, stride r): pure strided picking, done here
  as a slice ``x[:, :, ::r, ::r]``. Norm eps: patch-embed LN 1e-5, block LN 1e-6, attention
  LN 1e-5, BN 1e-5 (torch defaults where the official code uses them).
- **Input size: padding.** The official code asserts its build size (224, square). Here any
  input with sides >= 32 runs, square or not: each patch-embedding conv first zero-pads its
  input at the bottom/right to a multiple of its patch size (4, then 2, 2, 2), so no pixel is
  dropped and stage i has ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)) tokens, as a stride-2^(i+2)
  CNN with "same" padding would. Where a map side is not a multiple of the sample ratio r, the
  sampler takes ceil(side / r) pixels and the LocalProp output is cropped back. At sides that
  are multiples of 32 nothing is padded or cropped: exactly the official computation (the
  parity fixture is 224x224). Sides below 32 raise ``InputShapeError``.
- Traceable: padding, strided sampling, cropping and the map/token moves are
  :mod:`edgevision.layers.shapes` helpers without Python branches on sizes, so torch.fx traces
  the model and one ``torch.export`` program with dynamic height/width is right at every size.
- **EdgeViT-S** follows the official code: depths 1,2,5,3 give 13.1M parameters, while the
  paper's table says 11.1M (MACs 1.9G agree). The repository publishes no weights.
- ``drop_rate`` is dropout before the classifier (the official code applies it inside the
  blocks instead); ``attn_drop_rate`` and ``drop_path_rate`` act as official.

Layout: ``stages.{i}.downsample.{norm,proj}``, ``stages.{i}.blocks.{j}.{local_agg,self_attn}.*``
(inside: the official names, LocalProp as ``local_prop``), ``norm`` (BN), ``head``.
:func:`convert_official_checkpoint` renames ``patch_embed{i}``/``blocks{i}`` and the
capitalised submodules; the same rules hold for every variant.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from edgevision.layers.shapes import (
    contiguous_copy,
    crop_to,
    map_to_tokens,
    pad_to_multiple,
    subsample,
    tokens_to_map,
)
from edgevision.models.base import (
    EdgeModel,
    fixed_output_stride,
    linear_head,
    stage_block_groups,
)
from edgevision.registry import register_model

# Size-dependent helpers: torch.fx.symbolic_trace records them as calls (see layers/shapes.py).
torch.fx.wrap("pad_to_multiple")
torch.fx.wrap("crop_to")
torch.fx.wrap("tokens_to_map")
torch.fx.wrap("map_to_tokens")
torch.fx.wrap("subsample")

CFGS = {
    "edgevit_xxs": dict(depths=(1, 1, 3, 2), dims=(36, 72, 144, 288), head_dim=36),
    "edgevit_xs": dict(depths=(1, 1, 3, 1), dims=(48, 96, 240, 384), head_dim=48),
    "edgevit_s": dict(depths=(1, 2, 5, 3), dims=(48, 96, 240, 384), head_dim=48),
}
SAMPLE_RATIOS = (4, 2, 2, 1)
MLP_RATIO = 4
BLOCK_LN_EPS = 1e-6  # the blocks' norm_layer; patch-embed and attention LNs keep torch's 1e-5


class PatchEmbed(nn.Module):
    """Zero-pad bottom/right to a multiple of k, kxk/s=k conv with bias, channel LayerNorm (eps 1e-5)."""

    def __init__(self, dim_in: int, dim_out: int, patch: int):
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(dim_out)  # registered first, as official (key order)
        self.proj = nn.Conv2d(dim_in, dim_out, patch, patch)

    def forward(self, x):
        # Unconditional (a no-op amount at multiples of the patch): shape arithmetic only, so
        # traced/exported graphs keep the padding for other input sizes.
        x = self.proj(pad_to_multiple(x, self.patch)).permute(0, 2, 3, 1)
        return contiguous_copy(self.norm(x).permute(0, 3, 1, 2))  # NCHW memory (layers/shapes.py)


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LocalAgg(nn.Module):
    """x += DW3x3(x); x += 1x1(DW5x5(1x1(BN(x)))) (no activations); x += ConvMlp(BN(x))."""

    def __init__(self, dim: int, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, dim * MLP_RATIO, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalSparseAttn(nn.Module):
    """MHSA among every r-th pixel, then LocalProp (DW transposed conv k=s=r) + LN back to HxW."""

    def __init__(self, dim: int, num_heads: int, sample_ratio: int, attn_drop: float = 0.0, drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.r = sample_ratio
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)  # [q | k | v], each head-major
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        if sample_ratio > 1:
            self.local_prop = nn.ConvTranspose2d(dim, dim, sample_ratio, sample_ratio, groups=dim)
            self.norm = nn.LayerNorm(dim)  # eps 1e-5 (official default)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: (B, h*w, C) tokens -> (B, h*w, C)."""
        r = self.r
        if r > 1:  # (a module constant) strided picking = official AvgPool2d(1, r): ceil(h / r) rows
            x = subsample(tokens_to_map(x, h, w), r)
            hs, ws = x.shape[2], x.shape[3]
            x = map_to_tokens(x)
        # [q | k | v], each head-major; the token count is dynamic, so heads are split by a view
        # of the contiguous qkv output and merged from a contiguous copy (layers/shapes.py)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        x = contiguous_copy(x.transpose(1, 2)).view(b, n, c)
        if r > 1:  # LocalProp gives r * ceil(h / r) rows: cropped back to h (layers/shapes.py)
            x = crop_to(self.local_prop(tokens_to_map(x, hs, ws)), h, w)
            x = self.norm(map_to_tokens(x))
        return self.proj_drop(self.proj(x))


class SelfAttn(nn.Module):
    """x += DW3x3(x); then on tokens: x += GSA(LN(x)); x += Mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, sample_ratio: int, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.attn = GlobalSparseAttn(dim, num_heads, sample_ratio, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.mlp = Mlp(dim, dim * MLP_RATIO, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.pos_embed(x)
        h, w = x.shape[2], x.shape[3]
        x = map_to_tokens(x)
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return tokens_to_map(x, h, w)


class LGLBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, sample_ratio: int, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        # Stage 4 (r = 1) has no LocalAgg: Identity, no keys, as official.
        self.local_agg = LocalAgg(dim, drop, drop_path) if sample_ratio > 1 else nn.Identity()
        self.self_attn = SelfAttn(dim, num_heads, sample_ratio, drop, attn_drop, drop_path)

    def forward(self, x):
        return self.self_attn(self.local_agg(x))


class EdgeViTStage(nn.Module):
    def __init__(self, dim_in: int, dim: int, patch: int, depth: int, num_heads: int, sample_ratio: int,
                 drop_paths: list[float], drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.downsample = PatchEmbed(dim_in, dim, patch)
        self.blocks = nn.Sequential(*[
            LGLBlock(dim, num_heads, sample_ratio, drop, attn_drop, dp) for dp in drop_paths[:depth]])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class EdgeViT(EdgeModel):
    def __init__(self, cfg: dict, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0, **kwargs):
        super().__init__()
        fixed_output_stride(kwargs, "EdgeViT",
                            "its stages downsample with non-overlapping patch convs before global sparse attention")
        if kwargs:
            raise TypeError(f"EdgeViT got unexpected arguments: {sorted(kwargs)}")
        depths, dims = cfg["depths"], cfg["dims"]
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.min_input_size = 32  # policy: at least one stride-32 cell per side
        self.input_multiple = 1  # any size >= 32: the patch embeddings pad (module docstring)
        n_blocks = sum(depths)  # linear schedule, in Python so that meta-device builds work
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        stages, dim_prev, n = [], in_chans, 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(EdgeViTStage(dim_prev, dim, 4 if i == 0 else 2, depth, dim // cfg["head_dim"],
                                       SAMPLE_RATIOS[i], dpr[n:n + depth], attn_drop=attn_drop_rate))
            dim_prev, n = dim, n + depth
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # Official init: trunc-normal(0.02) Linear with zero bias; LN 1/0; convs and BN default.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # forward_features / _forward_levels: the base's (no stem: one feature level per stage,
    # through _run_stage so that set_grad_checkpointing applies). As in the official code the
    # final BatchNorm belongs to the head: forward_features returns the last stage's map.

    def forward_head(self, x, pre_logits: bool = False):
        x = self._pool(self.norm(x))  # global_pool='': the normalised map (B, C, H, W)
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's format, as for ConvNeXt: the first patch embedding is the stem; each later
        one opens its stage; the head's BatchNorm goes with the last blocks."""
        return stage_block_groups(r"^stages\.0\.downsample", coarse)


# ----------------------------------------------------------------------------- converter
_OFFICIAL = (
    (re.compile(r"^patch_embed([1-4])\.(.*)$"), lambda m: f"stages.{int(m[1]) - 1}.downsample.{m[2]}"),
    (re.compile(r"^blocks([1-4])\.(\d+)\.(.*)$"), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3]}"),
)
_SUBMODULES = {"LocalAgg.": "local_agg.", "SelfAttn.": "self_attn.", "attn.LocalProp.": "attn.local_prop."}


def _official_key(k: str) -> str:
    for pat, fmt in _OFFICIAL:
        m = pat.match(k)
        if m:
            k = fmt(m)
            for old, new in _SUBMODULES.items():
                k = k.replace(old, new)
            return k
    if k.split(".")[0] in ("norm", "head"):
        return k
    raise KeyError(f"not an official EdgeViT key: {k}")


def convert_official_checkpoint(state_dict: dict) -> dict:
    """saic-fi/edgevit keys -> ours (same rules for every variant; order-independent)."""
    if not any(k.startswith("patch_embed1.") for k in state_dict):
        raise KeyError("not an official EdgeViT state dict (no patch_embed1.* keys)")
    return {_official_key(k): v for k, v in state_dict.items()}


_PAPER = "EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers (ECCV 2022)"
_NOTES = ("Any input size >= 32 (official code: its square build size only): each patch embedding "
          "zero-pads bottom/right to its patch multiple; exact official computation at multiples "
          "of 32. MACs are multiply-adds. The official repo publishes no weights.")
_CONVERTERS = {"official": convert_official_checkpoint}


@register_model("edgevit", paper=_PAPER, params=4.1e6, macs=0.6e9, top1=74.4,
                source="paper ImageNet-1K table; official code: 4,067,704 params", converters=_CONVERTERS, notes=_NOTES)
def edgevit_xxs(**kwargs):
    return EdgeViT(CFGS["edgevit_xxs"], **kwargs)


@register_model("edgevit", paper=_PAPER, params=6.7e6, macs=1.1e9, top1=77.5,
                source="paper ImageNet-1K table; official code: 6,770,056 params", converters=_CONVERTERS, notes=_NOTES)
def edgevit_xs(**kwargs):
    return EdgeViT(CFGS["edgevit_xs"], **kwargs)


@register_model("edgevit", paper=_PAPER, params=11.1e6, macs=1.9e9, top1=81.0,
                source="paper ImageNet-1K table; official code: 13,108,168 params", converters=_CONVERTERS,
                notes=_NOTES + " EdgeViT-S follows the official code (depths 1,2,5,3): 13.1M params, "
                "not the paper's 11.1M (MACs 1.9G agree); no depth setting reproduces 11.1M.")
def edgevit_s(**kwargs):
    return EdgeViT(CFGS["edgevit_s"], **kwargs)
