"""The gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3      for t0 <= t <= t0 + n * dt

It prunes fast while the network is still redundant and slowly near the end, when each
weight removed costs more. Here t is measured in (fractional) epochs, so ``start`` = t0 and
``end`` = t0 + n * dt; before ``start`` the sparsity is ``initial``, after ``end`` ``final``.
"""

from __future__ import annotations

import math


def check_sparsity(sparsity, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), else one clear ValueError/TypeError."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{what} must be in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")
    return s


def check_schedule(start: float, end: float) -> tuple[float, float]:
    """(start, end) in epochs, end >= start >= 0, else one clear ValueError."""
    start, end = float(start), float(end)
    if start < 0:
        raise ValueError(f"prune start must be >= 0 epochs, got {start}")
    if end < start:
        raise ValueError(f"prune end ({end} epochs) precedes prune start ({start} epochs); "
                         "set --prune-end >= --prune-start")
    return start, end


def cubic_sparsity(t: float, final: float, start: float, end: float, initial: float = 0.0) -> float:
    """Target sparsity at time ``t`` (epochs) on the cubic schedule from ``initial`` to ``final``."""
    final, initial = check_sparsity(final, "final sparsity"), check_sparsity(initial, "initial sparsity")
    start, end = check_schedule(start, end)
    if t < start:
        return initial
    if t >= end:  # also covers end == start: one-shot at ``start``
        return final
    frac = (t - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3
