"""Random net configs for fitting and validating the predictor (not the search's own space).

Two families around the hand-made networks: ``mnasnet`` (timm MobileNetV3/EfficientNet block
strings: kernel, expansion, SE, width and depth per stage, MobileNetV3- or MnasNet-style head)
and ``emo`` (EMO/iRMB: depth, width, expansion, kernel and attention per stage). Each config
is a plain dict for :func:`edgevision.models.netconfig.build_from_config`; a seeded
``random.Random`` makes a split reproducible.
"""

from __future__ import annotations

import random

# MnasNet/MobileNetV2 stages after the depthwise-separable first block: (width, stride).
_MNAS_STAGES = ((24, 2), (40, 2), (80, 2), (112, 1), (160, 2), (320, 1))
_EMO_DIMS = (32, 48, 80, 168)


def _round8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


def sample_mnasnet(rng: random.Random, name: str = "mnas") -> dict:
    mnv3 = rng.random() < 0.5
    arch = [[f"ds_r1_k3_s1_e1_c{rng.choice((16, 24))}"]]
    for width, stride in _MNAS_STAGES:
        c = _round8(width * rng.choice((0.5, 0.75, 1.0, 1.25)))
        text = (f"ir_r{rng.randint(1, 4)}_k{rng.choice((3, 5, 7))}_s{stride}_e{rng.choice((3, 4, 6))}_c{c}"
                + ("_se0.25" if rng.random() < 0.5 else ""))
        if mnv3 and width <= 40 and rng.random() < 0.5:
            text += "_nre"  # MobileNetV3's early stages use ReLU
        arch.append([text])
    cfg = {"name": name, "family": "mobilenetv3" if mnv3 else "efficientnet", "arch": arch,
           "stem_size": rng.choice((16, 32)), "num_features": rng.choice((1024, 1280))}
    if mnv3:
        cfg.update(act="hard_swish", se_gate="hard_sigmoid")
    else:
        cfg.update(act=rng.choice(("relu", "relu6", "swish")), se_gate="sigmoid")
    return cfg


def sample_emo(rng: random.Random, name: str = "emo") -> dict:
    depths = [rng.randint(1, 3), rng.randint(1, 3), rng.randint(2, 9), rng.randint(1, 4)]
    dims = [16 * max(1, round(d * rng.choice((0.75, 1.0, 1.25, 1.5)) / 16)) for d in _EMO_DIMS]
    return {"name": name, "family": "emo", "depths": depths, "dims": dims,
            "exp": [rng.choice((2.0, 2.5, 3.0, 3.5, 4.0)) for _ in range(4)],
            "dim_head": [16, 16, 16, 16], "kernels": [rng.choice((3, 5)) for _ in range(4)],
            "attn": [False, rng.random() < 0.3, rng.random() < 0.8, rng.random() < 0.8], "window": 7}


def sample_configs(n: int, seed: int, prefix: str = "net") -> list[dict]:
    """``n`` configs, alternating mnasnet-like and emo-like, reproducible from ``seed``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fn = sample_mnasnet if i % 2 == 0 else sample_emo
        out.append(fn(rng, f"{prefix}{i:03d}_{'mnas' if i % 2 == 0 else 'emo'}"))
    return out
