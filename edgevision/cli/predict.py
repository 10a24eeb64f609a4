"""`edgevision predict NAME IMAGE --checkpoint F`: top-k ImageNet classes with names."""

from __future__ import annotations

from edgevision.cli._args import int_range
from edgevision.jsonout import to_json


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify one image with a model and its weights (top-k with names)")
    p.add_argument("name", help="model name, e.g. efficientnet_lite0")
    p.add_argument("image", help="image file (JPEG, PNG, ...)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint",
                         help="weights: ours, timm's, torchvision's or the family's official format")
    weights.add_argument("--pretrained", action="store_true",
                         help="the official weights (downloaded once into the cache)")
    p.add_argument("--topk", type=int_range(1, 1000), default=5, help="number of classes to print (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--eager", action="store_true",
                   help="run the plain eager model (default: edgevision.optimize, same top-k, faster; "
                   "EDGEVISION_KEEP_HEAP=0 turns its allocator setting off)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.factory import create_model
    from edgevision.inference import predict

    model = create_model(args.name, checkpoint=args.checkpoint, pretrained=args.pretrained)
    if not args.eager:
        from edgevision.export.optimize import keep_heap_from_env, optimize

        model = optimize(model, inplace=True, keep_heap=keep_heap_from_env())
    rows = predict(model, args.image, topk=args.topk)
    if args.json:
        print(to_json([dict(rank=r + 1, class_index=i, class_name=n, probability=p)
                          for r, (i, n, p) in enumerate(rows)], indent=2))
        return 0
    from rich.table import Table

    from edgevision.cli._console import console

    cfg = model.pretrained_cfg
    table = Table(title=f"{args.name} on {args.image} (weights: {model.checkpoint_format}; "
                        f"input {cfg['input_size'][-1]} px, mean {tuple(round(m, 3) for m in cfg['mean'])})")
    for col in ("rank", "class", "name", "probability"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for r, (i, n, p) in enumerate(rows):
        table.add_row(str(r + 1), str(i), n, f"{p:.1%}")
    console().print(table)
    return 0
