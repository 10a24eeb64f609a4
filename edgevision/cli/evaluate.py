"""`edgevision eval MODEL --data DIR --checkpoint F`: top-1/top-5, per-class accuracy, confusion PNG."""

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
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the full JSON result")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.training import evaluate

    res = evaluate(args.model, args.data, args.checkpoint, args.output, args.img_size,
                   args.batch_size, args.workers, args.device)
    if args.json:
        print(to_json(res, indent=1))
        return 0
    print(f"{args.model} on {res['data']}: {res['num_images']} images, top-1 {res['top1']:.2f}%, "
          f"top-5 {res['top5']:.2f}%")
    width = max(len(c) for c in res["classes"])
    for c, acc in res["per_class_acc"].items():
        print(f"  {c:<{width}}  {acc:6.2f}%")
    print(f"confusion matrix: {res['confusion_png']}; JSON: {res['json']}")
    return 0
