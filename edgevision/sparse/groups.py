"""SparseByteNN's channel rearrangement: permute hidden channels so non-zeros cluster in blocks.

A permutation of the output channels of one 1x1 conv, applied to everything that carries
those channels (its bias, the BN and depthwise conv after it, their biases and running
statistics) and to the input channels of the conv that reads them, leaves the function
unchanged (``tests/test_sparse_groups.py`` checks it). Chosen well, it puts output rows with
similar non-zero columns next to each other, so an unstructured-sparse weight stores fewer
zeros as 4x1 / 8x1 block-CSR (its rows share columns).

Chains are found in timm's inverted-residual blocks (``conv_pw`` -> ``bn1`` -> ``conv_dw``
-> ``bn2`` -> ``conv_pwl``, without squeeze-excitation) and in folded models where the BNs
are gone; other layouts can be given as explicit chains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from edgevision.sparse.masks import MASK


def similarity_order(w2: np.ndarray, group: int = 4) -> np.ndarray:
    """A permutation of the rows of ``w2`` putting rows with overlapping non-zeros together:
    greedily, the densest unplaced row starts a group of ``group`` and takes the unplaced
    rows sharing most non-zero columns with it."""
    nz = (np.asarray(w2) != 0).astype(np.float32)
    overlap = nz @ nz.T
    left = np.ones(len(nz), bool)
    order = []
    density = nz.sum(1)
    while left.any():
        seed = int(np.argmax(np.where(left, density, -1)))
        left[seed] = False
        order.append(seed)
        cand = np.where(left)[0]
        take = cand[np.argsort(-overlap[seed, cand], kind="stable")[: group - 1]]
        left[take] = False
        order.extend(int(t) for t in take)
    return np.asarray(order)


def _permute(t: torch.Tensor, perm: torch.Tensor, dim: int) -> None:
    t.data = t.data.index_select(dim, perm).contiguous()


@torch.no_grad()
def permute_chain(producer: nn.Conv2d, carriers: list[nn.Module], consumer: nn.Module, perm) -> None:
    """Apply ``perm`` to producer's outputs, the per-channel carriers and consumer's inputs."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(producer.out_channels)):
        raise ValueError(f"not a permutation of {producer.out_channels} channels")
    for t in (producer.weight, producer.bias, producer._buffers.get(MASK)):
        if t is not None:
            _permute(t, perm, 0)
    for m in carriers:
        if isinstance(m, nn.Conv2d) and m.groups != m.in_channels:
            raise ValueError("a carrier conv must be depthwise (one channel in, one out)")
        for t in (getattr(m, "weight", None), getattr(m, "bias", None), getattr(m, "running_mean", None),
                  getattr(m, "running_var", None), m._buffers.get(MASK)):
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == len(perm):
                _permute(t, perm, 0)
    for t in (consumer.weight, consumer._buffers.get(MASK)):
        if t is not None:
            _permute(t, perm, 1)


def find_chains(model: nn.Module) -> list[tuple[nn.Conv2d, list[nn.Module], nn.Module]]:
    """(producer, carriers, consumer) for each inverted-residual block without SE."""
    chains = []
    for m in model.modules():
        if not all(hasattr(m, a) for a in ("conv_pw", "conv_dw", "conv_pwl")):
            continue
        se = getattr(m, "se", None)
        if se is not None and not isinstance(se, nn.Identity):
            continue
        carriers = [getattr(m, a) for a in ("bn1", "conv_dw", "bn2") if hasattr(m, a)]
        chains.append((m.conv_pw, carriers, m.conv_pwl))
    return chains


def rearrange_channels(model: nn.Module, group: int = 4) -> int:
    """Cluster the non-zeros of every chain's producer into ``group``-row blocks by permuting
    hidden channels (function unchanged); returns the number of chains permuted."""
    n = 0
    for producer, carriers, consumer in find_chains(model):
        w2 = producer.weight.detach().reshape(producer.out_channels, -1).numpy()
        permute_chain(producer, carriers, consumer, similarity_order(w2, group))
        n += 1
    return n


def stored_block_fraction(w2: np.ndarray, rows: int = 4, cols: int = 1) -> float:
    """Weights a rows x cols block-CSR stores (zeros included) over the non-zeros: 1 is ideal."""
    o, i = w2.shape
    nz = np.asarray(w2) != 0
    blocks = nz[: o - o % rows, : i - i % cols].reshape(o // rows, rows, i // cols, cols).any((1, 3))
    return float(blocks.sum() * rows * cols) / max(1, int(nz[: o - o % rows].sum()))
