"""`edgevision eval MODEL --data DIR --checkpoint F`: the task's metrics and per-class results
(top-1/top-5 and a confusion PNG; COCO mAP and per-class AP; mIoU and per-class IoU), saved as JSON."""

from __future__ import annotations

from edgevision.cli._args import int_range, non_negative_int, positive_int
from edgevision.jsonout import to_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate trained weights on an image folder")
    p.add_argument("model", help="model name the weights belong to")
    p.add_argument("--data", required=True, help="ImageFolder root (its val/ split when present)")
    p.add_argument("--checkpoint", required=True, help="weights, e.g. runs/train/MODEL/model.safetensors")
    p.add_argument("--output", help="folder for eval.json and confusion_matrix.png (default: beside the weights)")
    p.add_argument("--img-size", type=int_range(8, 4096), help="default: the size stored with the weights")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 64 (classification), 8 (dense)")
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the full JSON result")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.registry import model_info
    from edgevision.training import evaluate

    task = model_info(args.model).task
    batch = args.batch_size or (64 if task == "classification" else 8)
    res = evaluate(args.model, args.data, args.checkpoint, args.output, args.img_size,
                   batch, args.workers, args.device)
    if args.json:
        print(to_json(res, indent=1))
        return 0
    print(res["summary"])
    width = max(len(c) for c in res["per_class"])
    for c, v in res["per_class"].items():
        print(f"  {c:<{width}}  {v}")
    plot = res.get("confusion_png") or res.get("per_class_png")
    print(f"{'confusion matrix' if 'confusion_png' in res else 'per-class plot'}: {plot}; JSON: {res['json']}")
    return 0
