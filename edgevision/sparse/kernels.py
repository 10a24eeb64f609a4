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

Depthwise convolutions with "same" padding (pad = k // 2) run on whole flattened planes, so
that even a 7x7 map is one vector loop of 49 outputs rather than seven loops of seven:
output q = oy * W + ox reads input q + dy * W + dx for tap (dy, dx). A tap that would read
across the left or right border is multiplied by a 0/1 column mask; rows outside the map are
handled by narrowing each tap's range of q (or, in the fused 3x3 loops, by separate loops for
the first and last row and a scalar fix-up of the few outputs whose reads would leave the
array). Stride 2 (even H and W) first splits each plane into its four (row, column) parity
planes, after which every tap is again a constant offset. Each tap reads through its own
slice, indexed from 0: LLVM vectorizes ``s[r]`` over r, where ``x[c, r + W]`` with a runtime
W measured 5-10x slower (AVX-512 Xeon). Other paddings and odd sizes at stride 2 take the
zero-padded copy (``pad_chw``) and the row kernels. Which is faster than torch's depthwise
conv still depends on the layer and the CPU, so the runtime times both per layer.
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


@njit(fastmath=True, boundscheck=False, nogil=True, cache=True) if numba is not None else (lambda f: f)
def _csr_row_range(indptr, indices, data, o, b, x, lo, yo, act):
    """yo[:] = b + sum over row o of the CSR matrix of data[j] * x[indices[j], lo:lo+len(yo)],
    then act: one output row of csr_spmm, or of the fused block's expand over a band of pixels.

    The leftover (nnz mod 4) non-zeros go first, with the bias, in one pass; the rest four at a
    time. Rows of 90%-sparse layers with 16-64 input channels hold 1.6-6 non-zeros, so this is
    one or two passes over yo instead of an initialising pass plus one per leftover term:
    1.25-1.45x on MobileNet's 56x56 and 112x112 layers (AVX-512 Xeon, 1 thread, scratch
    timings), the same elsewhere."""
    n = yo.shape[0]
    lo = max(lo, 0)
    hi = lo + n
    j, j1 = indptr[o], indptr[o + 1]
    r = (j1 - j) % 4
    if r == 0:
        for p in range(n):
            yo[p] = b
    elif r == 1:
        x0, v0 = x[indices[j], lo:hi], data[j]
        for p in range(n):
            yo[p] = b + v0 * x0[p]
    elif r == 2:
        x0, x1, v0, v1 = x[indices[j], lo:hi], x[indices[j + 1], lo:hi], data[j], data[j + 1]
        for p in range(n):
            yo[p] = b + v0 * x0[p] + v1 * x1[p]
    else:
        x0, x1, x2 = x[indices[j], lo:hi], x[indices[j + 1], lo:hi], x[indices[j + 2], lo:hi]
        v0, v1, v2 = data[j], data[j + 1], data[j + 2]
        for p in range(n):
            yo[p] = b + v0 * x0[p] + v1 * x1[p] + v2 * x2[p]
    j += r
    while j + 4 <= j1:
        x0, x1 = x[indices[j], lo:hi], x[indices[j + 1], lo:hi]
        x2, x3 = x[indices[j + 2], lo:hi], x[indices[j + 3], lo:hi]
        v0, v1, v2, v3 = data[j], data[j + 1], data[j + 2], data[j + 3]
        for p in range(n):
            yo[p] += v0 * x0[p] + v1 * x1[p] + v2 * x2[p] + v3 * x3[p]
        j += 4
    _finish(yo, act)


@_jit
def csr_spmm(indptr, indices, data, bias, x, y, act):
    """y[O, P] = W @ x[I, P] + bias, W in CSR; ``act`` 0 none, 1 ReLU, 2 ReLU6."""
    for o in _prange(y.shape[0]):
        _csr_row_range(indptr, indices, data, o, bias[o], x, 0, y[o], act)


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


# ------------------------------------------------- depthwise on flattened planes ("same" pad)

_njit = (njit(fastmath=True, boundscheck=False, nogil=True, cache=True) if numba is not None
         else (lambda f: f))


@_njit
def _dw_point(x, xi, h, wd, w, c, b, oy, ox, stride, pad):
    """One output of a depthwise conv (weights w[c]) of plane xi of x[., h*wd], with border
    tests (for the few outputs the vector loops skip)."""
    k = w.shape[1]
    s = b
    for ky in range(k):
        iy = oy * stride + ky - pad
        if 0 <= iy < h:
            for kx in range(k):
                ix = ox * stride + kx - pad
                if 0 <= ix < wd:
                    s += w[c, ky, kx] * x[xi, iy * wd + ix]
    return s


@_njit
def _dw_point_parity(planes, pi, wo, w, c, b, oy, ox):
    """One output of a 3x3, stride 2, pad 1 depthwise conv read from parity planes[pi]."""
    s = b
    for ky in range(3):
        iy = 2 * oy + ky - 1
        if iy >= 0:
            for kx in range(3):
                ix = 2 * ox + kx - 1
                if ix >= 0:
                    s += w[c, ky, kx] * planes[pi, (iy % 2) * 2 + ix % 2, (iy // 2) * wo + ix // 2]
    return s


@_njit
def _act_plane(y, c, n, act):
    if act == 1:
        for q in range(n):
            y[c, q] = max(y[c, q], 0.0)
    elif act == 2:
        for q in range(n):
            y[c, q] = min(max(y[c, q], 0.0), 6.0)


# In the loops below every index is ``r + offset`` with r from a range and offsets clamped
# with max(., 0): LLVM then knows the index is not negative, drops numba's negative-index
# wrap-around and vectorizes over r. (Slicing per channel instead costs reference counting per
# slice: 30x slower on 960 channels of 7x7.)

@_njit
def _dw3_s1_plane(x, xi, wd, w, c, b, ml, mr, y, yi, act):
    """y[yi] = 3x3 depthwise (weights w[c], bias b, stride 1, pad 1) of x[xi], planes of
    H*W = x.shape[1] pixels, then ``act``. Needs H >= 3 and W >= 2."""
    hw = x.shape[1]
    wd = max(wd, 1)
    h = hw // wd
    w1, w2 = wd + 1, wd + 2
    v1, v2, v3 = 2 * wd, 2 * wd + 1, 2 * wd + 2
    n_mid = max(hw - 2 * wd - 2, 0)
    last = max(hw - 2 * wd - 1, 0)  # input index of the last row's first top-left tap
    w00, w01, w02 = w[c, 0, 0], w[c, 0, 1], w[c, 0, 2]
    w10, w11, w12 = w[c, 1, 0], w[c, 1, 1], w[c, 1, 2]
    w20, w21, w22 = w[c, 2, 0], w[c, 2, 1], w[c, 2, 2]
    for r in range(wd - 1):  # first row, outputs 1 .. W-1: no row above
        y[yi, r + 1] = (b + ml[r + 1] * (w10 * x[xi, r] + w20 * x[xi, r + wd])
                        + w11 * x[xi, r + 1] + w21 * x[xi, r + w1]
                        + mr[r + 1] * (w12 * x[xi, r + 2] + w22 * x[xi, r + w2]))
    for r in range(n_mid):  # middle rows, outputs W+1 .. HW-W-2
        y[yi, r + w1] = (b + ml[r + w1] * (w00 * x[xi, r] + w10 * x[xi, r + wd] + w20 * x[xi, r + v1])
                         + w01 * x[xi, r + 1] + w11 * x[xi, r + w1] + w21 * x[xi, r + v2]
                         + mr[r + w1] * (w02 * x[xi, r + 2] + w12 * x[xi, r + w2] + w22 * x[xi, r + v3]))
    o = last + w1
    for r in range(wd - 1):  # last row, outputs HW-W .. HW-2: no row below
        y[yi, r + o] = (b + ml[r + o] * (w00 * x[xi, r + last] + w10 * x[xi, r + last + wd])
                        + w01 * x[xi, r + last + 1] + w11 * x[xi, r + last + w1]
                        + mr[r + o] * (w02 * x[xi, r + last + 2] + w12 * x[xi, r + last + w2]))
    for q in (0, wd, hw - wd - 1, hw - 1):  # the loops skip these: their reads leave the array
        y[yi, q] = _dw_point(x, xi, h, wd, w, c, b, q // wd, q % wd, 1, 1)
    _act_plane(y, yi, hw, act)


@_njit
def _dw3_s2_plane(planes, pi, wo, w, c, b, ml, y, yi, act):
    """y[yi] (Ho*Wo = y.shape[1] outputs) = 3x3 depthwise (weights w[c], bias b, stride 2,
    pad 1) of the image whose parity planes are planes[pi] (0 ee, 1 eo, 2 oe, 3 oo; see
    split_parity; H and W even, H >= 4), then ``act``; ml is 0 in the first output column.
    Output (oy, ox) reads rows 2oy-1 (odd, oy-1), 2oy (even, oy), 2oy+1 (odd, oy) and
    columns 2ox-1 (odd, ox-1), 2ox (even, ox), 2ox+1 (odd, ox)."""
    n = y.shape[1]
    wo = max(wo, 1)
    u1, u2 = wo + 1, 1
    n_rest = max(n - wo - 1, 0)
    w00, w01, w02 = w[c, 0, 0], w[c, 0, 1], w[c, 0, 2]
    w10, w11, w12 = w[c, 1, 0], w[c, 1, 1], w[c, 1, 2]
    w20, w21, w22 = w[c, 2, 0], w[c, 2, 1], w[c, 2, 2]
    for r in range(wo - 1):  # first output row, outputs 1 .. Wo-1: no row above
        y[yi, r + 1] = (b + ml[r + 1] * (w10 * planes[pi, 1, r] + w20 * planes[pi, 3, r])
                        + w11 * planes[pi, 0, r + 1] + w21 * planes[pi, 2, r + 1]
                        + w12 * planes[pi, 1, r + 1] + w22 * planes[pi, 3, r + 1])
    for r in range(n_rest):  # the rest, outputs Wo+1 .. n-1
        y[yi, r + u1] = (b + ml[r + u1] * (w00 * planes[pi, 3, r] + w10 * planes[pi, 1, r + wo]
                                           + w20 * planes[pi, 3, r + wo])
                         + w01 * planes[pi, 2, r + u2] + w11 * planes[pi, 0, r + u1] + w21 * planes[pi, 2, r + u1]
                         + w02 * planes[pi, 3, r + u2] + w12 * planes[pi, 1, r + u1] + w22 * planes[pi, 3, r + u1])
    for q in (0, wo):
        y[yi, q] = _dw_point_parity(planes, pi, wo, w, c, b, q // wo, q % wo)
    _act_plane(y, yi, n, act)


@_jit
def dw3x3_s1(x, w, bias, wd, ml, mr, y, act):
    """3x3 depthwise, stride 1, pad 1: x, y [C, H*W]; ml / mr [H*W] are 0 in the first / last
    column. Needs H >= 3 and W >= 2."""
    for c in _prange(x.shape[0]):
        _dw3_s1_plane(x, c, wd, w, c, bias[c], ml, mr, y, c, act)


@_jit
def split_parity(x, planes):
    """planes[C, 4, (H/2) (W/2)] = x[C, H, W] at (even, even), (even, odd), (odd, even), (odd,
    odd) rows and columns (H, W even)."""
    n_ch, h, wd = x.shape
    ho, wo = h // 2, wd // 2
    for c in _prange(n_ch):
        for i in range(ho):
            o = max(i * wo, 0)
            for j in range(wo):
                planes[c, 0, o + j] = x[c, 2 * i, 2 * j]
                planes[c, 1, o + j] = x[c, 2 * i, 2 * j + 1]
                planes[c, 2, o + j] = x[c, 2 * i + 1, 2 * j]
                planes[c, 3, o + j] = x[c, 2 * i + 1, 2 * j + 1]


@_jit
def dw3x3_s2(planes, w, bias, wo, ml, y, act):
    """3x3 depthwise, stride 2, pad 1, of images given by their parity planes[C, 4, Ho*Wo]
    (see split_parity; H and W even, H >= 4): y[C, Ho*Wo]; ml is 0 in the first output column."""
    for c in _prange(y.shape[0]):
        _dw3_s2_plane(planes, c, wo, w, c, bias[c], ml, y, c, act)


@_jit
def dw_taps(planes, w, bias, wp, tap_plane, tap_dy, tap_dx, masks, y, act):
    """Any k x k depthwise with pad k // 2 as one pass per tap over flattened planes:
    planes[C, P, L] (the input itself, P = 1, at stride 1; its parity planes at stride 2),
    plane width ``wp`` (= the output width), y[C, L]. Tap t of the kernel (row-major) reads
    plane ``tap_plane[t]`` shifted by (tap_dy[t], tap_dx[t]) rows and columns; masks[dx + D]
    is 1 where column ox + dx is inside the plane (D = masks.shape[0] // 2)."""
    n_ch, n = y.shape
    wp = max(wp, 1)
    hp = n // wp
    d = masks.shape[0] // 2
    k = w.shape[1]
    for c in _prange(n_ch):
        b = bias[c]
        for q in range(n):
            y[c, q] = b
        for t in range(tap_plane.shape[0]):
            dy, dx, pl = tap_dy[t], tap_dx[t], tap_plane[t]
            off = dy * wp + dx
            q0 = max(max(0, -dy) * wp, -off, 0)  # rows inside the plane, reads inside the array
            q1 = min(min(hp, hp - dy) * wp, n - off)
            s0 = max(q0 + off, 0)
            v = w[c, t // k, t % k]
            md = dx + d
            for r in range(q1 - q0):
                y[c, r + q0] += v * masks[md, r + q0] * planes[c, pl, r + s0]
        _act_plane(y, c, n, act)


_MASKS: dict = {}


def _masks(h: int, wd: int, d: int) -> np.ndarray:
    """masks[dx + d, q] = 1 where column (q % wd) + dx lies in [0, wd), for an h x wd plane."""
    key = (h, wd, d)
    if key not in _MASKS:
        col = np.arange(h * wd) % wd
        _MASKS[key] = np.stack([((col + dx >= 0) & (col + dx < wd)).astype(np.float32)
                                for dx in range(-d, d + 1)])
    return _MASKS[key]


_TAPS: dict = {}


def _taps(k: int, stride: int):
    """(plane, dy, dx) int64 arrays per tap (row-major) for pad k // 2 at stride 1 or 2."""
    if (k, stride) not in _TAPS:
        p = k // 2
        t = [(0, ky - p, kx - p) if stride == 1 else (((ky - p) % 2) * 2 + (kx - p) % 2, (ky - p) // 2, (kx - p) // 2)
             for ky in range(k) for kx in range(k)]
        _TAPS[k, stride] = tuple(np.array(v, np.int64) for v in zip(*t))
    return _TAPS[k, stride]


def depthwise_path(h: int, wd: int, k: int, stride: int, pad: int) -> str:
    """Which depthwise kernel runs a C x h x wd input: "3x3/s1", "3x3/s2", "taps/s1",
    "taps/s2" (flattened planes, pad k // 2) or "padded" (a zero-padded copy, row kernels)."""
    if k % 2 == 0 or pad != k // 2:
        return "padded"
    if stride == 1:
        return "3x3/s1" if k == 3 and h >= 3 and wd >= 2 else "taps/s1"
    if stride == 2 and h % 2 == 0 and wd % 2 == 0:
        return "3x3/s2" if k == 3 and h >= 4 else "taps/s2"
    return "padded"


def depthwise(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, pad: tuple[int, int],
              y: np.ndarray, act: int = ACT_NONE, threads: int = 1) -> None:
    """y[C, Ho, Wo] = depthwise conv of x[C, H, W] (float32, C-contiguous) with w[C, k, k],
    zero padding ``pad``, + bias, then ``act``; picks the kernel with :func:`depthwise_path`."""
    c, h, wd = x.shape
    k = w.shape[1]
    ph, pw = pad
    path = depthwise_path(h, wd, k, stride, ph) if (ph == pw and w.shape[2] == k) else "padded"
    if path == "3x3/s1":
        m = _masks(h, wd, 1)
        pick(dw3x3_s1, threads)(x.reshape(c, h * wd), w, bias, wd, m[0], m[2], y.reshape(c, h * wd), act)
    elif path == "taps/s1":
        plane, dy, dx = _taps(k, 1)
        pick(dw_taps, threads)(x.reshape(c, 1, h * wd), w, bias, wd, plane, dy, dx, _masks(h, wd, k // 2),
                               y.reshape(c, h * wd), act)
    elif path.endswith("/s2"):
        ho, wo = h // 2, wd // 2
        planes = np.empty((c, 4, ho * wo), np.float32)
        pick(split_parity, threads)(x, planes)
        if path == "3x3/s2":
            m = _masks(ho, wo, 1)
            pick(dw3x3_s2, threads)(planes, w, bias, wo, m[0], y.reshape(c, ho * wo), act)
        else:
            plane, dy, dx = _taps(k, 2)
            d = int(max(abs(dx.min()), abs(dx.max())))
            pick(dw_taps, threads)(planes, w, bias, wo, plane, dy, dx, _masks(ho, wo, d), y.reshape(c, ho * wo), act)
    else:
        xp = np.empty((c, h + 2 * ph, wd + 2 * pw), np.float32)
        pick(pad_chw, threads)(x, ph, pw, xp)
        pick(depthwise3x3 if w.shape[1:] == (3, 3) else depthwise_kxk, threads)(xp, w, bias, stride, y, act)


# ------------------------------------------------------------ fused blocks (channel streaming)

@_njit
def _split_rows(x, wd, a, b, out):
    """out[C, 4, ((b-a)/2) (wd/2)] = the parity planes (see split_parity) of rows [a, b) of
    x[C, H*wd]; a, b - a and wd even."""
    wo = wd // 2
    for c in range(x.shape[0]):
        for i in range((b - a) // 2):
            r0 = max((a + 2 * i) * wd, 0)
            r1 = r0 + wd
            o = max(i * wo, 0)
            for j in range(wo):
                out[c, 0, o + j] = x[c, r0 + 2 * j]
                out[c, 1, o + j] = x[c, r0 + 2 * j + 1]
                out[c, 2, o + j] = x[c, r1 + 2 * j]
                out[c, 3, o + j] = x[c, r1 + 2 * j + 1]


def fused_scratch(c_in: int, h: int, wd: int, stride: int, band: int):
    """The 1-D scratch buffers fused_block needs: (buf, split, dw_out)."""
    rows = min(band + 2, h) if stride == 1 else min(2 * band + 2, h)
    n_dw = rows * wd if stride == 1 else (rows // 2) * (wd // 2)
    return (np.empty(rows * wd, np.float32), np.empty(c_in * rows * wd if stride == 2 else 1, np.float32),
            np.empty(n_dw, np.float32))


@_njit
def fused_block(x, e_ptr, e_idx, e_val, e_bias, act1, dw_w, dw_b, wd, stride, act2, ml, mr,
                p_ptr, p_idx, p_val, p_bias, act3, skip, band, buf, split, dw_out, y):
    """One inverted-residual block (1x1 expand, act1, 3x3 depthwise pad 1 stride 1 or 2, act2,
    1x1 project, act3, + x if ``skip``) or, with an empty ``e_ptr``, one depthwise-separable
    block (no expand), streamed one expanded channel at a time over bands of ``band`` output
    rows: a channel's expanded rows and depthwise output (``buf`` / ``dw_out``, a few KB) stay
    in L1 and are added at once into the band of the projection's outputs (kept in L2 by the
    band height), so the expanded tensor never goes to memory. A band's expanded rows include
    the one-row halo the depthwise needs (recomputed by both neighbouring bands).

    x[Cin, H*W] the block input, y[Cout, Ho*Wo]. Expand and project weights are CSR with rows
    = expanded channels (the projection's transposed: p_idx holds output channels). At
    stride 2 a band's input rows are first split into parity planes (``split``); the expand
    is per pixel, so expanding them gives the expanded channel's parity planes. Scratch from
    :func:`fused_scratch`; ml / mr: the column masks of an H x W (stride 1) or Ho x Wo
    (stride 2) map."""
    n_out, n = y.shape
    c_in, hw = x.shape
    wd = max(wd, 1)
    h = hw // wd
    wo = wd // 2 if stride == 2 else wd
    wo = max(wo, 1)
    ho = n // wo
    expand = e_ptr.shape[0] > 0
    n_mid = e_ptr.shape[0] - 1 if expand else c_in
    add_early = skip and act3 == 0  # with an act after the projection, the skip comes after it
    for r0 in range(0, ho, band):
        r1 = min(r0 + band, ho)
        if stride == 1:  # input rows [a, b) of the band (at least 3), its output row r0 at `off`
            b = min(r1 + 1, h)
            a = max(min(r0 - 1, b - 3), 0)
            off = r0 - a
            nin = (b - a) * wd
            nbo = nin
        else:
            b = min(2 * r1, h)
            a = max(min(2 * r0 - 2, b - 4), 0)
            off = r0 - a // 2
            nbo = ((b - a) // 2) * wo
            nin = 4 * nbo
        q0, nq = max(r0 * wo, 0), max((r1 - r0) * wo, 0)
        s0 = max(off * wo, 0)
        for o in range(n_out):
            yo, bo = y[o], p_bias[o]
            if add_early:
                xo = x[o]
                for q in range(nq):
                    yo[q + q0] = bo + xo[q + q0]
            else:
                for q in range(nq):
                    yo[q + q0] = bo
        d2 = dw_out[:nbo].reshape(1, nbo)
        d = dw_out
        bb = buf[:nin].reshape(1, nin)
        if stride == 2:
            sp = split[:c_in * nin].reshape(c_in, 4, nbo)
            sp2 = split[:c_in * nin].reshape(c_in, nin)
            _split_rows(x, wd, a, b, sp)
        for e in range(n_mid):
            if stride == 1:
                if expand:
                    _csr_row_range(e_ptr, e_idx, e_val, e, e_bias[e], x, a * wd, buf[:nin], act1)
                    _dw3_s1_plane(bb, 0, wd, dw_w, e, dw_b[e], ml, mr, d2, 0, act2)
                else:
                    _dw3_s1_plane(x[e, a * wd:b * wd].reshape(1, nin), 0, wd, dw_w, e, dw_b[e], ml, mr, d2, 0, act2)
            else:
                if expand:
                    _csr_row_range(e_ptr, e_idx, e_val, e, e_bias[e], sp2, 0, buf[:nin], act1)
                    _dw3_s2_plane(buf[:nin].reshape(1, 4, nbo), 0, wo, dw_w, e, dw_b[e], ml, d2, 0, act2)
                else:
                    _dw3_s2_plane(sp, e, wo, dw_w, e, dw_b[e], ml, d2, 0, act2)
            for j in range(p_ptr[e], p_ptr[e + 1]):
                yo, v = y[p_idx[j]], p_val[j]
                for q in range(nq):
                    yo[q + q0] += v * d[q + s0]
        if act3 != 0:
            for o in range(n_out):
                yo = y[o]
                for q in range(nq):
                    t = yo[q + q0]
                    t = max(t, 0.0)
                    if act3 == 2:
                        t = min(t, 6.0)
                    if skip:
                        t += x[o, q + q0]
                    yo[q + q0] = t
