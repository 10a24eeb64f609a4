"""`edgevision predict NAME IMAGE --checkpoint F`: top-k ImageNet classes with names; for a
detector, the image with boxes, labels and scores drawn; for a segmenter, a colour overlay."""

from __future__ import annotations

from edgevision.cli._args import float_range, int_range
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
    p.add_argument("--output", help="detection/segmentation: picture to write (default: IMAGE_STEM.pred.png "
                   "in the current folder)")
    p.add_argument("--threshold", type=float_range(0.0, 1.0), default=0.3, help="detection: lowest score drawn (default 0.3)")
    p.add_argument("--eager", action="store_true",
                   help="run the plain eager model (default: edgevision.optimize, same top-k, boxes or masks, faster; "
                   "EDGEVISION_KEEP_HEAP=0 turns its allocator setting off)")
    p.set_defaults(func=run)


def run(args) -> int:
    from edgevision.factory import create_model
    from edgevision.inference import predict
    from edgevision.registry import model_info

    if model_info(args.name).task in ("detection", "segmentation"):
        return run_dense(args, model_info(args.name).task)
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


def _dense_model(args):
    """(model in eval mode, class names or None, metadata) from our training outputs, else any
    weights create_model reads (e.g. torchvision's)."""
    from edgevision.factory import create_model
    from edgevision.tasks.base import load_trained

    if args.checkpoint:
        try:
            model, meta, _ = load_trained(args.name, args.checkpoint)
            return model, meta.get("classes"), meta
        except ValueError:  # weights without our metadata: the registry's default head
            pass
    model = create_model(args.name, checkpoint=args.checkpoint, pretrained=args.pretrained).eval()
    return model, model.pretrained_cfg.get("label_names"), {}


def run_dense(args, task: str) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from edgevision.images import load_rgb
    from edgevision.tasks.detection.draw import save_image

    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1]; got {args.threshold}")
    model, classes, meta = _dense_model(args)
    img = load_rgb(args.image)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
    if not args.eager:  # checked on the raw network outputs (NMS orders tied boxes freely)
        from edgevision.export.optimize import keep_heap_from_env, optimize

        model = optimize(model, inplace=True, keep_heap=keep_heap_from_env())
    out_path = Path(args.output) if args.output else Path(Path(args.image).stem + ".pred.png")
    with torch.inference_mode():
        if task == "detection":
            from edgevision.tasks.detection.draw import draw_detections

            det = model([x])[0]
            keep = det["scores"] >= args.threshold
            boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
            names = [classes[int(k) - 1] if classes and 1 <= int(k) <= len(classes) else str(int(k)) for k in labels]
            rows = [dict(label=n, score=float(s), box=[round(float(v), 1) for v in b])
                    for n, s, b in zip(names, scores, boxes)]
            picture = draw_detections(x, boxes, labels, scores, classes)
        else:
            from edgevision.tasks.segmentation.draw import draw_overlay
            from edgevision.training.runtime import model_norm

            mean, std = (meta["mean"], meta["std"]) if "mean" in meta else model_norm(model)
            xn = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
            out = model(xn[None])
            logits = out["out"] if isinstance(out, dict) else out
            pred = logits[0].argmax(0)
            k = logits.shape[1]
            frac = torch.bincount(pred.flatten(), minlength=k).float() / pred.numel()
            rows = [dict(label=classes[i] if classes and i < len(classes) else str(i), pixels=float(f))
                    for i, f in enumerate(frac.tolist()) if f > 0]
            picture = draw_overlay(x, pred, k)
    save_image(picture, out_path)
    if args.json:
        print(to_json({"image": str(args.image), "output": str(out_path), task: rows}, indent=2))
        return 0
    for r in rows:
        if task == "detection":
            print(f"  {r['label']:<16} {r['score']:.2f}  box {r['box']}")
        else:
            print(f"  {r['label']:<16} {100 * r['pixels']:5.1f}% of pixels")
    what = f"{len(rows)} detections (score >= {args.threshold})" if task == "detection" else "segmentation overlay"
    print(f"{args.name}: {what}; picture {out_path}")
    return 0
