"""`edgevision list` and `edgevision info NAME`: what is in the zoo, measured here."""

from __future__ import annotations

import argparse
import json

import torch

from edgevision.factory import create_model
from edgevision.profiling.counting import count_macs, count_params, module_summary
from edgevision.registry import list_models, model_info


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list models with params, MACs and paper top-1")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'emo*'")
    p.add_argument("--family", help="only this family (e.g. emo, edgevit, mobilenetv3)")
    p.add_argument("--size", type=int, default=224, help="input side for the MAC count (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="per-stage table (output shape, params, MACs) and metadata")
    p.add_argument("name", help="model name, e.g. mobilenetv3_large_100")
    p.add_argument("--size", type=str, default="224", help="input side, or HxW (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_info)


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '256x192' -> (256, 192)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"size must be N or HxW, e.g. 224 or 256x192; got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"size must be N or HxW with positive sides; got {text!r}")
    return parts[0], parts[1]


def _meta_model(name: str):
    # Built on the meta device: counting needs shapes only, so listing the zoo is instant.
    with torch.device("meta"):
        return create_model(name)


def zoo_rows(pattern: str = "*", family: str | None = None, size: int = 224) -> list[dict]:
    rows = []
    for name in list_models(pattern, family=family):
        info = model_info(name)
        model = _meta_model(name)
        rows.append(
            dict(
                name=name,
                family=info.family,
                params=count_params(model),
                macs=count_macs(model, (1, 3, size, size)),
                published_params=info.published_params,
                published_macs=info.published_macs,
                published_top1=info.published_top1,
            )
        )
    return rows


def _m(v) -> str:
    return "-" if v is None else f"{v / 1e6:,.2f}M"


def run_list(args) -> int:
    rows = zoo_rows(args.pattern, args.family, args.size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
        return 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"edgevision models (MACs = multiply-adds at {args.size}x{args.size})")
    for col in ("model", "family", "params", "MACs", "paper params", "paper MACs", "paper top-1"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right")
    for r in rows:
        top1 = "-" if r["published_top1"] is None else f"{r['published_top1']:.1f}"
        table.add_row(r["name"], r["family"], _m(r["params"]), _m(r["macs"]),
                      _m(r["published_params"]), _m(r["published_macs"]), top1)
    Console().print(table)
    return 0


def run_info(args) -> int:
    info = model_info(args.name)
    h, w = parse_size(args.size)
    model = _meta_model(args.name)
    model.check_input(torch.empty(1, model.in_chans, h, w, device="meta"))
    stages = module_summary(model, (1, model.in_chans, h, w))
    total = dict(params=count_params(model), macs=count_macs(model, (1, model.in_chans, h, w)))
    meta = info.as_dict()
    meta["feature_info"] = model.feature_info
    if args.json:
        print(json.dumps(dict(metadata=meta, input_size=[h, w], stages=stages, total=total), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{args.name} at {h}x{w}")
    for col in ("module", "type", "output shape", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for r in stages:
        shape = "x".join(map(str, r["output_shape"])) or "-"
        table.add_row(r["module"], r["type"], shape, f"{r['params']:,}", f"{r['macs']:,}")
    table.add_row("total", "", "", f"{total['params']:,}", f"{total['macs']:,}", style="bold")
    console.print(table)
    meta_table = Table(show_header=False, title="metadata")
    for key in ("family", "paper", "published_params", "published_macs", "published_top1",
                "published_source", "weights_url", "checkpoint_formats", "notes"):
        value = meta[key]
        if isinstance(value, list):
            value = ", ".join(value)
        meta_table.add_row(key, "-" if value in (None, "") else str(value))
    feats = ", ".join(f"{d['num_chs']}ch/{d['reduction']}x" for d in model.feature_info)
    meta_table.add_row("features_only", feats)
    console.print(meta_table)
    return 0
