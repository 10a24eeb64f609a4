"""`edgevision list` and `edgevision info NAME`: what is in the zoo, measured here."""

from __future__ import annotations

import torch

from edgevision.cli._args import int_range, size_hw
from edgevision.cli._console import console
from edgevision.factory import create_model
from edgevision.jsonout import to_json
from edgevision.profiling.counting import count_macs, count_params, module_summary
from edgevision.registry import TASKS, list_models, model_info

MAX_SIDE = 8192  # largest side `info` accepts (as `export --size`)


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list models with params, MACs and paper top-1")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'emo*'")
    p.add_argument("--family", help="only this family (e.g. emo, edgevit, mobilenetv3)")
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="which models: classification (default), detection, segmentation, sequence")
    p.add_argument("--size", type=int_range(8, 4096), default=None,
                   help="input side for the MAC count (default: each model's own size, "
                   "the one its published MACs refer to: 224, or 256 for tiny-MOAT; 320 for "
                   "SSDLite, 800x1344 for RetinaNet)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="per-stage table (output shape, params, MACs) and metadata")
    p.add_argument("name", help="model name, e.g. mobilenetv3_large_100")
    p.add_argument("--size", type=size_hw(1, MAX_SIDE), default=None,
                   help=f"input side, or HxW, each up to {MAX_SIDE} (default 224; a detection or "
                   "segmentation model's own input size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_info)


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '256x192' -> (256, 192); ValueError outside 1..MAX_SIDE."""
    import argparse

    try:
        return size_hw(1, MAX_SIDE)(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


def _meta_model(name: str):
    # Built on the meta device: counting needs shapes only, so listing the zoo is instant.
    with torch.device("meta"):
        return create_model(name)


def zoo_rows(pattern: str = "*", family: str | None = None, size: int | None = None,
             task: str = "classification") -> list[dict]:
    """One row per model: measured params and MACs next to the published figures.

    MACs are counted at ``size`` when given, else at the model's own input size; dense models
    (detection, segmentation) on their ``export_forward`` (backbone, neck, heads; no NMS).
    """
    from edgevision.profiling.count_cache import cached_counts

    rows = []
    for name in list_models(pattern, family=family, task=task):
        info = model_info(name)
        if info.task == "sequence":  # a sensor window (channels, steps); --size sets the steps
            shape = [info.input_size[0], size or info.input_size[-1]]
            full = (1, *shape)
        else:
            shape = [size, size] if size else list(info.input_size[1:])
            full = (1, 3, *shape)

        def count(name=name, full=full):
            model = _meta_model(name)
            return count_params(model), count_macs(model, full, exact_shape=len(full) == 3)

        params, macs = cached_counts(name, full, count)
        rows.append(
            dict(
                name=name,
                family=info.family,
                task=info.task,
                input_size=shape,
                params=params,
                macs=macs,
                published_params=info.published_params,
                published_macs=info.published_macs,
                published_top1=info.published_top1,
            )
        )
    return rows


def _m(v) -> str:
    """Compact millions/billions: 5.48M, 551M, 1.91G."""
    if v is None:
        return "-"
    if v >= 1e9:
        return f"{v / 1e9:.2f}G"
    return f"{v / 1e6:.2f}M" if v < 1e8 else f"{v / 1e6:.0f}M"


def run_list(args) -> int:
    task = getattr(args, "task", "classification")
    rows = zoo_rows(args.pattern, args.family, args.size, task)
    if args.json:
        print(to_json(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else "")
              + (f" among {task} models" if task != "classification" else ""))
        return 1
    from rich.table import Table

    where = f"{args.size}x{args.size}" if args.size else "each model's input size"
    what = "models" if task == "classification" else f"{task} models"
    table = Table(title=f"edgevision {what} (MACs = multiply-adds at {where}"
                  + ("; dense models: backbone + neck + heads, no NMS)" if task in ("detection", "segmentation")
                     else ")"))
    for col in ("model", "family", "input", "params", "MACs", "paper params", "paper MACs",
                "paper top-1"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right",
                         no_wrap=col == "model")
    for r in rows:
        top1 = "-" if r["published_top1"] is None else f"{r['published_top1']:.1f}"
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input_size"])), _m(r["params"]),
                      _m(r["macs"]), _m(r["published_params"]), _m(r["published_macs"]), top1)
    console().print(table)
    return 0


def run_info(args) -> int:
    from edgevision.models.base import check_input_shape

    info = model_info(args.name)
    h, w = args.size or (tuple(info.input_size[1:]) if info.task != "classification" else (224, 224))
    model = _meta_model(args.name)
    check_input_shape(model, torch.empty(1, model.in_chans, h, w, device="meta"))
    stages = module_summary(model, (1, model.in_chans, h, w))
    total = dict(params=count_params(model), macs=count_macs(model, (1, model.in_chans, h, w)))
    meta = info.as_dict()
    meta["feature_info"] = getattr(model, "feature_info", None)  # task models (detectors, ...) have none
    if args.json:
        print(to_json(dict(metadata=meta, input_size=[h, w], stages=stages, total=total), indent=2))
        return 0
    from rich.table import Table

    out = console()
    table = Table(title=f"{args.name} at {h}x{w}")
    for col in ("module", "type", "output shape", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for r in stages:
        shape = "x".join(map(str, r["output_shape"])) or "-"
        table.add_row(r["module"], r["type"], shape, f"{r['params']:,}", f"{r['macs']:,}")
    table.add_row("total", "", "", f"{total['params']:,}", f"{total['macs']:,}", style="bold")
    out.print(table)
    meta_table = Table(show_header=False, title="metadata")
    for key in ("family", "paper", "published_params", "published_macs", "published_top1",
                "published_source", "weights_url", "checkpoint_formats", "notes"):
        value = meta[key]
        if isinstance(value, list):
            value = ", ".join(value)
        meta_table.add_row(key, "-" if value in (None, "") else str(value))
    if meta["feature_info"] is not None:
        feats = ", ".join(f"{d['num_chs']}ch/{d['reduction']}x" for d in model.feature_info)
        meta_table.add_row("features_only", feats)
    else:
        meta_table.add_row("task", f"{info.task} (MACs of export_forward: backbone + neck + heads, no NMS)")
    out.print(meta_table)
    return 0
