"""Net config -> model, through edgevision.models.netconfig (the shared contract), so that what
the search scored is exactly what ``create_model("best.json")`` builds."""

from __future__ import annotations

import torch.nn as nn


def build_network(cfg: dict, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    from edgevision.models.netconfig import build_from_config

    return build_from_config(cfg, num_classes=num_classes, in_chans=in_chans)


def save_network_config(cfg: dict, path) -> None:
    from edgevision.models.netconfig import save_config

    save_config(cfg, path)
