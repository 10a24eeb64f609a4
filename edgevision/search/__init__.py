"""Latency-constrained architecture search (issue 15, item 4).

- :mod:`.spaces`: the factorized MnasNet/MobileNetV3-style space and the EMO/iRMB-style space;
  genotypes (flat dicts of choices) -> net configs (``edgevision-net/1``), sampling, mutation.
- :mod:`.reward`: MnasNet's ``ACC * (LAT/T)^w`` (soft and hard constraint).
- :mod:`.proxy`: accuracy from a short training on the Fashion-MNIST subset (train/val split).
- :mod:`.timing`: candidate latency, from edgevision.latency's predictor or measured.
- :mod:`.evolution`: aging evolution with a fixed seed and a resumable JSONL log.
- :mod:`.run`: one search end to end (what ``edgevision search`` runs); :mod:`.plot`: Pareto PNG;
  :mod:`.build`: net config -> model (edgevision.models.netconfig).
"""

from edgevision.search.reward import mnasnet_reward
from edgevision.search.spaces import SPACES, get_space

__all__ = ["SPACES", "get_space", "mnasnet_reward"]
