"""The sparse runtime: ``edgevision.sparse.compile(model)``.

One activation layout through the network: NCHW (per image ``x[C, H*W]``, "pixels last"),
the layout where a sparse W times dense x vectorizes over pixels. Steps:

1. a copy of the model; masks are baked into the weights (zeros) and dropped;
2. BatchNorm folded into the convs (:func:`edgevision.export.fuse.fuse_bn`);
3. every 1x1 convolution (stride 1, no padding, groups 1) whose weight is at least
   ``min_sparsity`` zeros becomes a :class:`SparseConv1x1` (CSR, or block-CSR when the
   zeros form whole 4x1 / 8x1 / 1x4 blocks) running the numba kernels of
   :mod:`edgevision.sparse.kernels`; depthwise convs may become :class:`DepthwiseCHW`;
4. with ``autotune`` (default), each replacement is timed against the torch conv it
   replaces on the shapes of the example input, and kept only where it is faster (a
   50%-sparse layer is usually slower sparse than dense; torch's NCHW depthwise is fast at
   stride 1 on large maps and slow at stride 2).

Everything else runs as the model's own torch code, in NCHW, so there is no layout change
between layers. Outputs equal the masked dense model to float rounding (tested ≤ 1e-4).
A model with no layer at ``min_sparsity`` (never pruned) gets one warning line and runs
dense (BN folded).
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from edgevision.sparse import kernels as K
from edgevision.sparse.masks import strip_masks


class SparseRuntimeWarning(UserWarning):
    """The sparse runtime ran a model dense (nothing pruned)."""


def _threads() -> int:
    """Numba uses torch's thread count (so ``--threads`` applies to both); returns it."""
    n = min(torch.get_num_threads(), K.numba.config.NUMBA_NUM_THREADS)
    if n > 1 and K.numba.get_num_threads() != n:
        K.numba.set_num_threads(n)
    return n


def _detect_blocks(w2: np.ndarray) -> tuple[int, int] | None:
    """The largest block pattern whose blocks are each all-zero or hold a non-zero."""
    o, i = w2.shape
    nnz = max(1, int((w2 != 0).sum()))
    for rows, cols in ((8, 1), (4, 1), (1, 4)):
        if o % rows or i % cols:
            continue
        blocks = np.any((w2 != 0).reshape(o // rows, rows, i // cols, cols), axis=(1, 3))
        if blocks.sum() * rows * cols <= nnz * 1.05:  # stored zeros inside blocks: <= 5%
            return rows, cols
    return None


class SparseConv1x1(nn.Module):
    """A 1x1 convolution (stride 1, no padding) as sparse W x dense x in NCHW.

    Two backends: ``"numba"`` (the CSR / block-CSR kernels of :mod:`edgevision.sparse.kernels`)
    and ``"torch"`` (torch's sparse-CSR matmul, Intel MKL's where torch is built with it). The
    numba row kernel wins on large maps; on 7x7 maps (49 pixels per row, too short for its
    vector loop) MKL measured up to 1.5x faster on an AVX-512 Xeon, so the autotuner of
    :func:`compile_sparse` times both per layer.
    """

    def __init__(self, conv: nn.Conv2d, pattern: tuple[int, int] | None = None):
        super().__init__()
        w2 = conv.weight.detach().reshape(conv.out_channels, conv.in_channels).float().numpy()
        b = conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
        self.bias = np.ascontiguousarray(b, dtype=np.float32)
        self.out_channels, self.in_channels = w2.shape
        self.pattern = pattern
        if pattern is None:
            self.arrays, self.kernel = K.to_csr(w2), K.csr_spmm
        else:
            self.arrays, self.kernel = K.to_bcsr(w2, *pattern), K.BLOCK_KERNELS[pattern]
        self.act = K.ACT_NONE  # set by compile_sparse when a ReLU/ReLU6 is fused in
        self.nnz = int((w2 != 0).sum())
        self.sparsity = 1 - self.nnz / w2.size
        self.backend = "numba"
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta
            warnings.simplefilter("ignore", UserWarning)
            self._w_csr = torch.from_numpy(np.ascontiguousarray(w2)).to_sparse_csr()
        self._b_col = torch.from_numpy(self.bias).reshape(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"SparseConv1x1 expects {self.in_channels} input channels, got {c}")
        x = x.detach().float().contiguous()
        out = torch.empty((n, self.out_channels, h, w), dtype=torch.float32)
        if self.backend == "torch":
            xv, yv = x.view(n, c, h * w), out.view(n, self.out_channels, h * w)
            for i in range(n):
                torch.addmm(self._b_col, self._w_csr, xv[i], out=yv[i])
            if self.act == K.ACT_RELU:
                out.relu_()
            elif self.act == K.ACT_RELU6:
                out.clamp_(0.0, 6.0)
            return out
        xs, ys = x.view(n, c, h * w).numpy(), out.view(n, self.out_channels, h * w).numpy()
        kernel = K.pick(self.kernel, _threads())
        for i in range(n):
            kernel(*self.arrays, self.bias, xs[i], ys[i], self.act)
        return out

    def extra_repr(self):
        fmt = "csr" if self.pattern is None else f"bcsr {self.pattern[0]}x{self.pattern[1]}"
        if self.backend == "torch":
            fmt = "torch csr"
        return f"{self.in_channels}, {self.out_channels}, {fmt}, sparsity={self.sparsity:.3f}"


class DepthwiseCHW(nn.Module):
    """A depthwise convolution (zero padding, square stride) with the numba CHW kernels
    (:func:`edgevision.sparse.kernels.depthwise` picks one per input shape)."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int]):
        super().__init__()
        self.weight = np.ascontiguousarray(conv.weight.detach()[:, 0].float().numpy())
        b = conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
        self.bias = np.ascontiguousarray(b, dtype=np.float32)
        self.stride, self.pad = conv.stride[0], pad
        self.act = K.ACT_NONE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        (ph, pw), (kh, kw), s = self.pad, self.weight.shape[1:], self.stride
        ho, wo = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
        x = x.detach().float().contiguous()
        out = torch.empty((n, c, ho, wo), dtype=torch.float32)
        xs, ys = x.numpy(), out.numpy()
        threads = _threads()
        for i in range(n):
            K.depthwise(xs[i], self.weight, self.bias, s, self.pad, ys[i], self.act, threads)
        return out

    def extra_repr(self):
        k = self.weight.shape[1]
        return f"{self.weight.shape[0]}, k={k}, stride={self.stride}, pad={self.pad}"


def _is_1x1(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
            and m.dilation == (1, 1) and m.padding in ((0, 0), "valid") and m.padding_mode == "zeros")


def _depthwise_pad(m: nn.Module):
    """(pad_h, pad_w) for a depthwise conv the CHW kernel handles, else None."""
    if not (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels and m.groups > 1
            and m.dilation == (1, 1) and m.stride[0] == m.stride[1] and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple)):
        return None
    return m.padding


def _time(fn, x, reps: int = 5) -> float:
    fn(x)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t)
    return best


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


class SparseModel(nn.Module):
    """What :func:`compile_sparse` returns: the rewritten model, run without autograd."""

    def __init__(self, model: nn.Module, info: dict):
        super().__init__()
        self.model = model
        self.sparse_info = info
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)

    def forward(self, x):
        _threads()
        with torch.no_grad():
            return self.model(x)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("a sparse runtime model is for inference only; train the masked model instead")
        return super().train(False)


def _act_code(mod: nn.Module) -> int | None:
    if type(mod) is nn.ReLU:
        return K.ACT_RELU
    if type(mod) is nn.ReLU6 or (type(mod) is nn.Hardtanh and (mod.min_val, mod.max_val) == (0.0, 6.0)):
        return K.ACT_RELU6
    return None


def _observe(m: nn.Module, example: torch.Tensor, candidates: dict):
    """One example forward: each candidate's input (for timing), and the ReLU/ReLU6 module
    that is the only consumer of its output (fusable into the kernel)."""
    from edgevision.export.fuse import _ConsumerCounter

    names = {mod: n for n, mod in m.named_modules()}
    inputs, out_of, calls, act_in, keep = {}, {}, {}, [], []
    leaves = [mod for mod in names if not list(mod.children())]

    def record(mod, args, out):  # pass 1: inputs to time the candidates on (no torch mode on)
        if names[mod] in candidates:
            inputs.setdefault(names[mod], args[0].detach().clone())

    def link(mod, args, out):  # pass 2: who feeds which activation; torch ops only outside
        n = names[mod]
        calls[n] = calls.get(n, 0) + 1
        keep.append(out)  # hold outputs so Python ids are not reused during the pass
        if n in candidates:
            out_of[id(out)] = n
        elif _act_code(mod) is not None and args and isinstance(args[0], torch.Tensor):
            act_in.append((n, id(args[0]), mod, counter.uses[id(args[0])]))

    counter = _ConsumerCounter()
    for fn, mode in ((record, None), (link, counter)):
        hooks = [mod.register_forward_hook(fn) for mod in leaves]
        try:
            with torch.no_grad():
                if mode is None:
                    m(example)
                else:
                    with mode:
                        m(example)
        finally:
            for h in hooks:
                h.remove()
    acts = {}
    for n, tid, mod, uses_so_far in act_in:
        src = out_of.get(tid)
        # nothing but the activation read the conv output before it ran; after an in-place
        # activation every reader sees activated values anyway, else none may read it later
        only = uses_so_far == 1 and (getattr(mod, "inplace", False) or counter.uses[tid] == 1)
        if src is not None and calls[src] == 1 and calls[n] == 1 and only:
            acts[src] = (n, _act_code(mod))
    return inputs, acts


def _example(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return torch.randn(1, *size)


def compile_sparse(model: nn.Module, example: torch.Tensor | None = None, min_sparsity: float = 0.5,
                   autotune: bool = True, depthwise: bool = True) -> SparseModel:
    """The sparse runtime for ``model`` (see the module docs); ``model`` is not changed."""
    K.require_numba("edgevision.sparse.compile")
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    example = _example(model) if example is None else example
    m = strip_masks(copy.deepcopy(model)).eval()
    from edgevision.export.fuse import fuse_bn

    fuse_bn(m, example)
    _threads()
    candidates = {}
    for name, mod in m.named_modules():
        if _is_1x1(mod):
            w2 = mod.weight.detach().reshape(mod.out_channels, -1).numpy()
            if 1 - np.count_nonzero(w2) / w2.size >= min_sparsity:
                candidates[name] = SparseConv1x1(mod, _detect_blocks(w2))
        elif depthwise and _depthwise_pad(mod) is not None:
            candidates[name] = DepthwiseCHW(mod, _depthwise_pad(mod))
    info = {"sparse": [], "depthwise": [], "kept_dense": [], "torch_csr": []}
    if not any(isinstance(c, SparseConv1x1) for c in candidates.values()):
        warnings.warn(f"{type(model).__name__} has no pruned 1x1 convolution (none is {min_sparsity:.0%} zeros): "
                      "was it pruned? running it dense (BN folded)", SparseRuntimeWarning, stacklevel=2)
        candidates = {}
    inputs, acts = _observe(m, example, candidates)
    with torch.no_grad():
        for name, new in candidates.items():
            old = m.get_submodule(name)
            act_name, code = acts.get(name, (None, K.ACT_NONE))
            new.act = code
            if autotune and name in inputs:
                act = m.get_submodule(act_name) if act_name else nn.Identity()
                t_new = _time(new, inputs[name])
                if isinstance(new, SparseConv1x1):  # numba or torch's CSR matmul, whichever is faster
                    new.backend = "torch"
                    t_torch = _time(new, inputs[name])
                    new.backend = "torch" if t_torch < t_new else "numba"
                    t_new = min(t_new, t_torch)
                if t_new >= _time(lambda t: act(old(t)), inputs[name]):
                    info["kept_dense"].append(name)
                    continue
            _set_submodule(m, name, new)
            if act_name:  # the kernel applies it now
                _set_submodule(m, act_name, nn.Identity())
            info["sparse" if isinstance(new, SparseConv1x1) else "depthwise"].append(name)
            if getattr(new, "backend", None) == "torch":
                info["torch_csr"].append(name)
    info["fused_activations"] = [n for n in info["sparse"] + info["depthwise"] if acts.get(n)]
    return SparseModel(m, info)


def prepare_for_bench(model: nn.Module, example: torch.Tensor):
    """``edgevision bench --runtime sparse``: the compiled model; a model that was never
    pruned gets its warning as one line on stderr and runs dense (BN folded)."""
    import sys

    from edgevision.export.optimize import keep_heap, keep_heap_from_env

    if keep_heap_from_env():  # as for the optimized runtime: large activations are not unmapped
        keep_heap()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SparseRuntimeWarning)
        compiled = compile_sparse(model, example[:1])
    for w in caught:
        if issubclass(w.category, SparseRuntimeWarning):
            print(f"edgevision bench --runtime sparse: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return compiled
