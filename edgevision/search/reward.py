"""MnasNet's latency-aware reward (Tan et al., "MnasNet", CVPR 2019, eq. 2):

    reward = ACC(m) * (LAT(m) / T) ** w,   w = alpha if LAT(m) <= T else beta

- soft constraint: alpha = beta = -0.07 (the paper's choice: a network twice as slow as T
  must be about 5% more accurate to tie, the trade-off the paper observed empirically);
- hard constraint: alpha = 0, beta = -1 (no gain for being faster than T; sharply penalized
  above it).
"""

from __future__ import annotations

import math

MNASNET_W = -0.07
REWARDS = {"soft": (MNASNET_W, MNASNET_W), "hard": (0.0, -1.0)}


def mnasnet_reward(acc: float, latency_ms: float, target_ms: float, kind: str = "soft",
                   alpha: float | None = None, beta: float | None = None) -> float:
    """``acc * (latency_ms / target_ms) ** w``; ``kind`` picks (alpha, beta), which explicit values override."""
    if kind not in REWARDS:
        raise ValueError(f"reward kind must be one of {', '.join(REWARDS)}; got {kind!r}")
    for label, v in (("latency_ms", latency_ms), ("target_ms", target_ms)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive finite number; got {v!r}")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc) or acc < 0:
        raise ValueError(f"acc must be a finite number >= 0; got {acc!r}")
    a, b = REWARDS[kind]
    a = a if alpha is None else alpha
    b = b if beta is None else beta
    w = a if latency_ms <= target_ms else b
    return float(acc) * (latency_ms / target_ms) ** w
