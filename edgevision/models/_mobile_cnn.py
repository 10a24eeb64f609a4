"""One generic builder for the mobile CNN families (MobileNetV1/V2/V3, MnasNet, EfficientNet-Lite).

A network is data: a stem width, a list of block rows, a head. Each family file only holds
its variant configs, its published figures and its registrations.

Our layout (flat, in execution order)::

    stem.{conv,bn}                       3x3 stride-2 conv-BN-act
    blocks.{i}.{dw,se,pw}                DepthwiseSeparable
    blocks.{i}.{expand,dw,se,project}    InvertedResidual (MBConv)
    blocks.{i}.{conv,bn}                 plain 1x1 conv-BN-act block (MobileNetV3's last 1x1)
    conv_head.{conv,bn}                  1x1 conv-BN-act before pooling (MobileNetV2, MnasNet, Lite)
    head_fc                              Linear + act after pooling (MobileNetV3)
    classifier                           Linear

Converters map timm's, torchvision's and EfficientNet-PyTorch's key layouts onto this by
structure (block kinds are recognised from the keys present), never by variant.

BatchNorm eps: timm builds these models with eps 1e-5, torchvision's MobileNetV3 with 1e-3,
and TF-trained EfficientNet weights assume 1e-3. Our default is 1e-5 (``bn_eps`` changes it).
Converters from an eps-1e-3 source add the eps difference to ``running_var``, so the
converted model is exactly the source network in eval mode (BN divides by
sqrt(var + eps)); build with ``bn_eps=1e-3`` only if you need the source's training-mode
behaviour too, and then load our own saved weights, not the foreign checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgevision.layers import ConvNormAct, DepthwiseSeparable, InvertedResidual, get_act, make_divisible
from edgevision.models.base import EdgeModel, linear_head


@dataclass(frozen=True)
class Row:
    """``repeats`` identical blocks; the first carries ``stride``.

    kind: "ds" (depthwise-separable), "ir" (inverted residual) or "cn" (1x1 conv-BN-act).
    out_chs is the width at multiplier 1.0. expansion applies to "ir". se: SE ratio (0 = none).
    act: None uses the model's default activation. pw_act: activation after a "ds" pointwise
    conv (MobileNetV1). skip: allow residuals where shapes match.
    """

    kind: str
    repeats: int
    kernel: int
    stride: int
    out_chs: int
    expansion: float = 1.0
    se: float = 0.0
    act: str | None = None
    pw_act: bool = False
    skip: bool = True


@dataclass(frozen=True)
class MobileCNNConfig:
    """Everything that defines one variant.

    head: "conv" = 1x1 conv-BN-act to head_chs before pooling (MobileNetV2/MnasNet/Lite),
    "linear" = pooling then Linear(+bias)-act to head_chs (MobileNetV3), None = classifier
    straight on the last block (MobileNetV1).
    se_from_mid / se_divisor / se_act / se_gate: how SE widths and nonlinearities are chosen
    (MobileNetV3: from the expanded width, rounded to 8, hard-sigmoid gate; MnasNet: from the
    block input width, unrounded, sigmoid gate).
    """

    rows: tuple[Row, ...]
    stem_chs: int
    act: str
    head: str | None = "conv"
    head_chs: int = 1280
    head_act: str | None = None  # None: the model's act
    width: float = 1.0
    scale_stem: bool = True  # MobileNetV2 scales the stem with width; V3/Lite keep it fixed
    se_from_mid: bool = True
    se_divisor: int = 1
    se_act: str = "relu"
    se_gate: str = "sigmoid"
    default_drop_rate: float = 0.2
    extra: dict = field(default_factory=dict)


def _round(chs: float, cfg: MobileCNNConfig) -> int:
    return make_divisible(chs * cfg.width, 8)


class MobileCNN(EdgeModel):
    """Stem -> flat sequence of blocks -> (1x1 head conv) -> pool -> (Linear head) -> classifier."""

    def __init__(
        self,
        cfg: MobileCNNConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float | None = None,
        drop_path_rate: float = 0.0,
        bn_eps: float = 1e-5,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {sorted(kwargs)}")
        self.cfg = cfg
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = cfg.default_drop_rate if drop_rate is None else drop_rate
        self.min_input_size = 32  # total stride 32
        self.input_multiple = 1

        stem_chs = _round(cfg.stem_chs, cfg) if cfg.scale_stem else cfg.stem_chs
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, act=cfg.act, bn_eps=bn_eps)
        blocks, chs = self._build_blocks(cfg, stem_chs, drop_path_rate, bn_eps)
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = self._feature_info(stem_chs)

        head_act = cfg.head_act or cfg.act
        self.conv_head: nn.Module = nn.Identity()
        self.head_fc: nn.Module = nn.Identity()
        self.head_act: nn.Module = nn.Identity()
        if cfg.head == "conv":
            self.conv_head = ConvNormAct(chs, cfg.head_chs, 1, act=head_act, bn_eps=bn_eps)
            chs = cfg.head_chs
        elif cfg.head == "linear":
            self.head_fc = nn.Linear(chs, cfg.head_chs)
            self.head_act = get_act(head_act)
            chs = cfg.head_chs
        elif cfg.head is not None:
            raise ValueError(f"head must be 'conv', 'linear' or None; got {cfg.head!r}")
        self.num_features = chs  # width of the pooled features fed to the classifier
        self.drop = nn.Dropout(self.drop_rate)
        self.classifier = linear_head(chs, num_classes)
        self._init_weights()

    # --- construction -------------------------------------------------------------------
    @staticmethod
    def _build_blocks(cfg, in_chs, drop_path_rate, bn_eps):
        total = sum(r.repeats for r in cfg.rows)
        blocks, idx = [], 0
        for row in cfg.rows:
            out_chs = _round(row.out_chs, cfg)
            act = row.act or cfg.act
            for rep in range(row.repeats):
                stride = row.stride if rep == 0 else 1
                dpr = drop_path_rate * idx / total  # linear stochastic-depth schedule (as timm)
                blocks.append(_make_block(row, cfg, in_chs, out_chs, stride, act, dpr, bn_eps))
                blocks[-1].stride = stride
                in_chs, idx = out_chs, idx + 1
        return blocks, in_chs

    def _feature_info(self, stem_chs: int) -> list[dict]:
        """The last module at each reduction (2, 4, 8, 16, 32) is a feature level."""
        levels = [("stem", stem_chs, 2)]
        reduction = 2
        for i, blk in enumerate(self.blocks):
            reduction *= blk.stride
            levels.append((f"blocks.{i}", _out_chs(blk), reduction))
        info = []
        for j, (name, chs, red) in enumerate(levels):
            if j + 1 == len(levels) or levels[j + 1][2] != red:
                info.append(dict(num_chs=chs, reduction=red, module=name))
        self._feature_modules = [d["module"] for d in info]
        return info

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # --- forward ------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_act(self.head_fc(x.mean((2, 3))))
        x = self.drop(x)
        return x if pre_logits else self.classifier(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = self._feature_modules
        x = self.stem(x)
        feats = [x] if "stem" in wanted else []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if f"blocks.{i}" in wanted:
                feats.append(x)
        return feats

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = linear_head(self.num_features, num_classes)


def _make_block(row: Row, cfg: MobileCNNConfig, in_chs, out_chs, stride, act, dpr, bn_eps) -> nn.Module:
    if row.kind == "cn":
        return ConvNormAct(in_chs, out_chs, row.kernel, stride, act=act, bn_eps=bn_eps)
    mid_chs = in_chs if row.kind == "ds" else make_divisible(in_chs * row.expansion, 8)
    se_chs = 0
    if row.se > 0:
        base = mid_chs if cfg.se_from_mid else in_chs
        se_chs = make_divisible(base * row.se, cfg.se_divisor)
    common = dict(kernel_size=row.kernel, stride=stride, act=act, se_chs=se_chs, se_act=cfg.se_act,
                  se_gate=cfg.se_gate, skip=row.skip, drop_path=dpr, bn_eps=bn_eps)
    if row.kind == "ds":
        return DepthwiseSeparable(in_chs, out_chs, pw_act=row.pw_act, **common)
    if row.kind == "ir":
        return InvertedResidual(in_chs, out_chs, mid_chs, **common)
    raise ValueError(f"unknown block kind {row.kind!r}; expected 'ds', 'ir' or 'cn'")


def _out_chs(block: nn.Module) -> int:
    if isinstance(block, ConvNormAct):
        return block.out_channels
    return block.project.out_channels if isinstance(block, InvertedResidual) else block.pw.out_channels


# ======================================================================================
# Converters. Shared helpers first.
# ======================================================================================
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _copy_bn(out: dict, sd: dict, src: str, dst: str) -> None:
    for f in _BN_FIELDS:
        if f"{src}.{f}" in sd:
            out[f"{dst}.{f}"] = sd[f"{src}.{f}"]


def shift_bn_eps(sd: dict, from_eps: float, to_eps: float = 1e-5) -> dict:
    """Fold a BatchNorm eps difference into running_var: exact in eval mode.

    BN(x) = (x - mean) / sqrt(var + eps); var' = var + from_eps - to_eps keeps it identical.
    """
    delta = from_eps - to_eps
    return {k: (v + delta if k.endswith("running_var") else v) for k, v in sd.items()}


def _children(sd: dict, prefix: str) -> list[int]:
    """Sorted integer child indices directly under prefix (e.g. 'features' -> 0..18)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


# Our names for the conv units of a block, by how many convs the block has.
_UNIT_NAMES = {1: [""], 2: ["dw", "pw"], 3: ["expand", "dw", "project"]}


def _emit_block(out: dict, sd: dict, units: list[tuple], dst: str) -> None:
    """Write one block given its units in execution order.

    A unit is ("conv", conv_weight_key, bn_prefix) or ("se", reduce_prefix, expand_prefix).
    The number of convs decides the block kind: 1 = plain conv-BN-act, 2 = depthwise-
    separable (dw, pw), 3 = inverted residual (expand, dw, project).
    """
    convs = [u for u in units if u[0] == "conv"]
    names = iter(_UNIT_NAMES[len(convs)])
    for unit in units:
        if unit[0] == "se":
            for src, ours in ((unit[1], "reduce"), (unit[2], "expand")):
                out[f"{dst}.se.{ours}.weight"] = sd[f"{src}.weight"]
                out[f"{dst}.se.{ours}.bias"] = sd[f"{src}.bias"]
            continue
        name = next(names)
        base = f"{dst}.{name}" if name else dst
        out[f"{base}.conv.weight"] = sd[unit[1]]
        _copy_bn(out, sd, unit[2], f"{base}.bn")


def _is_conv(sd: dict, key: str) -> bool:
    return key in sd and sd[key].dim() == 4


def torchvision_units(sd: dict, prefix: str) -> list[tuple]:
    """Units of a torchvision nn.Sequential, in order.

    Children are recognised by their keys: a bare conv (``p.n.weight``, 4-D) followed by its
    BN at ``p.(n+1)``; a Conv2dNormActivation (``p.n.0.weight`` + ``p.n.1``); an SE
    (``p.n.fc1/fc2``); anything else is a nested group (``("group", "p.n")``).
    BN and activation children are consumed by the conv before them.
    """
    units = []
    for n in _children(sd, prefix):
        p = f"{prefix}.{n}"
        if _is_conv(sd, f"{p}.weight"):
            units.append(("conv", f"{p}.weight", f"{prefix}.{n + 1}"))
        elif _is_conv(sd, f"{p}.0.weight") and f"{p}.1.running_var" in sd:
            units.append(("conv", f"{p}.0.weight", f"{p}.1"))
        elif f"{p}.fc1.weight" in sd:
            units.append(("se", f"{p}.fc1", f"{p}.fc2"))
        elif f"{p}.running_var" in sd:
            continue  # BN of the preceding bare conv
        else:
            units.append(("group", p))
    return units


def _copy_linear(out: dict, sd: dict, src: str, dst: str) -> None:
    w = sd[f"{src}.weight"]
    out[f"{dst}.weight"] = w.flatten(1) if w.dim() == 4 else w  # 1x1 conv head -> Linear
    out[f"{dst}.bias"] = sd[f"{src}.bias"]


# --- timm -----------------------------------------------------------------------------
# timm block child -> ours, per block kind (recognised by which convs the block has).
_TIMM_BLOCK = {
    "ir": {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "dw.conv", "bn2": "dw.bn",
           "conv_pwl": "project.conv", "bn3": "project.bn"},
    "ds": {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "pw.conv", "bn2": "pw.bn"},
    "cn": {"conv": "conv", "bn1": "bn"},
}
_TIMM_SE = {"se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand"}


def convert_timm(sd: dict) -> dict:
    """timm EfficientNet/MobileNetV3-class state dict -> ours.

    timm nests blocks as blocks.<stage>.<index>; ours are flat in execution order.
    MobileNetV3's conv_head (1x1 conv with bias, no BN, on the pooled map) becomes head_fc.
    """
    pat = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")
    pairs = sorted({(int(m.group(1)), int(m.group(2))) for k in sd if (m := pat.match(k))})
    flat = {p: i for i, p in enumerate(pairs)}
    v3_head = "conv_head.bias" in sd and "bn2.weight" not in sd
    out = {}
    for k, v in sd.items():
        if m := pat.match(k):
            s, j, rest = m.group(1), m.group(2), m.group(3)
            block = f"blocks.{s}.{j}"
            kind = "ir" if f"{block}.conv_pwl.weight" in sd else "ds" if f"{block}.conv_dw.weight" in sd else "cn"
            out[f"blocks.{flat[(int(s), int(j))]}.{_rename(rest, {**_TIMM_BLOCK[kind], **_TIMM_SE})}"] = v
        elif k.startswith("conv_head.") and v3_head:
            out[k.replace("conv_head", "head_fc")] = v.flatten(1) if v.dim() == 4 else v
        else:
            out[_rename(k, _TIMM_TOP)] = v
    return out


_TIMM_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "conv_head.conv",
             "bn2": "conv_head.bn", "classifier": "classifier"}


def _rename(key: str, table: dict) -> str:
    """Replace the longest matching dotted prefix of key using table; unknown keys raise."""
    for src in sorted(table, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            return table[src] + key[len(src):]
    raise KeyError(f"unexpected key {key!r}")


# --- EfficientNet-PyTorch (lukemelas) layout ----------------------------------------------
_EFFNET_PT_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv",
                    "_bn1": "dw.bn", "_project_conv": "project.conv", "_bn2": "project.bn",
                    "_se_reduce": "se.reduce", "_se_expand": "se.expand"}
_EFFNET_PT_DS = {**_EFFNET_PT_BLOCK, "_project_conv": "pw.conv", "_bn2": "pw.bn"}
_EFFNET_PT_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "conv_head.conv",
                  "_bn1": "conv_head.bn", "_fc": "classifier"}


def convert_efficientnet_pytorch(sd: dict, bn_eps: float = 1e-3) -> dict:
    """EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.i._expand_conv``, ``_fc``) -> ours.

    Blocks are already flat. A block without ``_expand_conv`` is depthwise-separable. Those
    weights come from TensorFlow (BN eps 1e-3), folded into running_var (see module doc).
    """
    if "_conv_stem.weight" not in sd:
        raise KeyError("not an EfficientNet-PyTorch state dict (no _conv_stem.weight)")
    pat = re.compile(r"_blocks\.(\d+)\.(.+)")
    out = {}
    for k, v in sd.items():
        if m := pat.match(k):
            i, rest = m.group(1), m.group(2)
            table = _EFFNET_PT_BLOCK if f"_blocks.{i}._expand_conv.weight" in sd else _EFFNET_PT_DS
            out[f"blocks.{i}.{_rename(rest, table)}"] = v
        else:
            out[_rename(k, _EFFNET_PT_TOP)] = v
    return shift_bn_eps(out, bn_eps)
