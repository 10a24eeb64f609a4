"""Sparse x dense kernels for 1x1 convolutions, and a depthwise convolution, in CHW layout (numba).

Layout: an activation is ``x[C, P]`` per image, P = H*W pixels contiguous (NCHW). A 1x1
convolution is then ``y[O, P] = W[O, I] @ x[I, P] + b``, with W sparse. Each output row
``y[o, :]`` is one task (``prange`` over rows: no two tasks write the same memory): it
starts at the bias and, for each non-zero ``W[o, c]``, adds ``W[o, c] * x[c, :]``; the row
(at most a few tens of KB) stays in L1 while the x rows stream through. Non-zeros are taken
four at a time so each pass over the row does four multiply-adds per load/store of y
(measured here: 1.3x over one at a time at 90% sparsity). Explicit 32-pixel register
tiles as in the paper's C kernel did not pay in numba: LLVM does not keep 32 scalar
accumulators in vector registers, so those variants ran 3x slower than the row kernel.

Block-CSR (SparseByteNN's groups): ``"4x1"`` / ``"8x1"`` blocks are R consecutive output
rows sharing one input column, so one load of ``x[c, p]`` feeds R multiply-adds;
``"1x4"`` blocks are four consecutive input columns of one row, so one index serves four
weights. An optional activation (ReLU, ReLU6) is applied while the row is still in cache.

The depthwise kernels work on a zero-padded copy of the input (``pad_chw``), so the inner
loops have no border tests: 3x3 computes each output from its nine taps with one store;
k x k adds one tap over a whole output row at a time. Which is faster than
torch's NCHW depthwise conv depends on the layer and the CPU (on an AVX-512 Xeon: the 3x3
kernel wins on small stride-1 maps, torch at stride 2 on large maps), so the runtime times
both per layer and keeps the faster.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - checked by require() before any kernel runs
    numba = None

ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2


def _jit(fn):
    """Parallel (prange over rows/channels) and, as ``.serial``, the same code compiled
    without threads: with one thread the serial one runs in the caller's thread, where the
    parallel one would still wake numba's pool per call (costly on a loaded machine)."""
    if numba is None:
        fn.serial = fn
        return fn
    opts = dict(fastmath=True, boundscheck=False, nogil=True, cache=True)
    par = njit(parallel=True, **opts)(fn)
    par.serial = njit(parallel=False, **opts)(fn)
    return par


def pick(kernel, threads: int):
    """The kernel to call with ``threads`` threads (serial for one)."""
    return kernel if threads > 1 else kernel.serial


def _prange(n):
    return range(n)


if numba is not None:
    _prange = prange  # noqa: F811


def require_numba(what: str = "the sparse kernels") -> None:
    if numba is None:
        from edgevision.export._deps import MissingPackageError

        raise MissingPackageError(f"{what} need numba: pip install 'edgevision[sparse]'")


# --------------------------------------------------------------------------- formats

def to_csr(w: np.ndarray):
    """(indptr int32 [O+1], indices int32 [nnz], data float32 [nnz]) of a 2-D array."""
    w = np.asarray(w, dtype=np.float32)
    nz = w != 0
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(nz.sum(1), out=indptr[1:])
    r, c = np.nonzero(nz)
    return indptr, c.astype(np.int32), np.ascontiguousarray(w[r, c], dtype=np.float32)


def to_bcsr(w: np.ndarray, rows: int, cols: int):
    """Block-CSR with blocks of rows x cols: (indptr [O/rows+1], first column of each block
    [nb], data [nb, rows*cols] row-major). A block is stored if any of its weights is non-zero.
    Needs O % rows == 0 and I % cols == 0."""
    w = np.asarray(w, dtype=np.float32)
    o, i = w.shape
    if o % rows or i % cols:
        raise ValueError(f"block {rows}x{cols} does not tile a {o}x{i} weight")
    blocks = w.reshape(o // rows, rows, i // cols, cols).transpose(0, 2, 1, 3)  # [Ob, Ib, r, c]
    keep = np.any(blocks != 0, axis=(2, 3))
    indptr = np.zeros(o // rows + 1, np.int32)
    np.cumsum(keep.sum(1), out=indptr[1:])
    br, bc = np.nonzero(keep)
    data = np.ascontiguousarray(blocks[br, bc].reshape(len(br), rows * cols), dtype=np.float32)
    return indptr, (bc * cols).astype(np.int32), data


# --------------------------------------------------------------------------- kernels

@njit(fastmath=True, boundscheck=False, nogil=True, cache=True) if numba is not None else (lambda f: f)
def _finish(yo, act):
    if act == 1:
        for p in range(yo.shape[0]):
            yo[p] = max(yo[p], 0.0)
    elif act == 2:
        for p in range(yo.shape[0]):
            yo[p] = min(max(yo[p], 0.0), 6.0)


@_jit
def csr_spmm(indptr, indices, data, bias, x, y, act):
    """y[O, P] = W @ x[I, P] + bias, W in CSR; ``act`` 0 none, 1 ReLU, 2 ReLU6."""
    n_rows, n_pix = y.shape
    for o in _prange(n_rows):
        yo = y[o]
        b = bias[o]
        for p in range(n_pix):
            yo[p] = b
        j, j1 = indptr[o], indptr[o + 1]
        while j + 4 <= j1:
            x0, x1, x2, x3 = x[indices[j]], x[indices[j + 1]], x[indices[j + 2]], x[indices[j + 3]]
            v0, v1, v2, v3 = data[j], data[j + 1], data[j + 2], data[j + 3]
            for p in range(n_pix):
                yo[p] += v0 * x0[p] + v1 * x1[p] + v2 * x2[p] + v3 * x3[p]
            j += 4
        while j < j1:
            x0, v0 = x[indices[j]], data[j]
            for p in range(n_pix):
                yo[p] += v0 * x0[p]
            j += 1
        _finish(yo, act)


@_jit
def bcsr4x1_spmm(indptr, cols, data, bias, x, y, act):
    """Blocks of 4 output rows x 1 input column (data [nb, 4])."""
    n_pix = y.shape[1]
    for ob in _prange(y.shape[0] // 4):
        o = ob * 4
        y0, y1, y2, y3 = y[o], y[o + 1], y[o + 2], y[o + 3]
        b0, b1, b2, b3 = bias[o], bias[o + 1], bias[o + 2], bias[o + 3]
        for p in range(n_pix):
            y0[p] = b0
            y1[p] = b1
            y2[p] = b2
            y3[p] = b3
        for j in range(indptr[ob], indptr[ob + 1]):
            xc = x[cols[j]]
            v0, v1, v2, v3 = data[j, 0], data[j, 1], data[j, 2], data[j, 3]
            for p in range(n_pix):
                xv = xc[p]
                y0[p] += v0 * xv
                y1[p] += v1 * xv
                y2[p] += v2 * xv
                y3[p] += v3 * xv
        for r in range(4):
            _finish(y[o + r], act)


@_jit
def bcsr8x1_spmm(indptr, cols, data, bias, x, y, act):
    """Blocks of 8 output rows x 1 input column (data [nb, 8])."""
    n_pix = y.shape[1]
    for ob in _prange(y.shape[0] // 8):
        o = ob * 8
        y0, y1, y2, y3 = y[o], y[o + 1], y[o + 2], y[o + 3]
        y4, y5, y6, y7 = y[o + 4], y[o + 5], y[o + 6], y[o + 7]
        for r in range(8):
            yr, b = y[o + r], bias[o + r]
            for p in range(n_pix):
                yr[p] = b
        for j in range(indptr[ob], indptr[ob + 1]):
            xc = x[cols[j]]
            v0, v1, v2, v3 = data[j, 0], data[j, 1], data[j, 2], data[j, 3]
            v4, v5, v6, v7 = data[j, 4], data[j, 5], data[j, 6], data[j, 7]
            for p in range(n_pix):
                xv = xc[p]
                y0[p] += v0 * xv
                y1[p] += v1 * xv
                y2[p] += v2 * xv
                y3[p] += v3 * xv
                y4[p] += v4 * xv
                y5[p] += v5 * xv
                y6[p] += v6 * xv
                y7[p] += v7 * xv
        for r in range(8):
            _finish(y[o + r], act)


@_jit
def bcsr1x4_spmm(indptr, cols, data, bias, x, y, act):
    """Blocks of 1 output row x 4 consecutive input columns (data [nb, 4])."""
    n_rows, n_pix = y.shape
    for o in _prange(n_rows):
        yo = y[o]
        b = bias[o]
        for p in range(n_pix):
            yo[p] = b
        for j in range(indptr[o], indptr[o + 1]):
            c = cols[j]
            x0, x1, x2, x3 = x[c], x[c + 1], x[c + 2], x[c + 3]
            v0, v1, v2, v3 = data[j, 0], data[j, 1], data[j, 2], data[j, 3]
            for p in range(n_pix):
                yo[p] += v0 * x0[p] + v1 * x1[p] + v2 * x2[p] + v3 * x3[p]
        _finish(yo, act)


BLOCK_KERNELS = {(4, 1): bcsr4x1_spmm, (8, 1): bcsr8x1_spmm, (1, 4): bcsr1x4_spmm}


@_jit
def pad_chw(x, pad_h, pad_w, xp):
    """Copy x[C, H, W] into the middle of xp[C, H + 2 pad_h, W + 2 pad_w], zeros around."""
    n_ch, h, wd = x.shape
    for c in _prange(n_ch):
        for i in range(xp.shape[1]):
            r = xp[c, i]
            if i < pad_h or i >= h + pad_h:
                for j in range(xp.shape[2]):
                    r[j] = 0.0
            else:
                s = x[c, i - pad_h]
                for j in range(pad_w):
                    r[j] = 0.0
                for j in range(wd):
                    r[j + pad_w] = s[j]
                for j in range(wd + pad_w, xp.shape[2]):
                    r[j] = 0.0


@_jit
def depthwise3x3(xp, w, bias, stride, y, act):
    """y[C, Ho, Wo] = 3x3 depthwise conv of the padded xp, + bias: nine taps per output, one store.
    Indexed as y[c, oy, ox] rather than through row views (y[c, oy]): the version with views ran
    1.2-4x slower per layer on MobileNetV2's shapes (AVX-512 Xeon, 1 thread; the 1x1 kernels
    above measured the other way, so they keep their views)."""
    n_ch, ho, wo = y.shape
    for c in _prange(n_ch):
        w00, w01, w02 = w[c, 0, 0], w[c, 0, 1], w[c, 0, 2]
        w10, w11, w12 = w[c, 1, 0], w[c, 1, 1], w[c, 1, 2]
        w20, w21, w22 = w[c, 2, 0], w[c, 2, 1], w[c, 2, 2]
        b = bias[c]
        for oy in range(ho):
            i0 = oy * stride
            i1, i2 = i0 + 1, i0 + 2
            if stride == 1:
                for ox in range(wo):
                    y[c, oy, ox] = (b + w00 * xp[c, i0, ox] + w01 * xp[c, i0, ox + 1] + w02 * xp[c, i0, ox + 2]
                                    + w10 * xp[c, i1, ox] + w11 * xp[c, i1, ox + 1] + w12 * xp[c, i1, ox + 2]
                                    + w20 * xp[c, i2, ox] + w21 * xp[c, i2, ox + 1] + w22 * xp[c, i2, ox + 2])
            else:
                for ox in range(wo):
                    j = ox * stride
                    y[c, oy, ox] = (b + w00 * xp[c, i0, j] + w01 * xp[c, i0, j + 1] + w02 * xp[c, i0, j + 2]
                                    + w10 * xp[c, i1, j] + w11 * xp[c, i1, j + 1] + w12 * xp[c, i1, j + 2]
                                    + w20 * xp[c, i2, j] + w21 * xp[c, i2, j + 1] + w22 * xp[c, i2, j + 2])
            _finish(y[c, oy], act)


@_jit
def depthwise_kxk(xp, w, bias, stride, y, act):
    """y[C, Ho, Wo] = k x k depthwise conv of the padded xp, + bias, one tap at a time per row."""
    n_ch, ho, wo = y.shape
    kh, kw = w.shape[1], w.shape[2]
    for c in _prange(n_ch):
        b = bias[c]
        for oy in range(ho):
            yr = y[c, oy]
            for ox in range(wo):
                yr[ox] = b
            for ky in range(kh):
                r = xp[c, oy * stride + ky]
                for kx in range(kw):
                    v = w[c, ky, kx]
                    if stride == 1:
                        for ox in range(wo):
                            yr[ox] += v * r[ox + kx]
                    else:
                        for ox in range(wo):
                            yr[ox] += v * r[ox * stride + kx]
            _finish(yr, act)
