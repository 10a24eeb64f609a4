"""Faithfulness report: every model's params and MACs against the references and the papers,
and its max |Δlogits| against the implementations it claims to equal, in one run.

    python benchmarks/faithfulness.py [--models 'emo*'] [--size 224]
writes benchmarks/results/faithfulness.{json,md}.

- Counts: params exactly; MACs = FlopCounterMode FLOPs / 2 at the model's own input size
  (edgevision.profiling.count_macs), next to ``flops_torch / 2`` of
  ../shared/reference/model_stats.json (measured on the official/timm/torchvision code) and
  the published figures.
- Equivalence: the reference (timm / torchvision) is built with random weights, its norms
  randomized (edgevision.testing.randomize_norms: BN statistics and affines, LN affines,
  layer scales ~U(0.5, 1.5)) so eps and statistics matter; its state dict goes through our registered converter into a strict
  load, and eval-mode logits are compared on the same input. For the official EMO/EdgeViT
  code the stored parity fixtures are used instead (official weights, input and logits).
The tests assert the same properties; this script prints the figures for every model at once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn as nn

import edgevision as ev
from edgevision.checkpoints import load_state_dict_strict
from edgevision.profiling import count_macs, count_params
from edgevision.testing import randomize_norms

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
# ours -> (timm name, torchvision name); None where that library lacks the model.
TORCHVISION = {"mobilenetv2_100": "mobilenet_v2", "mobilenetv3_large_100": "mobilenet_v3_large",
               "mobilenetv3_small_100": "mobilenet_v3_small", "mnasnet_100": "mnasnet1_0"}
# ours -> model_stats.json key measured on the code we claim to follow.
STATS_KEY = {"mobilenetv2_100": "timm_mobilenetv2_100", "mobilenetv3_large_100": "timm_mobilenetv3_large_100",
             "mobilenetv3_small_100": "timm_mobilenetv3_small_100", "mnasnet_100": "timm_mnasnet_100"}


@torch.no_grad()
def max_diff(ours: nn.Module, ref: nn.Module, size: int) -> tuple[float, float]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    a, b = ours(x), ref(x)
    return (a - b).abs().max().item(), b.abs().max().item()


def against_library(name: str, ref: nn.Module, converter, size: int) -> dict:
    ref = randomize_norms(ref, side=size, layer_scales=True)
    ours = ev.create_model(name).eval()
    load_state_dict_strict(ours, converter(ref.state_dict()))
    diff, scale = max_diff(ours, ref, size)
    return dict(max_abs_diff=diff, logit_scale=scale, input=f"2x3x{size}x{size}, random weights")


def against_fixture(name: str) -> list[dict]:
    from safetensors.torch import load_file

    path = REFERENCE / "parity" / f"{name}.safetensors"
    if not path.is_file():
        return []
    model = ev.create_model(name, checkpoint=str(path)).eval()
    io = load_file(str(REFERENCE / "parity" / f"{name}_io.safetensors"))
    rows = []
    with torch.no_grad():
        for key in sorted(k for k in io if k.startswith("input")):
            suffix = key[len("input"):]
            diff = (model(io[key]) - io["logits" + suffix]).abs().max().item()
            rows.append(dict(max_abs_diff=diff, logit_scale=io["logits" + suffix].abs().max().item(),
                             input="x".join(map(str, io[key].shape)) + ", official fixture"))
    return rows


def report(name: str, stats: dict, size: int) -> dict:
    import timm
    import torchvision

    info = ev.model_info(name)
    with torch.device("meta"):
        model = ev.create_model(name)
    h, w = info.input_size[1:]
    key = STATS_KEY.get(name, name)
    # timm's layout: a converter for our own networks, the identity where ours is timm's class
    # (names edgevision registers into timm itself do not count: that would be ours vs ours)
    from timm.models._registry import _model_to_module

    has_timm = timm.models.is_model(name) and _model_to_module.get(name) != "timm_models"
    if key in stats:  # measured on the official / timm / torchvision code
        ref = dict(ref_key=key, ref_params=stats[key]["params"], ref_macs=stats[key]["flops_torch"] // 2)
    elif has_timm:  # no stored figure: count timm's model here with the same counter
        with torch.device("meta"):
            tm = timm.create_model(name)
        ref = dict(ref_key=f"timm {name}, counted here", ref_params=count_params(tm),
                   ref_macs=count_macs(tm, (1, 3, h, w)))
    else:
        ref = dict(ref_key=None, ref_params=None, ref_macs=None)
    row = dict(
        model=name, input=f"{h}x{w}", params=count_params(model), macs=count_macs(model, (1, 3, h, w)),
        **ref, paper_params=info.published_params, paper_macs=info.published_macs, equivalence={},
    )
    converters = info.converters
    if has_timm:
        row["equivalence"]["timm"] = against_library(name, timm.create_model(name),
                                                     converters.get("timm", dict), size)
    if name in TORCHVISION:
        tv = getattr(torchvision.models, TORCHVISION[name])()
        row["equivalence"]["torchvision"] = against_library(name, tv, converters["torchvision"], size)
    if name == "nasnet_a_mobile":  # the pretrainedmodels port: same keys, no converter
        import pretrainedmodels

        port = pretrainedmodels.nasnetamobile(num_classes=1000, pretrained=None)
        row["equivalence"]["pretrainedmodels"] = against_library(name, port, lambda sd: sd, size)
    for fixture in against_fixture(name):
        size_label = fixture["input"].split(",")[0].split("x", 2)[-1]  # e.g. 224x224
        row["equivalence"][f"official {size_label}"] = fixture
    return row


def _m(v) -> str:
    return "-" if v is None else f"{v / 1e6:,.2f}M"


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Faithfulness: counts and equivalence per model", "",
        f"Command: `{command}`  ",
        f"Versions: torch {torch.__version__}, timm {__import__('timm').__version__}, "
        f"torchvision {__import__('torchvision').__version__}.  ",
        "MACs = `FlopCounterMode` FLOPs / 2 (conv, linear, matmul, attention; no norms or "
        "activations) at the model's input size; 'reference' = `flops_torch / 2` and `params` of "
        "`../shared/reference/model_stats.json`, measured on the code named in its key.", "",
        "| model | input | params | ref params | paper params | MACs | ref MACs | paper MACs | reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {_n(r['params'])} | {_n(r['ref_params'])} | "
            f"{_m(r['paper_params'])} | {_n(r['macs'])} | {_n(r['ref_macs'])} | {_m(r['paper_macs'])} | "
            f"{r['ref_key'] or '-'} |"
        )
    lines += ["", "| model | against | input | max abs Δlogits | max abs logit |", "|---|---|---|---:|---:|"]
    for r in rows:
        for ref, e in r["equivalence"].items():
            lines.append(f"| {r['model']} | {ref} | {e['input']} | {e['max_abs_diff']:.1e} | "
                         f"{e['logit_scale']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="*", help="shell pattern over registered names")
    p.add_argument("--size", type=int, default=None,
                   help="input side for the library comparisons (default: the model's; timm's "
                   "EfficientFormer runs at 224 only)")
    p.add_argument("--output", default=str(RESULTS / "faithfulness"), help="path stem for .json/.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    stats_path = REFERENCE / "model_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    rows = []
    for name in ev.list_models(args.models):
        rows.append(report(name, stats, args.size or ev.model_info(name).input_size[-1]))
        print(name, {k: f"{v['max_abs_diff']:.1e}" for k, v in rows[-1]["equivalence"].items()}, flush=True)
    command = "python benchmarks/faithfulness.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(command=command.strip(), rows=rows), indent=2))
    out.with_suffix(".md").write_text(to_markdown(rows, command.strip()))
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
