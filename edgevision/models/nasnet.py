"""NASNet-A Mobile (Zoph et al., "Learning Transferable Architectures for Scalable Image
Recognition", CVPR 2018): 4 normal cells per stack, 2 reduction cells, 44 filters
(penultimate 1056), stem multiplier 1 (32 stem filters), filter scaling 2.

The state dict has exactly the keys and shapes of the widely used PyTorch port
(Cadene ``pretrainedmodels.nasnetamobile``), so that port's checkpoints load directly. The
cell maths follows the port, including its stem conv with padding 0 and its
"zero-pad top/left by one, op, crop" stride-2 ops (TF's SAME padding for even sizes).

Differences from the port, on purpose:
- Any input >= 32 px: global average pooling instead of the fixed AvgPool2d(7).
- Odd map sizes: the port's pad-and-crop reductions return floor(H/2) while its
  factorized-reduce path returns ceil(H/2), so odd sizes crash there. Where a pad-and-crop
  cell (cell_stem_1, reduction cells) meets an odd map, it is first zero-padded by one row /
  column at the bottom / right. At even sizes (e.g. 224) nothing changes.

Tracing and export: the odd-size padding, the factorized reduction's two stride-2 samplings
and the pad-and-crop are written as zero-amount-at-even-sizes pads, views and negative pads
(:mod:`edgevision.layers.shapes`), with no Python branch on sizes, so torch.fx traces the
model and one torch.export program with dynamic height/width is right at odd and even sizes.
- drop_path_rate (default 0, as NASNet-A Mobile was trained with keep prob 1.0): drops each
  combination's sum, scaled linearly with the cell index, like TF-slim's drop path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from edgevision.layers.shapes import contiguous_copy, pad_to_multiple
from edgevision.models.base import EdgeModel, fixed_output_stride, linear_head
from edgevision.registry import register_model

# Size-dependent helpers: torch.fx.symbolic_trace records them as calls (see layers/shapes.py).
torch.fx.wrap("pad_to_multiple")

BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.1)


def _pad_crop(op, x):
    """Port's stride-2 trick: zero-pad top/left by 1, apply op, drop the first row/col (a
    negative pad: the output side is exactly one less, also for symbolic sizes)."""
    return F.pad(op(F.pad(x, (1, 0, 1, 0))), (-1, 0, -1, 0))


def _even(x):
    """Zero-pad bottom/right to even sides (no-op for even maps)."""
    return pad_to_multiple(x, 2)


@torch.fx.wrap
def _factorized_samples(x):
    """The factorized reduction's two stride-2 samplings of NCHW x, each ceil(H/2) x ceil(W/2):
    ``x[:, :, ::2, ::2]`` and the port's ``F.pad(x, (0, 1, 0, 1))[:, :, 1::2, 1::2]``, i.e. the
    (0, 0) and (1, 1) pixel of every 2x2 cell of x zero-padded to even sides."""
    x = _even(x)
    b, c, h, w = x.shape
    cells = x.view(b, c, h // 2, 2, w // 2, 2)
    return contiguous_copy(cells[:, :, :, 0, :, 0]), contiguous_copy(cells[:, :, :, 1, :, 1])


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, k, stride, padding):
        super().__init__()
        self.depthwise_conv2d = nn.Conv2d(cin, cin, k, stride, padding, groups=cin, bias=False)
        self.pointwise_conv2d = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise_conv2d(self.depthwise_conv2d(x))


class SepBranch(nn.Module):
    """ReLU -> sep conv (stride) -> BN -> ReLU -> sep conv -> BN.

    stem=True widens in the first separable conv (the port's BranchSeparablesStem);
    pad_crop applies the port's pad/crop trick around the first separable conv.
    """

    def __init__(self, cin, cout, k, stride, stem=False, pad_crop=False):
        super().__init__()
        mid = cout if stem else cin
        self.pad_crop = pad_crop
        self.relu = nn.ReLU()
        self.separable_1 = SeparableConv2d(cin, mid, k, stride, k // 2)
        self.bn_sep_1 = _bn(mid)
        self.relu1 = nn.ReLU()
        self.separable_2 = SeparableConv2d(mid, cout, k, 1, k // 2)
        self.bn_sep_2 = _bn(cout)

    def forward(self, x):
        x = self.relu(x)
        x = _pad_crop(self.separable_1, x) if self.pad_crop else self.separable_1(x)
        x = self.relu1(self.bn_sep_1(x))
        return self.bn_sep_2(self.separable_2(x))


def _relu_conv_bn(cin, cout) -> nn.Sequential:
    s = nn.Sequential()
    s.add_module("relu", nn.ReLU())
    s.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
    s.add_module("bn", _bn(cout))
    return s


def _conv_only(cin, cout) -> nn.Module:
    m = nn.Module()
    m.conv = nn.Conv2d(cin, cout, 1, bias=False)
    return m


class CellBase(nn.Module):
    """Shared input handling: ``cur`` -> conv_1x1; ``prev`` -> conv_prev_1x1, a factorized
    reduction (path_1/path_2/final_path_bn: two half-width 1x1 convs on stride-2 samples,
    the second shifted by one pixel), or nothing (cell_stem_0 uses the raw stem output)."""

    def _init_prev(self, mode, cin, cout):
        self.prev_mode = mode
        if mode == "conv":
            self.conv_prev_1x1 = _relu_conv_bn(cin, cout)
        elif mode == "reduce":
            self.relu = nn.ReLU()
            self.path_1 = _conv_only(cin, cout // 2)
            self.path_2 = _conv_only(cin, cout // 2)
            self.final_path_bn = _bn(cout)

    def _prev(self, x):
        if self.prev_mode == "conv":
            return self.conv_prev_1x1(x)
        if self.prev_mode == "reduce":
            a, b = _factorized_samples(self.relu(x))
            return self.final_path_bn(torch.cat([self.path_1.conv(a), self.path_2.conv(b)], 1))
        return x


class NormalCell(CellBase):
    """Normal cell: output = cat[prev, 5 combinations] at 6x the cell width."""

    def __init__(self, cur_in, prev_in, c_prev, c, prev_mode, drop_path=0.0):
        super().__init__()
        self.conv_1x1 = _relu_conv_bn(cur_in, c)
        self._init_prev(prev_mode, prev_in, c_prev if prev_mode == "conv" else c)
        self.comb_iter_0_left = SepBranch(c, c, 5, 1)
        self.comb_iter_0_right = SepBranch(c, c, 3, 1)
        self.comb_iter_1_left = SepBranch(c, c, 5, 1)
        self.comb_iter_1_right = SepBranch(c, c, 3, 1)
        self.comb_iter_4_left = SepBranch(c, c, 3, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, x_prev):
        p, r = self._prev(x_prev), self.conv_1x1(x)
        dp = self.drop_path
        avg = lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)  # noqa: E731
        c0 = dp(self.comb_iter_0_left(r) + self.comb_iter_0_right(p))
        c1 = dp(self.comb_iter_1_left(p) + self.comb_iter_1_right(p))
        c2 = dp(avg(r) + p)
        c3 = dp(avg(p) + avg(p))
        c4 = dp(self.comb_iter_4_left(r) + r)
        return torch.cat([p, c0, c1, c2, c3, c4], 1)


class ReductionCell(CellBase):
    """Reduction cell (also both stem cells): stride 2, output = cat of 4 combinations.

    pad_crop=True is the port's SAME-style variant (cell_stem_1 and reduction cells);
    cell_stem_0 uses plain symmetric padding and applies its right branches to the raw
    stem output (prev_mode 'none', first separable conv widening: stem=True).
    """

    def __init__(self, cur_in, prev_in, c, prev_mode, pad_crop, drop_path=0.0):
        super().__init__()
        self.conv_1x1 = _relu_conv_bn(cur_in, c)
        self._init_prev(prev_mode, prev_in, c)
        stem = prev_mode == "none"
        pin = prev_in if stem else c
        self.pad_crop = pad_crop
        self.comb_iter_0_left = SepBranch(c, c, 5, 2, pad_crop=pad_crop)
        self.comb_iter_0_right = SepBranch(pin, c, 7, 2, stem=stem, pad_crop=pad_crop)
        self.comb_iter_1_right = SepBranch(pin, c, 7, 2, stem=stem, pad_crop=pad_crop)
        self.comb_iter_2_right = SepBranch(pin, c, 5, 2, stem=stem, pad_crop=pad_crop)
        self.comb_iter_4_left = SepBranch(c, c, 3, 1, pad_crop=pad_crop)
        self.drop_path = DropPath(drop_path)

    def _pool(self, fn, x):
        op = lambda t: fn(t, 3, 2, 1)  # noqa: E731
        return _pad_crop(op, x) if self.pad_crop else op(x)

    def forward(self, x, x_prev):
        p, r = self._prev(x_prev), self.conv_1x1(x)
        if self.pad_crop:  # odd maps: pad to even so all branches agree on ceil(H/2)
            p, r = _even(p), _even(r)
        dp = self.drop_path
        maxp = self._pool(F.max_pool2d, r)
        avgp = self._pool(lambda t, k, s, pd: F.avg_pool2d(t, k, s, pd, count_include_pad=False), r)
        c0 = dp(self.comb_iter_0_left(r) + self.comb_iter_0_right(p))
        c1 = dp(maxp + self.comb_iter_1_right(p))
        c2 = dp(avgp + self.comb_iter_2_right(p))
        c3 = dp(F.avg_pool2d(c0, 3, 1, 1, count_include_pad=False) + c1)
        c4 = dp(self.comb_iter_4_left(c0) + maxp)
        return torch.cat([c1, c2, c3, c4], 1)


class NASNetAMobile(EdgeModel):
    classifier_names = ("last_linear",)  # the port's name

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5,
                 drop_path_rate: float = 0.0, stem_filters: int = 32, filters: int = 44,
                 cells_per_stack: int = 4, **kwargs):
        super().__init__()
        fixed_output_stride(kwargs, "NASNetAMobile",
                            "its reduction cells downsample through strided pooling branches")
        if kwargs:
            raise TypeError(f"NASNetAMobile got unexpected arguments: {sorted(kwargs)}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.min_input_size = 32
        self.input_multiple = 1
        f, n = filters, cells_per_stack
        n_cells = 2 + 3 * n + 2
        dpr = [drop_path_rate * (i + 1) / n_cells for i in range(n_cells)]

        self.conv0 = nn.Sequential()
        self.conv0.add_module("conv", nn.Conv2d(in_chans, stem_filters, 3, 2, 0, bias=False))
        self.conv0.add_module("bn", _bn(stem_filters))
        self.cell_stem_0 = ReductionCell(stem_filters, stem_filters, f // 4, "none", False, dpr[0])
        self.cell_stem_1 = ReductionCell(f, stem_filters, f // 2, "reduce", True, dpr[1])
        # (cur channels, prev channels) flow through the stacks; cell names follow the port.
        cur, prev, k = 2 * f, f, 2
        self.cell_names = []
        for s in range(3):
            c = f * 2 ** s
            if s > 0:
                name = f"reduction_cell_{s - 1}"
                setattr(self, name, ReductionCell(cur, prev, c, "conv", True, dpr[k]))
                self.cell_names.append(name)
                cur, prev, k = 4 * c, cur, k + 1
            for i in range(n):
                name = f"cell_{s * (n + 2) + i}"
                mode = "reduce" if i == 0 else "conv"
                setattr(self, name, NormalCell(cur, prev, c if i else c // 2, c, mode, dpr[k]))
                self.cell_names.append(name)
                cur, prev, k = 6 * c, cur, k + 1
        self.num_features = cur
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate)
        self.last_linear = linear_head(cur, num_classes)
        last = f"cell_{2 * (n + 2) + n - 1}"
        self.feature_info = [
            dict(num_chs=stem_filters, reduction=2, module="conv0"),
            dict(num_chs=f, reduction=4, module="cell_stem_0"),
            dict(num_chs=6 * f, reduction=8, module=f"cell_{n - 1}"),
            dict(num_chs=12 * f, reduction=16, module=f"cell_{n + 2 + n - 1}"),
            dict(num_chs=24 * f, reduction=32, module=last),
        ]

    def _cell(self, cell: nn.Module, x, x_prev):
        """One cell, through activation checkpointing when enabled (set_grad_checkpointing)."""
        return self._run_stage(functools.partial(cell, x_prev=x_prev), x)

    def _run(self, x):
        """Yields (module name, output) in execution order."""
        x0 = self.conv0(x)
        yield "conv0", x0
        s0 = self._cell(self.cell_stem_0, x0, x0)
        yield "cell_stem_0", s0
        cur, prev = self._cell(self.cell_stem_1, s0, x0), s0
        yield "cell_stem_1", cur
        for name in self.cell_names:
            cur, prev = self._cell(getattr(self, name), cur, prev), cur
            yield name, cur

    def _forward_levels(self, x, stop: int):
        """Runs the cells up to the feature level ``stop`` (levels: ``feature_info`` modules)."""
        wanted = [d["module"] for d in self.feature_info]
        maps = []
        for name, out in self._run(x):
            if name in wanted:
                maps.append(out)
                if len(maps) > stop:
                    break
        return maps, out

    def forward_head(self, x, pre_logits: bool = False):
        x = self.dropout(self._pool(self.relu(x)))  # global_pool='': the ReLU'd map
        return x if pre_logits else self.last_linear(x)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's format: stem = conv0 and both stem cells; then one group per cell in execution
        order (the port's names skip numbers around the reduction cells), or per stack of
        cells (coarse; a reduction cell opens its stack)."""
        blocks, stack = [], 0
        for i, name in enumerate(self.cell_names):
            stack += name.startswith("reduction_cell")
            blocks.append((rf"^{name}\.", (stack if coarse else i,)))
        return dict(stem=r"^(?:conv0|cell_stem_0|cell_stem_1)\.", blocks=blocks)


def convert_official_checkpoint(state_dict: dict) -> dict:
    """The pretrainedmodels port's layout is ours; only a 1001-class head would differ."""
    if "conv0.conv.weight" not in state_dict:
        raise KeyError("not a NASNet-A Mobile (pretrainedmodels) state dict")
    return dict(state_dict)


@register_model(
    "nasnet",
    paper="Learning Transferable Architectures for Scalable Image Recognition (CVPR 2018)",
    params=5.3e6, macs=564e6, top1=74.0,
    source="paper Table 2 (NASNet-A 4@1056); port: 5,289,978 params",
    weights_url="http://data.lip6.fr/cadene/pretrainedmodels/nasnetamobile-7e03cead.pth",
    converters={"official": convert_official_checkpoint},
    # The port's weights expect inputs in [0, 1] normalised with mean = std = 0.5 (TF-slim's
    # [-1, 1]), bicubic resize, 0.875 crop; pretrainedmodels is BSD-3-Clause.
    cfg=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875, interpolation="bicubic",
             license="BSD-3-Clause", weights_source="Cadene/pretrainedmodels (TF-slim NASNet-A Mobile)"),
    notes="pretrainedmodels port layout (stem conv padding 0); adaptive pooling: any input >= 32; "
          "odd maps padded to even before pad-and-crop reductions. Port weights expect "
          "mean=std=0.5 inputs in [0,1].",
)
def nasnet_a_mobile(**kwargs):
    return NASNetAMobile(**kwargs)
