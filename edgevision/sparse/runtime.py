"""The sparse runtime: ``edgevision.sparse.compile(model)``.

One activation layout through the network: NCHW (per image ``x[C, H*W]``, "pixels last"),
the layout where a sparse W times dense x vectorizes over pixels. Steps:

1. a copy of the model; masks are baked into the weights (zeros) and dropped;
2. BatchNorm folded into the convs (:func:`edgevision.export.fuse.fuse_bn`);
3. every 1x1 convolution (stride 1, no padding, groups 1) whose weight is at least
   ``min_sparsity`` zeros becomes a :class:`SparseConv1x1` (CSR, or block-CSR when the
   zeros form whole 4x1 / 8x1 / 1x4 blocks, on the numba kernels of
   :mod:`edgevision.sparse.kernels` or torch's sparse-CSR matmul); depthwise convs may become
   :class:`DepthwiseCHW`; a ReLU / ReLU6 that only reads a replaced layer's output is applied
   inside its kernel;
4. with ``autotune`` (default), each replacement is timed against the torch conv it
   replaces on the shapes of the example input, and kept only where it is faster (a
   50%-sparse layer is usually slower sparse than dense; which depthwise wins depends on
   the layer);
5. each timm inverted-residual / depthwise-separable block without SE, with a pruned 1x1,
   is tried as a :class:`FusedBlock` (one kernel streaming the expanded channels through L1)
   and kept where faster than its layer-by-layer form;
6. the result runs as one flat fx graph (no per-module call overhead, no identities).

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


_THREADS = [1]  # the count _threads() last set; the layers read it instead of asking per call


def _threads() -> int:
    """Numba uses torch's thread count (so ``--threads`` applies to both); returns it."""
    n = min(torch.get_num_threads(), K.numba.config.NUMBA_NUM_THREADS)
    if n > 1 and K.numba.get_num_threads() != n:
        K.numba.set_num_threads(n)
    _THREADS[0] = n
    return n


def _as_input(x: torch.Tensor) -> torch.Tensor:
    """x as a float32, C-contiguous tensor without autograd (no copy when it already is one)."""
    if x.requires_grad:
        x = x.detach()
    if x.dtype is not torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    return x


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
        self._w_csr = None  # torch's CSR tensor, made on first use (it cannot be deep-copied)
        self._b_col = torch.from_numpy(self.bias).reshape(-1, 1)

    def _torch_csr(self) -> torch.Tensor:
        if self._w_csr is None:
            indptr, indices, data = K.to_csr(self.dense_weight())
            with warnings.catch_warnings():  # torch calls its sparse CSR support beta
                warnings.simplefilter("ignore", UserWarning)
                self._w_csr = torch.sparse_csr_tensor(torch.from_numpy(indptr).long(), torch.from_numpy(indices).long(),
                                                      torch.from_numpy(data), (self.out_channels, self.in_channels))
        return self._w_csr

    def dense_weight(self) -> np.ndarray:
        """The [out, in] weight this layer multiplies by (zeros included)."""
        w = np.zeros((self.out_channels, self.in_channels), np.float32)
        if self.pattern is None:
            indptr, indices, data = self.arrays
            rows = np.repeat(np.arange(self.out_channels), np.diff(indptr))
            w[rows, indices] = data
        else:
            r, c = self.pattern
            indptr, cols, data = self.arrays
            for ob in range(len(indptr) - 1):
                for j in range(indptr[ob], indptr[ob + 1]):
                    w[ob * r:(ob + 1) * r, cols[j]:cols[j] + c] = data[j].reshape(r, c)
        return w

    def __getstate__(self):  # copies and pickles rebuild the CSR tensor when they need it
        return {**self.__dict__, "_w_csr": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"SparseConv1x1 expects {self.in_channels} input channels, got {c}")
        x = _as_input(x)
        o = self.out_channels
        if self.backend == "torch":
            out = torch.empty((n, o, h, w), dtype=torch.float32)
            xv, yv = x.view(n, c, h * w), out.view(n, o, h * w)
            for i in range(n):
                torch.addmm(self._b_col, self._torch_csr(), xv[i], out=yv[i])
            if self.act == K.ACT_RELU:
                out.relu_()
            elif self.act == K.ACT_RELU6:
                out.clamp_(0.0, 6.0)
            return out
        xs, ys = x.numpy().reshape(n, c, h * w), np.empty((n, o, h * w), np.float32)
        kernel = self.kernel if _THREADS[0] > 1 else self.kernel.serial
        for i in range(n):
            kernel(*self.arrays, self.bias, xs[i], ys[i], self.act)
        return torch.from_numpy(ys).view(n, o, h, w)

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
        x = _as_input(x)
        xs, ys = x.numpy(), np.empty((n, c, ho, wo), np.float32)
        threads = _THREADS[0]
        for i in range(n):
            K.depthwise(xs[i], self.weight, self.bias, s, self.pad, ys[i], self.act, threads)
        return torch.from_numpy(ys)

    def extra_repr(self):
        k = self.weight.shape[1]
        return f"{self.weight.shape[0]}, k={k}, stride={self.stride}, pad={self.pad}"


class FusedBlock(nn.Module):
    """An inverted-residual block (1x1 expand, act, 3x3 depthwise, act, 1x1 project, + x) or a
    depthwise-separable block (3x3 depthwise, act, 1x1, act, + x) as one call of
    :func:`edgevision.sparse.kernels.fused_block`, which streams the expanded channels: the
    expanded activation (MobileNetV2's 96 x 112 x 112 is 4.8 MB) never leaves L1, where the
    layer-by-layer path writes and re-reads it through memory twice. Serial (one thread).

    Built from the BN-folded block's convs; inputs the kernel does not take (odd sizes at
    stride 2, maps under 3 rows) run the layer-by-layer ``fallback`` block instead.
    """

    def __init__(self, expand, act1: int, dw: nn.Conv2d, act2: int, project: nn.Conv2d, act3: int, skip: bool):
        super().__init__()

        def csr(w2):
            return K.to_csr(np.ascontiguousarray(w2, dtype=np.float32))

        def bias(conv):
            b = conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(conv.out_channels, np.float32)
            return np.ascontiguousarray(b, dtype=np.float32)

        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
        if expand is not None:
            self.e = (*csr(expand.weight.detach().reshape(expand.out_channels, -1).float().numpy()), bias(expand))
            self.in_channels = expand.in_channels
        else:
            self.e = (empty_i, empty_i, empty_f, empty_f)
            self.in_channels = dw.in_channels
        self.dw_w = np.ascontiguousarray(dw.weight.detach()[:, 0].float().numpy())
        self.dw_b = bias(dw)
        self.stride = dw.stride[0]
        w2 = project.weight.detach().reshape(project.out_channels, -1).float().numpy()
        self.p = (*csr(w2.T), bias(project))  # rows = expanded channels
        self.out_channels = project.out_channels
        self.acts = (act1, act2, act3)
        self.skip = bool(skip)
        self._fallback = ()  # set by compile_sparse (not a submodule: nothing is registered twice)

    def set_fallback(self, block: nn.Module) -> None:
        self._fallback = (block,)

    def fits(self, h: int, w: int) -> bool:
        if self.stride == 1:
            return h >= 3 and w >= 2
        return h % 2 == 0 and w % 2 == 0 and h >= 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels or not self.fits(h, w):
            if not self._fallback:
                raise ValueError(f"FusedBlock takes {self.in_channels} channels and stride-{self.stride} sizes "
                                 f"it fits, got {c} x {h} x {w}")
            return self._fallback[0](x)
        x = _as_input(x)
        s = self.stride
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        xs, ys = x.numpy().reshape(n, c, h * w), np.empty((n, self.out_channels, ho * wo), np.float32)
        m = K._masks(ho, wo, 1)
        band = self.band(ho, wo)
        scratch = K.fused_scratch(c, h, w, s, band)
        a1, a2, a3 = self.acts
        for i in range(n):
            K.fused_block(xs[i], *self.e[:3], self.e[3], a1, self.dw_w, self.dw_b, w, s, a2, m[0], m[2],
                          *self.p[:3], self.p[3], a3, self.skip, band, *scratch, ys[i])
        return torch.from_numpy(ys).view(n, self.out_channels, ho, wo)

    L2_BUDGET = 256 * 1024  # bytes of projection outputs per band: a band stays in L2 meanwhile
    L1_BUDGET = 16 * 1024  # bytes of one expanded channel's rows per band: they stay in L1

    def band(self, ho: int, wo: int) -> int:
        """Output rows per band: as many as keep Cout x rows x Wo floats within L2_BUDGET and, with
        an expand, the band's expanded input rows within L1_BUDGET (>= 2). The L1 cap made
        MobileNetV2's 16 -> 96 -> 24 block at 112 px 1.44x faster (bands of 17 rows, not 48)."""
        rows = self.L2_BUDGET // max(1, 4 * self.out_channels * wo)
        if self.e[0].size:  # expanded rows per band: band + 2 (stride 1), 2 band + 2 (stride 2)
            w_in = wo * self.stride
            fit = self.L1_BUDGET // (4 * w_in) - 2
            rows = min(rows, fit if self.stride == 1 else fit // 2)
        return max(2, min(ho, rows))

    def extra_repr(self):
        kind = "inverted residual" if self.e[0].size else "depthwise separable"
        return f"{kind}, {self.in_channels} -> {self.out_channels}, stride={self.stride}, skip={self.skip}"


def _act_or_none(mod) -> int | None:
    """The kernel code of an activation module (Identity: none), or None if not fusable."""
    if mod is None or type(mod) is nn.Identity:
        return K.ACT_NONE
    return _act_code(mod)


def _fusable(block: nn.Module):
    """A :class:`FusedBlock` for a BN-folded timm InvertedResidual / DepthwiseSeparableConv
    without SE, anti-aliasing or space-to-depth, whose depthwise is 3x3 (pad 1, stride 1 or 2)
    and whose activations are ReLU / ReLU6; else None."""
    kind = type(block).__name__
    if kind not in ("InvertedResidual", "DepthwiseSeparableConv"):
        return None
    if getattr(block, "conv_s2d", None) is not None or type(getattr(block, "aa", None)) is not nn.Identity \
            or type(getattr(block, "se", None)) is not nn.Identity:
        return None
    if kind == "InvertedResidual":
        expand, a1, dw, a2, proj, a3 = block.conv_pw, block.bn1, block.conv_dw, block.bn2, block.conv_pwl, block.bn3
        if not _is_1x1(expand):
            return None
    else:
        expand, a1, dw, a2, proj, a3 = None, None, block.conv_dw, block.bn1, block.conv_pw, block.bn2
    acts = [_act_or_none(a) for a in (a1, a2, a3)]
    if None in acts or not _is_1x1(proj) or _depthwise_pad(dw) != (1, 1) or dw.kernel_size != (3, 3) \
            or dw.stride not in ((1, 1), (2, 2)):
        return None
    if dw.in_channels != (expand.out_channels if expand is not None else proj.in_channels):
        return None
    skip = bool(getattr(block, "has_skip", False))
    if skip and (type(block.drop_path) is not nn.Identity and block.training):
        return None
    return FusedBlock(expand, acts[0], dw, acts[1], proj, acts[2], skip)


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

    def __init__(self, model: nn.Module, info: dict, layered: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.sparse_info = info
        self.pretrained_cfg = getattr(model, "pretrained_cfg", None)
        self._layered = (layered if layered is not None else model,)  # the model before flattening

    def __getstate__(self):
        """Pickles hold the model before flattening (the flat graph calls bound methods, which
        torch.save cannot store); it runs the same layers, with module calls."""
        state = dict(self.__dict__)
        state["_modules"] = dict(state["_modules"], model=self._layered[0])
        return state

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


def _observe(m: nn.Module, example: torch.Tensor, candidates: dict) -> dict:
    """One example forward: for each candidate, the ReLU/ReLU6 module that is the only consumer
    of its output (fusable into the kernel), as {candidate: (activation name, code)}."""
    from edgevision.export.fuse import _ConsumerCounter

    names = {mod: n for n, mod in m.named_modules()}
    out_of, calls, act_in, keep = {}, {}, [], []
    leaves = [mod for mod in names if not list(mod.children())]

    def link(mod, args, out):  # who feeds which activation; torch ops only outside
        n = names[mod]
        calls[n] = calls.get(n, 0) + 1
        keep.append(out)  # hold outputs so Python ids are not reused during the pass
        if n in candidates:
            out_of[id(out)] = n
        elif _act_code(mod) is not None and args and isinstance(args[0], torch.Tensor):
            act_in.append((n, id(args[0]), mod, counter.uses[id(args[0])]))

    counter = _ConsumerCounter()
    hooks = [mod.register_forward_hook(link) for mod in leaves]
    try:
        with torch.no_grad(), counter:
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
    return acts


def _example(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return torch.randn(1, *size)


def _inputs_of(m: nn.Module, example: torch.Tensor, names) -> dict:
    """The example's input to each named submodule (one forward with pre-hooks), to time the
    candidates and blocks on."""
    names = {m.get_submodule(n): n for n in names}
    seen = {}

    def grab(mod, args):
        seen.setdefault(names[mod], args[0].detach().clone())

    hooks = [mod.register_forward_pre_hook(grab) for mod in names]
    try:
        with torch.no_grad():
            m(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def compile_sparse(model: nn.Module, example: torch.Tensor | None = None, min_sparsity: float = 0.5,
                   autotune: bool = True, depthwise: bool = True, fuse: bool = True,
                   flatten: bool = True) -> SparseModel:
    """The sparse runtime for ``model`` (see the module docs); ``model`` is not changed.
    ``fuse``: also try each inverted-residual / depthwise-separable block with a pruned 1x1 as a
    :class:`FusedBlock` (kept where faster with ``autotune``, always without). ``flatten``:
    run the result as one fx graph (see :func:`_flatten`), where it traces."""
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
    info = {"sparse": [], "depthwise": [], "kept_dense": [], "torch_csr": [], "fused_blocks": []}
    if not any(isinstance(c, SparseConv1x1) for c in candidates.values()):
        warnings.warn(f"{type(model).__name__} has no pruned 1x1 convolution (none is {min_sparsity:.0%} zeros): "
                      "was it pruned? running it dense (BN folded)", SparseRuntimeWarning, stacklevel=2)
        candidates = {}
    blocks = {}
    if fuse and candidates:
        for name, mod in m.named_modules():
            fb = _fusable(mod)
            if fb is not None and any(isinstance(candidates.get(f"{name}.{c}"), SparseConv1x1)
                                      for c in ("conv_pw", "conv_pwl")):
                blocks[name] = fb
    inputs = _inputs_of(m, example, [*candidates, *blocks])
    acts = _observe(m, example, candidates)
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
    for name, fb in blocks.items():
        block = m.get_submodule(name)
        fb.set_fallback(block)
        inp = inputs.get(name)
        if inp is None or not fb.fits(*inp.shape[2:]):
            continue
        with torch.no_grad():
            ref, got = block(inp), fb(inp)
        if (got - ref).abs().max().item() > 1e-4 * (1 + ref.abs().max().item()):  # a block we misread
            warnings.warn(f"sparse runtime: block {name} did not fuse (its output differs); kept layer by layer",
                          SparseRuntimeWarning, stacklevel=2)
            continue
        if autotune and _time(fb, inp) >= _time(block, inp):
            continue
        _set_submodule(m, name, fb)
        info["fused_blocks"].append(name)
    flat = _flatten(m, example) if flatten else None
    info["graph"] = "fx" if flat is not None else "module"
    return SparseModel(flat if flat is not None else m, info, layered=m)


def _flatten(m: nn.Module, example: torch.Tensor):
    """``m`` as one flat fx graph: the rewritten layers are leaves called through their
    ``forward`` directly (skipping nn.Module's call machinery, ~3 us each), eval-time
    identities are dropped, and the blocks' own Python forwards disappear into the graph. On a
    90%-sparse MobileNetV2 that is ~150 module calls per image. Returns None where the model
    does not trace or the graph's output differs."""
    from timm.layers import _fx as timm_fx

    from edgevision.export.optimize import _drop_noops

    ours = (SparseConv1x1, DepthwiseCHW, FusedBlock)
    leaves = tuple(timm_fx._leaf_modules) + ours

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, mod, qualname):
            return isinstance(mod, leaves) or super().is_leaf_module(mod, qualname)

    try:
        tracer = _Tracer(autowrap_functions=tuple(timm_fx._autowrap_functions))
        graph = tracer.trace(m)
        gm = torch.fx.GraphModule(tracer.root, graph, type(m).__name__)
        _drop_noops(gm)
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ours):
                with gm.graph.inserting_after(node):
                    call = gm.graph.call_function(gm.get_submodule(node.target).forward, node.args, node.kwargs)
                node.replace_all_uses_with(call)
                gm.graph.erase_node(node)
        gm.graph.lint()
        gm.recompile()
        with torch.no_grad():
            ref, got = m(example), gm(example)
    except Exception:  # noqa: BLE001  (anything fx cannot take: the model's own forward runs)
        return None
    if not isinstance(got, torch.Tensor) or got.shape != ref.shape or \
            (got - ref).abs().max().item() > 1e-5 * (1 + ref.abs().max().item()):
        return None
    return gm


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
