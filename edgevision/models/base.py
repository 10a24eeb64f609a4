"""What every edgevision classifier shares: timm's model API and input checks.

A family's model class subclasses :class:`EdgeModel` and provides
- ``feature_info``: list of ``dict(num_chs=, reduction=, module=)``, one per feature level;
- ``_forward_levels(x, stop) -> (maps, x)``: run up to and including feature level ``stop``,
  returning the NCHW maps of levels ``0..stop`` and the running tensor after that level
  (default: ``self.stem`` when present, then one level per ``self.stages[i]``);
- ``forward_features(x)``, ``_features_tail(x)`` (what forward_features applies after the
  last level, default identity) and ``forward_head(x, pre_logits)`` pooling via ``_pool``;
- attributes ``num_classes``, ``num_features``, ``in_chans``, ``min_input_size`` (smallest
  side the architecture accepts), ``input_multiple`` (sides must be a multiple of it),
  optionally ``size_breakpoints`` (input sides where behaviour changes, for export checks)
  and ``no_weight_decay_keywords`` (parameter-name substrings exempt from weight decay).

From these the base gives timm's API with timm's semantics: ``forward_intermediates``,
``get_classifier``, ``reset_classifier(num_classes, global_pool)``, ``set_grad_checkpointing``,
``no_weight_decay``, ``group_matcher``. ``forward`` validates the input first, so a wrong
channel count or a too-small image is a one-line error, not a shape error deep inside; the
check uses ``torch._assert`` under torch.fx tracing so models stay traceable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

try:  # True only under torch.fx.symbolic_trace (not under torch.export / dynamo)
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
except ImportError:  # torch < 2.5
    from torch.fx._symbolic_trace import is_fx_tracing


class InputShapeError(ValueError):
    """The input tensor does not fit the model (channels, rank, or spatial size)."""


def linear_head(num_features: int, num_classes: int) -> nn.Module:
    """The classifier of every family: a Linear, or Identity for num_classes=0 (features)."""
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


def check_indices_type(indices, arg: str = "indices") -> None:
    """TypeError naming ``arg`` unless indices is None, an int or a sequence of ints."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if indices is None or is_int(indices):
        return
    if isinstance(indices, (list, tuple)) and all(is_int(i) for i in indices):
        return
    raise TypeError(f"{arg} must be None, an int (the last n levels) or a list of ints; got {indices!r}")


def take_indices(num_levels: int, indices, arg: str = "indices") -> tuple[list[int], int]:
    """timm's rule: None = all levels, int n = the last n, sequence = those (negatives from the end)."""
    check_indices_type(indices, arg)
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"{arg}={indices}: last-n must be in 1..{num_levels}")
        take = list(range(num_levels - indices, num_levels))
    else:
        take = []
        for i in indices:
            j = i + num_levels if i < 0 else i
            if not 0 <= j < num_levels:
                raise ValueError(f"{arg}: feature index {i} out of range: the model has {num_levels} "
                                 f"levels (0..{num_levels - 1}, or negative from the end)")
            take.append(j)
        if not take:
            raise ValueError(f"{arg} is empty")
    return take, max(take)


def check_input_shape(model: nn.Module, x: torch.Tensor) -> None:
    """Raise InputShapeError unless x is an NCHW batch ``model`` can run.

    Reads ``in_chans``, ``min_input_size`` and ``input_multiple`` from the model (defaults:
    no channel check, 1, 1). Under fx tracing the channel check is a recorded ``torch._assert``; under
    torch.export / torch.compile the comparisons become guards on the symbolic sizes.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return  # TorchScript graphs carry no Python checks; tracing would only warn about them
    in_chans = getattr(model, "in_chans", None)  # modules that declare none: no channel check
    name = type(model).__name__
    if is_fx_tracing():
        if in_chans is not None:
            torch._assert(x.shape[1] == in_chans, f"{name} expects {in_chans} input channels")
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor batch (N, C, H, W); got {type(x).__name__}")
    if not _compiling():
        _check_dtype_device(model, x, name)
    if x.dim() != 4:
        raise InputShapeError(f"{name} expects a 4-D batch (N, C, H, W); got shape {tuple(x.shape)}")
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if in_chans is not None and c != in_chans:
        raise InputShapeError(
            f"{name} was built for in_chans={in_chans} but the input has {c} channels "
            f"(shape {tuple(x.shape)}); rebuild with in_chans={c} or convert the image"
        )
    smallest = getattr(model, "min_input_size", 1)
    if h < smallest or w < smallest:
        raise InputShapeError(f"{name} needs inputs of at least {smallest}x{smallest} pixels; got {h}x{w}")
    m = getattr(model, "input_multiple", 1)
    if m > 1 and (h % m or w % m):
        raise InputShapeError(f"{name} needs height and width that are multiples of {m}; got {h}x{w}")


def _compiling() -> bool:
    """Under torch.compile / torch.export (dtypes and devices are the tracer's business there)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _check_dtype_device(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """A TypeError/ValueError naming both sides instead of a convolution's RuntimeError deep inside:
    an integer or bool image, a float64 batch for a float32 model, a CPU batch for a GPU model."""
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point batch; got dtype {x.dtype} (convert with "
                        f"x.float(), scaled to [0, 1] and normalised as the model's pretrained_cfg says)")
    p = next(model.parameters(), None)
    if p is None:
        return
    if x.device != p.device:
        raise ValueError(f"{name} is on {p.device} but the input is on {x.device}; move one with .to()")
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except (TypeError, RuntimeError):  # older torch: no device argument; an unknown device type
        autocast = torch.is_autocast_enabled()
    if x.dtype != p.dtype and p.is_floating_point() and not autocast:
        raise TypeError(f"{name} has {p.dtype} weights but the input is {x.dtype}; convert with "
                        f"x.to({p.dtype}) (or the model with model.to({x.dtype}))")


def fixed_output_stride(kwargs: dict, family: str, why: str) -> None:
    """Pop ``output_stride`` from a family's kwargs: 32 (its native stride) is accepted, any other
    value is a one-line ValueError saying why the family cannot trade stride for dilation."""
    output_stride = kwargs.pop("output_stride", 32)
    if isinstance(output_stride, bool) or output_stride != 32:
        raise ValueError(f"{family} has no output_stride control ({why}); got output_stride={output_stride!r}, "
                         f"use 32 (dense heads interpolate)")


def check_num_classes(num_classes) -> None:
    """TypeError/ValueError (naming num_classes) unless it is an int >= 0."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int; got {type(num_classes).__name__} {num_classes!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")


class EdgeModel(nn.Module):
    in_chans: int = 3
    min_input_size: int = 32
    input_multiple: int = 1
    size_breakpoints: tuple[int, ...] = ()
    min_export_size: int = 0  # smallest side a dynamic-size exported program covers (0: min_input_size)
    no_weight_decay_keywords: tuple[str, ...] = ()
    global_pool: str = "avg"
    grad_checkpointing: bool = False
    classifier_names: tuple[str, ...] = ("head",)  # attribute names of the classifier(s)
    num_classes: int
    num_features: int
    feature_info: list

    # --- input --------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        check_input_shape(self, x)

    # --- running ------------------------------------------------------------------------
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one stage, through activation checkpointing when enabled and training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() \
                and not torch.jit.is_scripting() and not is_fx_tracing():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def _forward_levels(self, x: torch.Tensor, stop: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        stem = getattr(self, "stem", None)
        if stem is not None:
            x = stem(x)
        maps = []
        for i in range(stop + 1):
            x = self._run_stage(self.stages[i], x)
            maps.append(x)
        return maps, x

    def _features_tail(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global pooling per ``global_pool``: 'avg' averages H, W (NCHW); '' keeps the map."""
        return x.mean((2, 3)) if self.global_pool == "avg" else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _, x = self._forward_levels(x, len(self.feature_info) - 1)
        return self._features_tail(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    # --- timm's model API ---------------------------------------------------------------
    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: ``(final_features, [maps])`` or only the maps.

        indices: None = every level of ``feature_info``, int n = the last n, or a sequence.
        stop_early / intermediates_only: stop after the deepest requested level (then the
        final features are the running tensor there). ``norm`` is accepted for timm
        compatibility; no family here has a norm that applies to its NCHW maps, so it must
        be False.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW'; got {output_fmt!r}")
        if norm:
            raise ValueError(f"{type(self).__name__}: norm=True is not supported (its final norm "
                             f"does not apply to NCHW feature maps)")
        n = len(self.feature_info)
        take, max_index = take_indices(n, indices)
        self.check_input(x)
        stop = max_index if (stop_early or intermediates_only) else n - 1
        maps, x = self._forward_levels(x, stop)
        intermediates = [maps[i] for i in take]
        if intermediates_only:
            return intermediates
        if stop == n - 1:
            x = self._features_tail(x)
        return x, intermediates

    def get_classifier(self) -> nn.Module:
        heads = tuple(getattr(self, n) for n in self.classifier_names)
        return heads[0] if len(heads) == 1 else heads

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none); global_pool 'avg' or '' (no pooling,
        only with num_classes=0: forward then returns the final feature map)."""
        check_num_classes(num_classes)
        if global_pool is not None:
            self.set_global_pool(global_pool, num_classes)
        elif num_classes > 0 and self.global_pool == "":
            raise ValueError("a classifier needs global_pool='avg'")
        self.num_classes = num_classes
        for n in self.classifier_names:
            setattr(self, n, linear_head(self.num_features, num_classes))

    def set_global_pool(self, global_pool: str, num_classes: int | None = None) -> None:
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or ''; got {global_pool!r}")
        num_classes = self.num_classes if num_classes is None else num_classes
        if global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' (unpooled features) needs num_classes=0")
        self.global_pool = global_pool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that must not be weight-decayed (tables of biases or positions);
        1-D parameters (norms, biases) are excluded by timm's optimizer factory anyway."""
        keys = self.no_weight_decay_keywords
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay (timm's format)."""
        blocks = r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.(\d+)", None),
                                                    (r"^stages\.(\d+)", (0,))]
        return dict(stem=r"^stem", blocks=blocks)


def stage_block_groups(stem: str, coarse: bool = False) -> dict:
    """timm's parameter groups (as its ConvNeXt) for ``stages.N.{downsample, blocks.M}``
    layouts: the stem, each stage's downsample opening its stage, one group per block, and the
    final ``norm`` with the last blocks."""
    return dict(
        stem=stem,
        blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm\.", (99999,)),
        ],
    )


class FeatureInfo:
    """timm-style accessor over the feature_info dicts of the selected outputs."""

    def __init__(self, info: list[dict]):
        self.info = [dict(d) for d in info]

    def channels(self) -> list[int]:
        return [d["num_chs"] for d in self.info]

    def reduction(self) -> list[int]:
        return [d["reduction"] for d in self.info]

    def module_name(self) -> list[str]:
        return [d["module"] for d in self.info]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, i):
        return self.info[i]

    def __iter__(self):
        return iter(self.info)


class FeatureNet(nn.Module):
    """Wraps an EdgeModel so that forward returns its multi-scale feature maps."""

    def __init__(self, model: EdgeModel, out_indices: tuple[int, ...] | None = None):
        super().__init__()
        n = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(n))
        out_indices = tuple(out_indices)
        take, _ = take_indices(n, list(out_indices), "out_indices")
        model.reset_classifier(0)
        self.model = model
        self.out_indices = tuple(take)
        self.feature_info = FeatureInfo([model.feature_info[i] for i in take])
        self.in_chans = model.in_chans

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
