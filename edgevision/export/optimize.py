"""The fast eager path: ``optimize(model)`` rebuilds a network for CPU inference in PyTorch.

Same network, same outputs (max |Δ| vs eager ≤ 1e-5, tested on every registered model), less
work per call. The steps, in order:

1. **Inference only.** A copy (unless ``inplace=True``) in eval mode with ``requires_grad``
   off; every call runs under ``torch.no_grad()`` (the in-place steps below are only valid
   without autograd) and ``train(True)`` raises.
2. **BatchNorm folded** into the conv/linear before it (or, pre-norm, after it) with
   :func:`edgevision.export.fuse.fuse_bn`, which uses torch's ``fuse_conv_bn_eval`` /
   ``fuse_linear_bn_eval``; a folded BN becomes ``nn.Identity`` (timm's ``BatchNormAct2d``
   keeps its activation).
3. **channels_last end to end**: the weights are converted once, 4-D inputs are converted
   on entry, so oneDNN convolutions run without reordering to and from NCHW around every
   call; 4-D outputs (feature maps) are handed back contiguous (NCHW), as eager gives them.
4. **Graph clean-up and in-place ops** (on a ``torch.fx`` trace of ``forward``; every
   registered model traces): eval-time no-ops (``nn.Identity``, ``nn.Dropout``, timm's
   ``DropPath``, folded BNs) are removed; activations (ReLU, ReLU6/Hardtanh, SiLU,
   Hardswish, Hardsigmoid, Mish, LeakyReLU, ELU, Sigmoid, as modules or functions) run in
   place, and ``a + b`` / ``a * b`` write into one operand, wherever that is provably safe:
   the overwritten tensor was produced by an op that returns new memory (a conv, a linear,
   an arithmetic op, ... or an in-place op on such a tensor), and neither it nor anything
   that may share its memory (views, unknown ops' outputs) is used after this op — so a
   residual branch's input is never overwritten, nor the caller's input, nor a parameter.
   Binary ops check shape and dtype at run time and fall back to ``a + b`` where writing
   into ``a`` would broadcast it. Only the graph of ``forward`` is rewritten: the model's
   modules keep their ``inplace`` flags, so ``forward_features``, ``forward_intermediates``
   and friends run the original (exact) code. The rewritten graph is checked against the
   un-rewritten one on an example input and dropped, with a warning, if they differ.
   Models that ``torch.fx`` cannot trace keep their own ``forward`` (steps 1-3 still apply).

The result keeps the model's class API (it is an instance of a subclass of the model's
class: ``pretrained_cfg``, ``forward_features``, ``num_classes``, ... all work) and its
``optimize_info`` says what was done. It is the last step before running: make changes
(``reset_classifier``, loading weights) before ``optimize``; export and trace the plain model.

**Allocator** (:func:`keep_heap`, opt-in: ``optimize(model, keep_heap=True)``; on by default in
``edgevision bench --runtime optimized`` and ``edgevision predict``, off with the environment
variable ``EDGEVISION_KEEP_HEAP=0``). glibc's malloc serves large blocks (over its mmap
threshold: 128 KiB, rising with use to at most 32 MiB) with fresh ``mmap`` calls and unmaps
them on free, so each forward over large activations (EMO-1M at batch 32: 154 MB maps)
page-faults all of that memory in again. Raising ``M_MMAP_THRESHOLD`` cannot cover such
blocks (mallopt(3) caps it at 32 MiB on 64-bit systems), so ``keep_heap`` calls, through
ctypes, ``mallopt(M_MMAP_MAX, 0)`` (large blocks come from the heap, not from mmap) and
``mallopt(M_TRIM_THRESHOLD, -1)`` (freed heap memory is never returned to the system): the
next forward reuses the same pages, without faults (see benchmarks/bench_optimized.py,
which counts them). The cost: the process keeps its peak memory until it exits. The setting
is process-wide and cannot be undone (every runtime timed in the same process shares it);
threads other than the first allocate from their own arenas, where blocks over 64 MiB are
still mapped fresh. It does nothing where the C library is not glibc (macOS, Windows, musl)
or where jemalloc/tcmalloc/mimalloc is loaded (they cache memory themselves). The same for
any process without code: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1`` in the
environment (or the ``glibc.malloc.mmap_max`` / ``glibc.malloc.trim_threshold`` tunables).
"""

from __future__ import annotations

import copy
import ctypes
import operator
import os
import platform
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from edgevision.export.fuse import _tensors, fuse_bn

__all__ = ["optimize", "keep_heap", "heap_kept", "keep_heap_from_env", "OptimizeWarning"]


class OptimizeWarning(UserWarning):
    """A step of :func:`optimize` was skipped (the model still runs, without that step)."""


# --------------------------------------------------------------------------- allocator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # <malloc.h>
_HEAP = {"kept": False}
_OWN_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _other_allocator_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return any(name in maps for name in _OWN_ALLOCATORS)


def keep_heap() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docs); True if applied.

    Process-wide and not undoable; idempotent. Returns False (and changes nothing) where the
    C library is not glibc or another allocator is loaded.
    """
    if _HEAP["kept"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _other_allocator_loaded():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, -1) == 1 and ok
    _HEAP["kept"] = ok
    return ok


def heap_kept() -> bool:
    """Whether :func:`keep_heap` has been applied in this process."""
    return _HEAP["kept"]


def keep_heap_from_env() -> bool:
    """The CLI default: keep the heap unless ``EDGEVISION_KEEP_HEAP`` is 0/false/no/off."""
    return os.environ.get("EDGEVISION_KEEP_HEAP", "1").strip().lower() not in ("0", "false", "no", "off")


# --------------------------------------------------------------------------- the model class

class OptimizedModule:
    """Mixin put in front of the model's class by :func:`optimize` (see the module docs)."""

    def forward(self, *args, **kwargs):
        args = tuple(_to_channels_last(a) for a in args)
        with torch.no_grad():
            graph = self.__dict__.get("_ev_graph")
            out = graph(*args, **kwargs) if graph is not None else super().forward(*args, **kwargs)
        return _contiguous_maps(out)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an optimized model is for inference only (BatchNorm folded, in-place "
                               "ops); train the model before edgevision.optimize")
        return super().train(False)


_CLASSES: dict[type, type] = {}


def _optimized_class(base: type) -> type:
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Optimized{base.__name__}", (OptimizedModule, base),
                              {"__module__": __name__, "__doc__": base.__doc__})
    return _CLASSES[base]


def _to_channels_last(x):
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _contiguous_maps(out):
    if isinstance(out, torch.Tensor):
        return out.contiguous() if out.dim() == 4 else out
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        return type(out)(_contiguous_maps(o) for o in out)
    if isinstance(out, dict):
        return type(out)((k, _contiguous_maps(v)) for k, v in out.items())
    return out


# --------------------------------------------------------------------------- in-place helpers
# Inserted into rewritten graphs (fx calls them by their qualified name).

def _writable_into(a: torch.Tensor, b) -> bool:
    if isinstance(b, torch.Tensor) and b.shape != a.shape and torch.broadcast_shapes(a.shape, b.shape) != a.shape:
        return False
    return torch.result_type(a, b) == a.dtype


def add_into(a: torch.Tensor, b):
    """``a + b``, written into ``a`` when the sum has a's shape and dtype."""
    return a.add_(b) if _writable_into(a, b) else a + b


def mul_into(a: torch.Tensor, b):
    """``a * b``, written into ``a`` when the product has a's shape and dtype."""
    return a.mul_(b) if _writable_into(a, b) else a * b


# --------------------------------------------------------------------------- graph analysis

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Activation modules with an ``inplace`` flag (exact types) -> how to call them in place.
_INPLACE = {"inplace": True}
_ACT_MODULES = {
    nn.ReLU: lambda m: (F.relu, (), _INPLACE),
    nn.ReLU6: lambda m: (F.hardtanh, (m.min_val, m.max_val), _INPLACE),  # nn.ReLU6's own forward
    nn.Hardtanh: lambda m: (F.hardtanh, (m.min_val, m.max_val), _INPLACE),
    nn.SiLU: lambda m: (F.silu, (), _INPLACE),
    nn.Hardswish: lambda m: (F.hardswish, (), _INPLACE),
    nn.Hardsigmoid: lambda m: (F.hardsigmoid, (), _INPLACE),
    nn.Mish: lambda m: (F.mish, (), _INPLACE),
    nn.LeakyReLU: lambda m: (F.leaky_relu, (m.negative_slope,), _INPLACE),
    nn.ELU: lambda m: (F.elu, (m.alpha,), _INPLACE),
}
# Activation modules without the flag (their outputs are new memory, see _FRESH_MODULES).
_ACT_MODULES_NO_FLAG = {
    nn.Sigmoid: lambda m: (torch.sigmoid_, (), {}),
    nn.Tanh: lambda m: (torch.tanh_, (), {}),
}
# Functional activations -> position of their ``inplace`` argument.
_ACT_FUNCS = {F.relu: 1, F.relu6: 1, F.silu: 1, F.hardswish: 1, F.hardsigmoid: 1, F.mish: 1,
              F.leaky_relu: 2, F.elu: 2, F.hardtanh: 3}
_TORCH_INPLACE = {torch.relu: torch.relu_, torch.sigmoid: torch.sigmoid_, torch.tanh: torch.tanh_}
_METHOD_INPLACE = {"relu": "relu_", "sigmoid": "sigmoid_", "tanh": "tanh_"}
# Ops whose tensor output is always new memory (never a view of, or one of, their inputs).
_FRESH_MODULES = _CONVS + (
    nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.GELU,
    nn.Sigmoid, nn.Tanh, nn.Softmax, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_FRESH_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.matmul, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.matmul, torch.bmm, torch.cat, torch.stack,
    torch.sigmoid, torch.tanh, torch.relu, torch.softmax, torch.mean, torch.sum, torch.exp,
    F.conv1d, F.conv2d, F.conv3d, F.linear, F.layer_norm, F.batch_norm, F.group_norm, F.gelu,
    F.softmax, F.scaled_dot_product_attention, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d,
    torch.sigmoid,
}
_FRESH_METHODS = {"add", "sub", "mul", "div", "matmul", "bmm", "softmax", "sigmoid", "tanh", "relu",
                  "mean", "sum", "exp", "sqrt", "pow", "clone"}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_META_METHODS = {"size", "dim", "numel", "get_device"}
_BINARY = {operator.add: add_into, torch.add: add_into, operator.mul: mul_into, torch.mul: mul_into}
_BINARY_METHODS = {"add": add_into, "mul": mul_into}


@dataclass
class _Meta:
    """What one example run showed a node to produce."""
    has_tensor: bool
    shape: tuple | None = None  # for a plain tensor output
    dtype: torch.dtype | None = None


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.meta: dict[fx.Node, _Meta] = {}

    def run_node(self, n):
        out = super().run_node(n)
        plain = isinstance(out, torch.Tensor)
        self.meta[n] = _Meta(any(True for _ in _tensors(out)), tuple(out.shape) if plain else None,
                             out.dtype if plain else None)
        return out


def _module(gm, n):
    return gm.get_submodule(n.target) if n.op == "call_module" else None


def _is_fresh(gm, n) -> bool:
    if n.op == "call_module":
        mod = _module(gm, n)
        t = type(mod)
        return t in _FRESH_MODULES or (t in _ACT_MODULES and not getattr(mod, "inplace", False))
    if n.op == "call_function":
        if n.target in _ACT_FUNCS:
            return not _inplace_flag(n)
        return n.target in _FRESH_FUNCS and "out" not in n.kwargs
    if n.op == "call_method":
        return n.target in _FRESH_METHODS
    return False


def _inplace_flag(n) -> bool:
    pos = _ACT_FUNCS[n.target]
    return bool(n.args[pos] if len(n.args) > pos else n.kwargs.get("inplace", False))


def _inplace_operand(gm, n):
    """The tensor an in-place op writes into (its output *is* that tensor), else None."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.op == "call_module":
        mod = _module(gm, n)
        ok = type(mod) in _ACT_MODULES and getattr(mod, "inplace", False) is True
    elif n.op == "call_function":
        t = n.target
        ok = ((t in _ACT_FUNCS and _inplace_flag(n)) or t in _TORCH_INPLACE.values()
              or t in (add_into, mul_into, operator.iadd, operator.imul, operator.isub, operator.itruediv))
    elif n.op == "call_method":
        ok = n.target.endswith("_") and not n.target.startswith("_")
    else:
        ok = False
    return n.args[0] if ok else None


def _is_meta_query(n) -> bool:
    """Reads only a tensor's metadata (which in-place ops keep), not its values."""
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) > 1 and n.args[1] in _META_ATTRS
    return n.op == "call_method" and n.target in _META_METHODS


class _Aliasing:
    """Which allocations each node's value may share memory with ("roots"), and the position
    of the last node that reads each root. A root is a fresh op, a placeholder or a get_attr;
    unknown ops may return (views of) any input, so their outputs carry all input roots.

    Computed once per graph; :meth:`now_inplace` updates it when a fresh op is rewritten to
    write into its operand (its root then *is* the operand's root: union-find)."""

    def __init__(self, gm, meta):
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.roots: dict[fx.Node, frozenset] = {}
        self.direct: dict[fx.Node, bool] = {}  # the value is a root's whole tensor itself
        self.last: dict[fx.Node, int] = {}
        self.parent: dict[fx.Node, fx.Node] = {}
        for n in gm.graph.nodes:
            m = meta.get(n)
            operand = _inplace_operand(gm, n)
            if n.op in ("placeholder", "get_attr") or _is_fresh(gm, n):
                self.roots[n], self.direct[n] = frozenset([n]), _is_fresh(gm, n)
            elif operand is not None:
                self.roots[n], self.direct[n] = self.roots.get(operand, frozenset()), self.direct.get(operand, False)
            elif m is not None and not m.has_tensor:
                self.roots[n], self.direct[n] = frozenset(), False
            else:
                self.roots[n] = frozenset().union(*(self.roots.get(i, frozenset()) for i in n.all_input_nodes))
                self.direct[n] = False
            if not _is_meta_query(n):
                for i in n.all_input_nodes:
                    for r in self.roots.get(i, ()):
                        self.last[r] = self.order[n]

    def find(self, r):
        while r in self.parent:
            r = self.parent[r]
        return r

    def roots_of(self, n) -> set:
        return {self.find(r) for r in self.roots.get(n, ())}

    def can_overwrite(self, target, at, meta) -> bool:
        """``at`` may write into ``target``: a whole fresh tensor nobody reads after ``at``."""
        if not isinstance(target, fx.Node) or target not in meta or meta[target].shape is None:
            return False
        roots = self.roots_of(target)
        return bool(roots) and self.direct.get(target, False) and all(
            r.op not in ("placeholder", "get_attr") and self.last.get(r) == self.order[at] for r in roots)

    def now_inplace(self, old, new, target) -> None:
        """``old`` (a fresh op, its own root) was replaced by ``new`` writing into ``target``."""
        (root,) = self.roots_of(target)  # direct targets have exactly one root
        self.order[new] = self.order[old]
        self.roots[new], self.direct[new] = self.roots[old], True
        self.parent[old] = root
        self.last[root] = max(self.last.get(root, -1), self.last.get(old, -1))


def _drop_noops(gm) -> int:
    """Remove eval-time identities: nn.Identity (folded BNs), nn.Dropout, timm's DropPath."""
    from timm.layers import DropPath

    dropped = 0
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and type(_module(gm, n)) in (nn.Identity, nn.Dropout, DropPath) \
                and len(n.args) == 1 and not n.kwargs and isinstance(n.args[0], fx.Node):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
            dropped += 1
    return dropped


def _activation_rewrite(gm, n):
    """(function, args, kwargs) calling activation node ``n`` in place, or None."""
    if n.op == "call_module":
        mod = _module(gm, n)
        make = _ACT_MODULES.get(type(mod)) or _ACT_MODULES_NO_FLAG.get(type(mod))
        if make is None or getattr(mod, "inplace", False) or len(n.args) != 1 or n.kwargs:
            return None
        fn, extra, kwargs = make(mod)
        return fn, (n.args[0], *extra), dict(kwargs)
    if n.op == "call_function" and n.target in _ACT_FUNCS and not _inplace_flag(n):
        if len(n.args) > _ACT_FUNCS[n.target]:
            return None
        return n.target, n.args, {**n.kwargs, "inplace": True}
    if n.op == "call_function" and n.target in _TORCH_INPLACE and len(n.args) == 1 and not n.kwargs:
        return _TORCH_INPLACE[n.target], n.args, {}
    if n.op == "call_method" and n.target in _METHOD_INPLACE and len(n.args) == 1 and not n.kwargs:
        return "method", n.args, {}
    return None


def _binary_rewrite(n):
    if n.kwargs or len(n.args) != 2:
        return None
    if n.op == "call_function" and n.target in _BINARY:
        return _BINARY[n.target]
    if n.op == "call_method" and n.target in _BINARY_METHODS:
        return _BINARY_METHODS[n.target]
    return None


def _replace(gm, meta, old, op, target, args, kwargs):
    with gm.graph.inserting_before(old):
        new = gm.graph.create_node(op, target, tuple(args), kwargs)
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)
    meta[new] = meta.pop(old)
    return new


def _inplace_pass(gm, meta) -> tuple[int, int]:
    """Rewrite activations and binary ops in place where safe; returns (activations, binary)."""
    acts = binary = 0
    alias = _Aliasing(gm, meta)
    for n in list(gm.graph.nodes):
        act = _activation_rewrite(gm, n)
        fn = None if act else _binary_rewrite(n)
        if act is None and fn is None:
            continue
        if act is not None:
            target = n.args[0]
            if not (_is_fresh(gm, n) and alias.can_overwrite(target, n, meta)):
                continue
            func, args, kwargs = act
            if func == "method":
                new = _replace(gm, meta, n, "call_method", _METHOD_INPLACE[n.target], args, {})
            else:
                new = _replace(gm, meta, n, "call_function", func, args, kwargs)
            alias.now_inplace(n, new, target)
            acts += 1
            continue
        out = meta.get(n)
        if out is None or out.shape is None or not _is_fresh(gm, n):
            continue
        a, b = n.args
        for target, other in ((a, b), (b, a)):
            if not (alias.can_overwrite(target, n, meta) and meta[target].shape == out.shape
                    and meta[target].dtype == out.dtype):
                continue
            if isinstance(other, fx.Node) and alias.roots_of(other) & alias.roots_of(target):
                continue
            new = _replace(gm, meta, n, "call_function", fn, (target, other), {})
            alias.now_inplace(n, new, target)
            binary += 1
            break
    return acts, binary


# --------------------------------------------------------------------------- tracing and checks

def _trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``, else fx with timm's leaf modules and wrapped functions."""
    try:
        return fx.symbolic_trace(model)
    except Exception:
        from timm.layers import _fx as timm_fx

        leaves = tuple(timm_fx._leaf_modules)

        class _TimmTracer(fx.Tracer):
            def is_leaf_module(self, m, qualname):
                return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

        tracer = _TimmTracer(autowrap_functions=tuple(timm_fx._autowrap_functions))
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _max_diff(a, b) -> float:
    ta, tb = list(_tensors(a)), list(_tensors(b))
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf")
    return max((float((x.float() - y.float()).abs().max()) if x.numel() else 0.0 for x, y in zip(ta, tb)),
               default=0.0)


def _scale(out) -> float:
    return max((float(t.abs().max()) for t in _tensors(out) if t.numel()), default=0.0)


def _broken(out, ref) -> bool:
    """Far above float rounding (folding and layout move fp32 outputs by ~1e-6 relative)."""
    return _max_diff(out, ref) > 1e-3 * max(1.0, _scale(ref))


def _build_graph(model, example, eager, info):
    """The model's forward as a cleaned, in-place fx graph and its output on ``example``, or
    (None, None) when the model cannot be traced (info says why)."""
    try:
        gm = _trace(model)
    except Exception as e:  # noqa: BLE001  (any tracing failure: keep the model's own forward)
        info["graph"] = f"not traced ({type(e).__name__}): the model's own forward runs"
        return None, None
    info["removed_noops"] = _drop_noops(gm)
    gm.recompile()
    recorder = _Recorder(gm)
    with torch.no_grad():
        clean = recorder.run(example.clone())
    if _broken(clean, eager):
        info["graph"] = "the traced graph differs from forward: the model's own forward runs"
        warnings.warn(f"{type(model).__name__}: {info['graph']}", OptimizeWarning, stacklevel=3)
        return None, None
    acts, binary = _inplace_pass(gm, recorder.meta)
    gm.graph.lint()
    gm.recompile()
    x = example.clone()
    with torch.no_grad():
        got = gm(x)
    # In place or not, the same kernels on the same values: equal up to (at most) rounding.
    if _max_diff(got, clean) > 1e-6 * max(1.0, _scale(clean)) or not torch.equal(x, example):
        warnings.warn(f"{type(model).__name__}: the in-place rewrite changed the outputs; running "
                      "without it", OptimizeWarning, stacklevel=3)
        gm = _trace(model)
        _drop_noops(gm)
        gm.recompile()
        acts, binary, got = 0, 0, clean
    info.update(graph="fx", inplace_activations=acts, inplace_binary_ops=binary)
    return gm, got


def _default_example(model: nn.Module) -> torch.Tensor:
    """One random image (fixed seed, the global RNG untouched) as fuse_bn would pick, in the
    model's parameter dtype."""
    side = max(64, getattr(model, "min_input_size", 32))
    mult = getattr(model, "input_multiple", 1) or 1
    side = -(-side // mult) * mult
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, getattr(model, "in_chans", 3), side, side, generator=g)
    return x if param is None else x.to(param.device, param.dtype)


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")


def optimize(model: nn.Module, inplace: bool = False, keep_heap: bool = False,
             example: torch.Tensor | None = None) -> nn.Module:
    """The fast eager path for CPU inference (see the module docs for each step).

    Returns a model of a subclass of ``type(model)``, in eval mode, that runs under
    ``torch.no_grad()`` and gives eager's outputs (to float rounding). ``inplace=True``
    rebuilds ``model`` itself instead of a copy. ``keep_heap=True`` also applies the
    process-wide allocator setting :func:`keep_heap` (opt-in: it keeps the process's peak
    memory). ``example``: an input used to find foldable BatchNorms and to check the result
    (default: one random image at the model's smallest comfortable size, 64 px or more).
    ``model.optimize_info`` lists what was done.
    """
    _check_model(model)
    for arg, value in (("inplace", inplace), ("keep_heap", keep_heap)):
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False; got {value!r}")
    if example is not None and not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a torch.Tensor; got {type(example).__name__}")
    if keep_heap:
        _keep_heap()
    if isinstance(model, OptimizedModule):
        return model if inplace else copy.deepcopy(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    example = _default_example(model) if example is None else example.detach()
    # Dense models are checked on their raw network outputs (export_forward): after NMS, boxes
    # with tied scores come out in any order, so post-processed outputs cannot be compared.
    raw = getattr(model, "export_forward", None)
    with torch.no_grad():
        eager = model(example)
        eager_raw = raw(example) if raw is not None else eager

    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    n_bn = sum(isinstance(m, bns) for m in model.modules())
    fuse_bn(model, example[:1], inplace=True)
    info = dict(bn_folded=n_bn - sum(isinstance(m, bns) for m in model.modules()), channels_last=True)

    model.to(memory_format=torch.channels_last)
    example_cl = _to_channels_last(example)
    graph, out = _build_graph(model, example_cl, eager, info)
    if graph is None:
        with torch.no_grad():
            out = model(example_cl)
    model.__class__ = _optimized_class(type(model))
    if graph is not None:
        model.__dict__["_ev_graph"] = graph
    if raw is not None:
        with torch.no_grad():
            out, eager = model.export_forward(example_cl), eager_raw
    info["max_abs_diff_vs_eager"] = _max_diff(out, eager)
    info["heap_kept"] = heap_kept()
    model.optimize_info = info
    if _broken(out, eager):
        warnings.warn(f"{type(model).__name__}: optimized outputs differ from eager by "
                      f"{info['max_abs_diff_vs_eager']:.2e}", OptimizeWarning, stacklevel=2)
    return model


_keep_heap = keep_heap
