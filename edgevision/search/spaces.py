"""Search spaces: a genotype (flat dict of choices) -> a net config that ``create_model`` builds.

Two factorized spaces, each stage searched on its own as in MnasNet (Tan et al., CVPR 2019,
section 4.1: per block kernel, expansion, SE, output filters relative to a base, number of
layers), so that layer diversity across stages is possible:

- ``mnasnet``: MobileNetV3/MnasNet inverted residuals. A fixed 16-channel stem and ``ds``
  block, then five stages at MobileNetV3-Large's base widths and strides (24/s2, 40/s2,
  80/s2, 112/s1, 160/s2); per stage kernel {3,5}, expansion {3,4,6}, SE on/off, width
  {0.75,1,1.25} x base, depth {1..4}; a global width multiplier {0.35,0.5,0.75,1}; and the
  head: ``mobilenetv3`` family (last 1x1 conv, pool, then a 1x1 conv to 1024 features) or
  ``efficientnet`` family (MnasNet's: a 1x1 conv to 1280 at full resolution, then pool).
  ReLU in the first two stages and hard-swish after, as MobileNetV3.
- ``emo``: EMO's iRMB network (edgevision.models.emo.EMO); per stage depth, width (multiples
  of 16 so that 16-channel heads divide them), expansion {2,3,4}, depthwise kernel {3,5},
  window attention on/off; one window size {4,7} for all attention stages.

A genotype is ``{gene: value}`` with genes in a fixed order (:attr:`Space.genes`), so sampling
and mutation from one ``random.Random(seed)`` are reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from timm.layers import make_divisible

NET_FORMAT = "edgevision-net/1"


@dataclass(frozen=True)
class Space:
    name: str
    genes: tuple[tuple[str, tuple], ...]  # (gene name, choices), in sampling order

    # ---------------------------------------------------------------- genotypes
    def sample(self, rng: random.Random) -> dict:
        return {g: rng.choice(choices) for g, choices in self.genes}

    def mutate(self, genotype: dict, rng: random.Random) -> dict:
        """One gene changed to another of its choices (Real et al.'s aging evolution mutates one)."""
        self.check(genotype)
        child = dict(genotype)
        name, choices = rng.choice([g for g in self.genes if len(g[1]) > 1])
        child[name] = rng.choice([c for c in choices if c != genotype[name]])
        return child

    def smallest(self) -> dict:
        """The cheapest genotype: every gene at its cheapest choice (see :meth:`_cheapest`)."""
        return {g: self._cheapest(g, choices) for g, choices in self.genes}

    def _cheapest(self, gene: str, choices: tuple):
        return min(choices)  # numbers: fewer/narrower is cheaper; False < True for SE/attention

    def check(self, genotype) -> dict:
        if not isinstance(genotype, dict):
            raise TypeError(f"a {self.name} genotype must be a dict of gene -> choice; got {type(genotype).__name__}")
        names = [g for g, _ in self.genes]
        missing, extra = [g for g in names if g not in genotype], [g for g in genotype if g not in names]
        if missing or extra:
            raise ValueError(f"{self.name} genotype: missing genes {missing}, unknown genes {extra}")
        for g, choices in self.genes:
            if genotype[g] not in choices:
                raise ValueError(f"{self.name} genotype: gene {g}={genotype[g]!r} is not one of {list(choices)}")
        return genotype

    def key(self, genotype: dict) -> str:
        """A canonical string of a genotype (dedup, logs)."""
        return json.dumps([genotype[g] for g, _ in self.genes])

    def size(self) -> int:
        n = 1
        for _, choices in self.genes:
            n *= len(choices)
        return n

    def to_config(self, genotype: dict, name: str = "searched") -> dict:
        raise NotImplementedError


# ------------------------------------------------------------------------- mnasnet space
# (base output channels, stride, activation override) per searchable stage: MobileNetV3-Large's.
MNAS_STAGES = ((24, 2, "nre"), (40, 2, "nre"), (80, 2, ""), (112, 1, ""), (160, 2, ""))
MNAS_CHOICES = dict(kernel=(3, 5), exp=(3, 4, 6), se=(False, True), width=(0.75, 1.0, 1.25), depth=(1, 2, 3, 4))
MNAS_GLOBAL_WIDTH = (0.35, 0.5, 0.75, 1.0)
MNAS_HEADS = ("mobilenetv3", "efficientnet")


class MnasSpace(Space):
    def _cheapest(self, gene, choices):
        return "mobilenetv3" if gene == "head" else min(choices)  # pool-then-conv head is cheaper

    def to_config(self, genotype: dict, name: str = "searched") -> dict:
        self.check(genotype)
        w = genotype["width"]
        arch = [[f"ds_r1_k3_s1_e1_c{make_divisible(16 * w, 8)}_nre"]]
        last = 16
        for i, (base, stride, act) in enumerate(MNAS_STAGES):
            g = {k: genotype[f"s{i}.{k}"] for k in MNAS_CHOICES}
            last = make_divisible(base * w * g["width"], 8)
            block = f"ir_r{g['depth']}_k{g['kernel']}_s{stride}_e{g['exp']}_c{last}"
            block += "_se0.25" if g["se"] else ""
            block += f"_{act}" if act else ""
            arch.append([block])
        family = genotype["head"]
        cfg = {"format": NET_FORMAT, "name": name, "family": family, "stem_size": 16, "act": "hard_swish",
               "se_gate": "hard_sigmoid"}
        if family == "mobilenetv3":  # MobileNetV3: last 1x1 conv (6x), pool, 1x1 conv to the features
            arch.append([f"cn_r1_k1_s1_c{make_divisible(6 * last, 8)}"])
            cfg["num_features"] = 1024
        else:  # MnasNet/EfficientNet: 1x1 conv head at full resolution, then pool
            cfg["num_features"] = 1280
        cfg["arch"] = arch
        return cfg


# ----------------------------------------------------------------------------- emo space
EMO_DEPTHS = ((1, 2), (1, 2, 3), (2, 4, 6, 8), (1, 2, 3, 4))
EMO_DIMS = ((16, 32, 48), (32, 48, 64), (64, 80, 96, 128), (96, 128, 160, 192))
EMO_EXP = (2.0, 3.0, 4.0)
EMO_KERNELS = (3, 5)
EMO_WINDOWS = (4, 7)
EMO_DIM_HEAD = 16  # every width choice is a multiple of it


class EmoSpace(Space):
    def _cheapest(self, gene, choices):
        return 7 if gene == "window" else min(choices)  # no attention in the smallest: window moot

    def to_config(self, genotype: dict, name: str = "searched") -> dict:
        self.check(genotype)
        stages = range(len(EMO_DEPTHS))
        return {"format": NET_FORMAT, "name": name, "family": "emo",
                "depths": [genotype[f"s{i}.depth"] for i in stages],
                "dims": [genotype[f"s{i}.dim"] for i in stages],
                "exp": [genotype[f"s{i}.exp"] for i in stages],
                "dim_head": [EMO_DIM_HEAD] * len(EMO_DEPTHS),
                "kernels": [genotype[f"s{i}.kernel"] for i in stages],
                "attn": [genotype[f"s{i}.attn"] for i in stages],
                "window": genotype["window"]}


def _mnas_genes():
    genes = [("width", MNAS_GLOBAL_WIDTH)]
    for i in range(len(MNAS_STAGES)):
        genes += [(f"s{i}.{k}", v) for k, v in MNAS_CHOICES.items()]
    return tuple(genes + [("head", MNAS_HEADS)])


def _emo_genes():
    genes = []
    for i in range(len(EMO_DEPTHS)):
        genes += [(f"s{i}.depth", EMO_DEPTHS[i]), (f"s{i}.dim", EMO_DIMS[i]), (f"s{i}.exp", EMO_EXP),
                  (f"s{i}.kernel", EMO_KERNELS), (f"s{i}.attn", (False, True))]
    return tuple(genes + [("window", EMO_WINDOWS)])


SPACES: dict[str, Space] = {"mnasnet": MnasSpace("mnasnet", _mnas_genes()), "emo": EmoSpace("emo", _emo_genes())}


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown search space {name!r}; choose from: {', '.join(SPACES)}") from None
