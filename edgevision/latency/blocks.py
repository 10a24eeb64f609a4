"""A network as the blocks a latency table times: each with its inputs, cost features and a key.

One generic decomposition for every family (timm MobileNetV3/EfficientNet, EMO, EdgeViT,
EfficientFormer, MOAT, NASNet, net configs), no per-family code:

- The model's direct children are units, except *stage containers*, which are opened: a
  Sequential/ModuleList whose children are composite modules (timm ``blocks``, ``stages``), or a
  module holding such a container (EdgeViT/EfficientFormer ``Stage``: downsample + blocks).
  So a unit is a stage block (an InvertedResidual, an iRMB, a Meta4D, a NASNet cell, ...),
  a downsample layer, or a stem/head module.
- One forward pass with hooks records every unit call, in execution order, with its real
  inputs (tensors) and constant arguments (EfficientFormer's Meta3D grid tuple). Top-level
  units that form a chain (one tensor in, which is the previous unit's output: timm's
  conv_stem -> bn1, or global_pool -> conv_head -> act -> flatten -> classifier) are merged
  into one unit, so a stem or head is timed as one piece rather than as many tiny calls.
  Functional code between units (EMO's mean pooling, a flatten) is not in any unit: the
  predictor's per-network overhead absorbs it.
- A unit's *signature* is a hash of its structure: the class and the scalar attributes
  (kernel, stride, groups, window, ...) and parameter shapes of each submodule in order,
  never module names, so equal blocks in different places and models share one table entry.
  The table *key* adds the input shapes and the constant arguments.
- Cost features for the fitted per-type model: MACs (torch's FlopCounterMode / 2, math SDPA
  so attention counts), parameters, elements written by leaf modules (activation traffic),
  input+output elements, and the number of leaf-module calls.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch
import torch.nn as nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP_ATTRS = {"training"}
FEATURES = ("macs", "params", "act_elems", "io_elems", "n_ops")


def _composite(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is not None


def _stage_container(m: nn.Module) -> bool:
    return isinstance(m, _CONTAINERS) and any(_composite(c) for c in m.children())


def _opened(m: nn.Module) -> bool:
    """A stage container, or a module holding one (a Stage with downsample + blocks)."""
    return _stage_container(m) or any(_stage_container(c) for c in m.children())


def _unit_modules(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(path, module, inside_a_stage) for every unit, in registration order."""
    out = []

    def walk(module, prefix, staged):
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _opened(child):
                walk(child, path, True)
            else:
                out.append((path, child, staged))

    walk(model, "", False)
    return out


def _scalar(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) or e is None for e in v):
        return [_scalar(e) for e in v]
    return _NOT_SCALAR


_NOT_SCALAR = object()


def describe(module: nn.Module) -> list:
    """The structure of ``module``: per submodule (in order), class, scalar attributes, own
    parameter/buffer shapes. No module names; dropout/drop-path rates are left out (identity at
    inference)."""
    desc = []
    for m in module.modules():
        attrs = {}
        for k, v in vars(m).items():
            if k.startswith("_") or k in _SKIP_ATTRS or "drop" in k:
                continue
            s = _scalar(v)
            if s is not _NOT_SCALAR:
                attrs[k] = s
        if isinstance(m, nn.Dropout) or type(m).__name__ == "DropPath":
            attrs = {}
        shapes = [list(t.shape) for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        desc.append([type(m).__name__, attrs, shapes])
    return desc


def signature(modules: list[nn.Module]) -> str:
    text = json.dumps([describe(m) for m in modules], sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Unit:
    """One timed piece of a network: a block, or a chain of stem/head modules."""

    paths: list[str]  # where it sits (messages only; never part of the key)
    modules: list[nn.Module]
    args: list  # the call's positional arguments: tensors, and constants (kept as given)
    kwargs: dict
    stage: str  # per-stage report label: "stem", "blocks.2", "stages.1", ..., "head"
    staged: bool
    features: dict = field(default_factory=dict)
    _sig: str | None = None

    @property
    def kind(self) -> str:
        return "+".join(type(m).__name__ for m in self.modules)

    @property
    def path(self) -> str:
        return "+".join(self.paths)

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, torch.Tensor)]

    @property
    def input_shapes(self) -> list[list[int]]:
        return [list(t.shape) for t in self.tensors]

    def consts(self):
        return [_const(a) for a in self.args if not isinstance(a, torch.Tensor)] + \
               [[k, _const(v)] for k, v in sorted(self.kwargs.items()) if not isinstance(v, torch.Tensor)]

    @property
    def signature(self) -> str:
        if self._sig is None:
            self._sig = signature(self.modules)
        return self._sig

    @property
    def key(self) -> str:
        shapes = ";".join("x".join(map(str, s)) for s in self.input_shapes)
        consts = self.consts()
        return f"{self.kind}|{self.signature}|{shapes}" + (f"|{json.dumps(consts)}" if consts else "")

    def as_module(self) -> nn.Module:
        """A module whose forward takes this unit's tensors and runs the unit (for timing/export)."""
        return BoundUnit(self)


def _const(v):
    s = _scalar(v)
    if s is _NOT_SCALAR:
        raise TypeError(f"unsupported non-tensor block argument of type {type(v).__name__}")
    return s


class BoundUnit(nn.Module):
    """A unit with its constant arguments bound: ``forward(*tensors)``."""

    def __init__(self, unit: Unit):
        super().__init__()
        self.mods = nn.ModuleList(unit.modules)
        self.arg_spec = [None if isinstance(a, torch.Tensor) else a for a in unit.args]
        self.kw_spec = {k: (None if isinstance(v, torch.Tensor) else v) for k, v in unit.kwargs.items()}

    def forward(self, *tensors):
        it = iter(tensors)
        args = [next(it) if a is None else a for a in self.arg_spec]
        kwargs = {k: (next(it) if v is None else v) for k, v in self.kw_spec.items()}
        out = self.mods[0](*args, **kwargs)
        for m in self.mods[1:]:
            out = m(out)
        return out


def _stage_label(path: str) -> str:
    parts = path.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 else parts[0]


@torch.inference_mode()
def decompose(model: nn.Module, size: int | tuple = 224, in_chans: int | None = None,
              features: bool = True) -> list[Unit]:
    """The units of ``model`` at input ``size`` (batch 1), in execution order."""
    model = model.eval()
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    chans = in_chans or getattr(model, "in_chans", 3)
    x = torch.randn(1, chans, h, w, generator=torch.Generator().manual_seed(0))
    calls: list[tuple] = []  # (path, module, staged, args, kwargs, output)
    handles = []
    for path, mod, staged in _unit_modules(model):
        def hook(m, args, kwargs, out, _p=path, _s=staged):
            calls.append((_p, m, _s, args, kwargs, out))
        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        model(x)
    finally:
        for hnd in handles:
            hnd.remove()
    if not calls:
        raise ValueError(f"{type(model).__name__}: found no blocks to time (no child module ran)")
    units: list[Unit] = []
    prev_out = None
    for path, mod, staged, args, kwargs, out in calls:
        single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
        if (not staged and units and not units[-1].staged and single and args[0] is prev_out):
            units[-1].paths.append(path)
            units[-1].modules.append(mod)
        else:
            units.append(Unit([path], [mod], list(args), dict(kwargs), "", staged))
        prev_out = out
    first = next((i for i, u in enumerate(units) if u.staged), None)
    last = max((i for i, u in enumerate(units) if u.staged), default=None)
    for i, u in enumerate(units):
        if u.staged:
            u.stage = _stage_label(u.paths[0])
        elif first is not None and i < first:
            u.stage = "stem"
        elif last is not None and i > last:
            u.stage = "head"
        else:
            u.stage = u.paths[0]
    if features:
        for u in units:
            u.features = unit_features(u)
    return units


@torch.inference_mode()
def unit_features(unit: Unit) -> dict:
    """Cost features of one unit (see the module docstring), from one counted forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    module = unit.as_module().eval()
    leaf = {"elems": 0, "calls": 0}

    def hook(m, args, out):
        leaf["calls"] += 1
        outs = out if isinstance(out, (tuple, list)) else (out,)
        leaf["elems"] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not _composite(m)]
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = module(*unit.tensors)
    finally:
        for hnd in handles:
            hnd.remove()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    out_elems = sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
    return dict(
        macs=counter.get_total_flops() // 2,
        params=sum(p.numel() for m in unit.modules for p in m.parameters()),
        act_elems=leaf["elems"],
        io_elems=sum(t.numel() for t in unit.tensors) + out_elems,
        n_ops=leaf["calls"],
    )
