"""Networks described as data: a JSON net config -> a model.

A net config names a family and its architecture; it is what a search returns, what the
leakage attack recovers and what a user edits by hand. Three families, each built by the
code that already implements it (no second copy of a network):

- ``mobilenetv3``: timm's MobileNetV3 class (pool, then the 1x1 head conv) from timm arch-def
  strings such as ``"ir_r2_k3_s2_e6_c24_se0.25"``;
- ``efficientnet``: timm's EfficientNet class (1x1 head conv, then pool: MobileNetV2/MnasNet);
- ``emo``: our EMO (iRMB) with per-stage depths, widths, expansions, kernels, attention on/off
  and the attention window.

``create_model("net.json")`` builds a config file; configs shipped in ``models/configs/`` are
registered by their ``name`` (e.g. the networks ``edgevision search`` found).
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch.nn as nn

from edgevision.registry import register_model

FORMAT = "edgevision-net/1"
FAMILIES = ("mobilenetv3", "efficientnet", "emo")
# timm arch-def block types (timm.models._efficientnet_builder._decode_block_str).
BLOCK_TYPES = ("ds", "dsa", "ir", "er", "cn", "uir")
_TIMM_KEYS = {"arch", "stem_size", "num_features", "act", "se_gate", "head_bias", "fix_stem",
              "channel_multiplier"}
_EMO_KEYS = {"depths", "dims", "exp", "dim_head", "kernels", "attn", "window"}
_COMMON_KEYS = {"format", "name", "family", "num_classes", "in_chans", "notes"}
_TIMM_DEFAULTS = {
    "mobilenetv3": dict(stem_size=16, num_features=1280, act="hard_swish", se_gate="hard_sigmoid",
                        head_bias=True, fix_stem=False, channel_multiplier=1.0),
    "efficientnet": dict(stem_size=32, num_features=1280, act="relu", se_gate="sigmoid",
                         head_bias=True, fix_stem=False, channel_multiplier=1.0),
}


class NetConfigError(ValueError):
    """A net config that cannot describe a network (one line: which field, what is wrong)."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise NetConfigError(msg)


def _check_act(name) -> None:
    from timm.layers import get_act_layer

    _require(isinstance(name, str) and name, f"act must be an activation name; got {name!r}")
    try:
        get_act_layer(name)
    except Exception:  # timm raises KeyError/ValueError/AssertionError by version
        raise NetConfigError(f"unknown activation {name!r} (timm names: relu, relu6, hard_swish, swish, gelu, ...)") from None


def _check_block(stage: int, pos: int, text) -> None:
    from timm.models._efficientnet_builder import decode_arch_def

    where = f"arch stage {stage} block {pos}"
    _require(isinstance(text, str) and text, f"{where}: a timm block string like 'ir_r1_k3_s2_e6_c24'; got {text!r}")
    kind = text.split("_")[0]
    _require(kind in BLOCK_TYPES, f"{where}: unknown block type {kind!r} in {text!r}; "
             f"known: {', '.join(BLOCK_TYPES)}")
    try:
        decode_arch_def([[text]])
    except KeyError as e:  # a required option is absent
        raise NetConfigError(f"{where}: {text!r} lacks option {e.args[0]!r} (e.g. c<N> = output width)") from None
    except Exception as e:  # timm asserts on malformed options
        raise NetConfigError(f"{where}: cannot read {text!r}: {e or type(e).__name__}") from None


def _positive_ints(cfg: dict, key: str, n: int | None = None) -> None:
    v = cfg.get(key)
    ok = isinstance(v, (list, tuple)) and v and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)
    _require(ok, f"{key} must be a list of positive integers; got {v!r}")
    if n is not None:
        _require(len(v) == n, f"{key} must have {n} entries (one per stage); got {len(v)}")


def validate_config(cfg) -> dict:
    """A normalised copy of ``cfg`` with defaults filled in; NetConfigError names the bad field."""
    _require(isinstance(cfg, dict), f"a net config is a JSON object; got {type(cfg).__name__}")
    fmt = cfg.get("format", FORMAT)
    _require(fmt == FORMAT, f"net config format {fmt!r} is not supported (this version reads {FORMAT!r})")
    family = cfg.get("family")
    _require(family in FAMILIES, f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    allowed = _COMMON_KEYS | (_EMO_KEYS if family == "emo" else _TIMM_KEYS)
    unknown = sorted(set(cfg) - allowed)
    _require(not unknown, f"unknown field(s) for family {family!r}: {', '.join(unknown)}")
    out = {"format": FORMAT, **cfg}
    if family == "emo":
        for key in ("depths", "dims", "dim_head"):
            _positive_ints(cfg, key, 4)
        exp = cfg.get("exp")
        _require(isinstance(exp, (list, tuple)) and len(exp) == 4
                 and all(isinstance(e, (int, float)) and not isinstance(e, bool) and e > 0 for e in exp),
                 f"exp must be 4 positive numbers (one per stage); got {exp!r}")
        out.setdefault("kernels", [3, 3, 5, 5])
        _positive_ints(out, "kernels", 4)
        _require(all(k % 2 == 1 for k in out["kernels"]), f"kernels must be odd; got {out['kernels']}")
        out.setdefault("attn", [False, False, True, True])
        _require(isinstance(out["attn"], (list, tuple)) and len(out["attn"]) == 4
                 and all(isinstance(a, bool) for a in out["attn"]), f"attn must be 4 booleans; got {out['attn']!r}")
        out.setdefault("window", 7)
        _require(isinstance(out["window"], int) and not isinstance(out["window"], bool) and out["window"] > 0,
                 f"window must be a positive integer; got {out['window']!r}")
        for i, (dim, dh, a) in enumerate(zip(cfg["dims"], cfg["dim_head"], out["attn"])):
            _require(not a or dim % dh == 0, f"stage {i}: dims {dim} is not a multiple of dim_head {dh}")
        for key in ("depths", "dims", "exp", "dim_head", "kernels", "attn"):
            out[key] = list(out[key])
        return out
    arch = cfg.get("arch")
    _require(isinstance(arch, (list, tuple)) and arch and all(isinstance(s, (list, tuple)) and s for s in arch),
             f"arch must be a non-empty list of stages, each a non-empty list of block strings; got {arch!r}")
    for i, stage in enumerate(arch):
        for j, text in enumerate(stage):
            _check_block(i, j, text)
    for k, v in _TIMM_DEFAULTS[family].items():
        out.setdefault(k, v)
    for key in ("stem_size", "num_features"):
        v = out[key]
        _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{key} must be a positive integer; got {v!r}")
    _check_act(out["act"])
    _require(out["se_gate"] in ("sigmoid", "hard_sigmoid"), f"se_gate must be 'sigmoid' or 'hard_sigmoid'; got {out['se_gate']!r}")
    m = out["channel_multiplier"]
    _require(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0,
             f"channel_multiplier must be a positive number; got {m!r}")
    out["arch"] = [list(s) for s in arch]
    return out


def _build_timm(cfg: dict, num_classes: int, in_chans: int, drop_rate: float, drop_path_rate: float) -> nn.Module:
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    mnv3 = cfg["family"] == "mobilenetv3"
    # MobileNetV3's SE: hard-sigmoid gate, ReLU inside, reduced width rounded to 8 (timm's _gen_mobilenet_v3).
    se_kwargs = dict(gate_layer=cfg["se_gate"])
    if mnv3:
        se_kwargs.update(force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    cls = MobileNetV3 if mnv3 else EfficientNet
    kwargs = dict(
        block_args=decode_arch_def(cfg["arch"]), num_classes=num_classes, in_chans=in_chans,
        stem_size=cfg["stem_size"], fix_stem=cfg["fix_stem"], num_features=cfg["num_features"],
        round_chs_fn=partial(round_channels, multiplier=cfg["channel_multiplier"]),
        act_layer=get_act_layer(cfg["act"]), se_layer=partial(SqueezeExcite, **se_kwargs),
        drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if mnv3:
        kwargs["head_bias"] = cfg["head_bias"]
    return cls(**kwargs)


def build_from_config(cfg, num_classes: int | None = None, in_chans: int | None = None,
                      drop_rate: float = 0.0, drop_path_rate: float = 0.0, **kwargs) -> nn.Module:
    """Build the network a config (dict, or path to a .json file) describes.

    ``num_classes``/``in_chans`` default to the config's own (else 1000 and 3). The model
    carries the validated config as ``model.net_config``."""
    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    else:
        cfg = validate_config(cfg)
    num_classes = cfg.get("num_classes", 1000) if num_classes is None else num_classes
    in_chans = cfg.get("in_chans", 3) if in_chans is None else in_chans
    if cfg["family"] == "emo":
        from edgevision.models.emo import EMO

        arch = {k: cfg[k] for k in _EMO_KEYS}
        model = EMO(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                    drop_path_rate=drop_path_rate, **kwargs)
    else:
        if kwargs:
            raise TypeError(f"{cfg['family']} net configs got unexpected arguments: {sorted(kwargs)}")
        model = _build_timm(cfg, num_classes, in_chans, drop_rate, drop_path_rate)
        # What timm's registered models carry: where the first conv and the classifier are.
        model.pretrained_cfg = {"first_conv": "conv_stem", "classifier": "classifier"}
    model.net_config = cfg
    return model


def load_config(path) -> dict:
    """Read and validate a net config file (one-line errors for missing, unreadable or bad files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"net config {path} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NetConfigError(f"{path}: not a JSON net config ({e})") from None
    try:
        return validate_config(cfg)
    except NetConfigError as e:
        raise NetConfigError(f"{path}: {e}") from None


def save_config(cfg: dict, path) -> Path:
    """Validate and write ``cfg`` as JSON, atomically (a crash leaves the old file or none)."""
    from edgevision.io import atomic_write_text

    cfg = validate_config(cfg)
    path = Path(path)
    atomic_write_text(path, json.dumps(cfg, indent=1) + "\n")
    return path


def is_config_path(name) -> bool:
    """True when ``create_model`` was given a net config file rather than a registered name."""
    return str(name).endswith(".json")


# A generic registry entry: create_model("net.json") goes through it, so checkpoints,
# pretrained_cfg and input checks work for config-built networks as for any other.
@register_model("netconfig", name="net_config", hidden=True,
                notes="Network built from a JSON net config (edgevision-net/1): create_model('net.json').")
def _net_config(config=None, **kwargs):
    if config is None:
        raise ValueError("net_config needs config=dict or a path; or call create_model('file.json')")
    return build_from_config(config, **kwargs)


def register_config_dir(directory: Path) -> list[str]:
    """Register every ``*.json`` net config of ``directory`` under its ``name`` field."""
    names = []
    for path in sorted(Path(directory).glob("*.json")):
        cfg = load_config(path)
        name = cfg.get("name") or path.stem

        def builder(_cfg=cfg, **kwargs):
            return build_from_config(_cfg, **kwargs)

        # No paper and no published counts: where the network comes from is its paper line.
        register_model("netconfig", name=name, paper=cfg.get("notes") or f"net config {path.name}",
                       notes=f"net config edgevision/models/configs/{path.name}",
                       cfg={"num_classes": cfg.get("num_classes", 1000)})(builder)
        names.append(name)
    return names


register_config_dir(Path(__file__).with_name("configs"))
