"""Error-compensating weight rounding onto ONNX Runtime's int8 grid (GPTQ / Optimal Brain Quantization).

Rounding every weight to its nearest grid point treats the weights of a layer as independent.
They are not: the layer's output error is (Q(W) - W) X, and its size depends on how the inputs
X correlate. GPTQ (Frantar et al., ICLR 2023; Optimal Brain Quantization, Frantar & Alistarh,
NeurIPS 2022, which applied it to CNNs) rounds one input column at a time and spreads the
rounding error of that column over the columns not yet rounded, weighted by the inverse of
the input Hessian H = X X^T, which minimises ||(Q(W) - W) X||^2 greedily. Adaptive rounding
(AdaRound) chases the same objective by gradient descent and is orders slower.

Here it is applied layer by layer in forward order, each layer's H measured on calibration
images with every earlier layer already rounded (so a layer also corrects the error its
inputs carry). Convolutions are unfolded into patches; each group of a grouped/depthwise conv
gets its own H. The result is float weights that lie exactly on the grid ORT will use
(symmetric, scale = max|w| / 127 per output channel, or per tensor; /64 with ``reduce_range``),
with each row's largest weight kept at +-127 steps so that ORT, which derives the scale from
the weights it is given, re-derives the same scale and reproduces these integers exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.export.bias_correction import _layers, int8_scale


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _patches(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (groups, d, samples): the columns its weight rows multiply."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    n, d, L = cols.shape  # d = C_in * kh * kw, channel-major, as the weight is laid out
    g = m.groups
    return cols.view(n, g, d // g, L).permute(1, 2, 0, 3).reshape(g, d // g, n * L)


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, scale: torch.Tensor, qmax: float,
                  damp: float = 0.01) -> torch.Tensor:
    """Round ``w`` (groups, rows, d) to multiples of ``scale`` (groups, rows) in [-qmax, qmax],
    column by column, compensating each column's error on the later ones through the inverse
    of ``H`` (groups, d, d). Returns the rounded weights (as floats on the grid)."""
    w = w.clone().double()
    H = H.clone().double()
    d = H.shape[-1]
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag == 0  # inputs that are always zero: any value of the weight is as good
    diag[dead] = 1.0
    diag += damp * diag.mean(-1, keepdim=True)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:  # numerically singular despite dampening: more of it
        H += torch.eye(d, dtype=H.dtype) * diag.mean(-1, keepdim=True).unsqueeze(-1)
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s = scale.double()
    q = torch.empty_like(w)
    for i in range(d):
        col = w[:, :, i]
        qi = torch.clamp(torch.round(col / s), -qmax, qmax) * s
        q[:, :, i] = qi
        err = (col - qi) / U[:, i, i].unsqueeze(-1)
        w[:, :, i + 1:] -= err.unsqueeze(-1) * U[:, i, i + 1:].unsqueeze(1)
    return q.float()


@torch.no_grad()
def gptq_round(model: nn.Module, images: torch.Tensor, per_channel: bool = True, reduce_range: bool = False,
               skip: set[str] | None = None, batch: int = 32, damp: float = 0.01) -> list[str]:
    """Round every Conv2d/Linear weight of ``model`` (in place, forward order) onto ORT's
    symmetric int8 grid by GPTQ on ``images`` (calibration images, normalized as the model
    expects). ``skip``: layer names to leave in float (mixed precision). Returns the layers
    rounded. Layers whose padding cannot be unfolded (a padding string, non-zero padding
    modes) are left for ORT's nearest rounding."""
    skip = skip or set()
    qmax = 64.0 if reduce_range else 127.0
    model.eval()
    done = []
    for name, layer in _layers(model).items():
        if name in skip or not _supported(layer):
            continue
        H = None

        def hook(mod, args):
            nonlocal H
            for part in args[0].detach().float().split(4):  # unfolded patches are k*k times the input
                p = _patches(mod, part)
                h = p @ p.transpose(1, 2)
                H = h if H is None else H + h

        handle = layer.register_forward_pre_hook(hook)
        try:
            for i in range(0, len(images), batch):
                model(images[i:i + batch])
        finally:
            handle.remove()
        if H is None:  # never called in forward
            continue
        w = layer.weight
        g = H.shape[0]
        scale = int8_scale(w, per_channel, qmax)
        w3 = w.reshape(g, w.shape[0] // g, -1)
        q = gptq_quantize(w3, H, scale.view(g, -1), qmax, damp).reshape(w.shape)
        # keep each row's largest weight at the end of the grid, so ORT re-derives this scale
        flat_w, flat_q = w.reshape(w.shape[0], -1), q.reshape(w.shape[0], -1)
        if per_channel:
            idx = flat_w.abs().argmax(1)
            rows = torch.arange(w.shape[0])
            flat_q[rows, idx] = torch.sign(flat_w[rows, idx]) * qmax * scale
        else:
            k = int(flat_w.abs().argmax())
            r, c = divmod(k, flat_w.shape[1])
            flat_q[r, c] = torch.sign(flat_w[r, c]) * qmax * scale[0]
        w.copy_(flat_q.view_as(w))
        done.append(name)
    return done
