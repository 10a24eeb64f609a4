"""Dense training on this CPU: detection and segmentation on the generated scenes
(``edgevision sample-data --task ...``), each dense run within a 10-minute wall-clock budget.

Targets (issue 13): mAP@.5 >= 0.5 (detection) and mIoU >= 0.5 (segmentation), <= 10 minutes each
on a 2-core CPU. The engine is the one `edgevision train` runs.

Pipeline (transfer learning, as the papers do with ImageNet weights; no network here):

1. Pretrain the backbone classifier (default mobilenetv3_large_100) on the bundled Fashion-MNIST
   subset's *training* items, each composed onto a crop of the bundled photos exactly as the
   scene generator does (``scenes.make_scene`` with one item), cropped to ``--pretrain-size``
   around the item; 10% of the training items are held out as its val split. Timed and reported
   separately from the dense budget.
2. Fine-tune ``ssdlite_<backbone>`` and ``lraspp_<backbone>`` with ``--checkpoint`` = that
   classifier (the backbone is initialised from it, the necks and heads start fresh).

``--checkpoint PATH`` skips step 1 and starts the backbone from any classifier checkpoint of it,
e.g. the real ImageNet EfficientNet-Lite0 weights of the installed demo/test package
(``--backbone efficientnet_lite0 --checkpoint $(python -c "from edgevision.inference import
lite0_weights_path; print(lite0_weights_path())")``).

The figures are the final epoch's validation metrics on the generated val scenes, whose items are
Fashion-MNIST *test* items (never seen in pretraining or dense training). ``--no-pretrain`` trains
the dense models from scratch (the earlier setting). This is a benchmark (long; run with
``nice -n 10``), not a timed test; the machine is shared, so the load average is recorded.

    nice -n 10 .venv/bin/python benchmarks/bench_dense_train.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_item_crops(out: Path, size: int, per_item: int, holdout: float, seed: int = 0) -> Path:
    """ImageFolder (train/, val/) of single Fashion-MNIST training items on photo crops.

    Each image is a ``2 * size`` scene from :func:`scenes.make_scene` with one item (so item
    scale, tint and blending are those of the dense scenes), cropped to ``size`` around the item.
    The last ``holdout`` share of the items (per class, file order) is the val split.
    """
    from edgevision.training.data import (
        FASHION_MNIST_CLASSES,
        export_imagefolder,
        load_fashion_mnist,
    )
    from edgevision.training.scenes import _backgrounds, make_scene

    if (out / ".done").is_file():
        return out
    arrays, _ = load_fashion_mnist("vendored")
    x, y = arrays["x_train"], arrays["y_train"]
    rng = np.random.default_rng([seed, 7])
    val = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        val[idx[len(idx) - max(1, round(holdout * len(idx))):]] = True
    bgs, big = _backgrounds(), 2 * size
    for split, keep, reps in (("train", ~val, per_item), ("val", val, 1)):
        imgs, labels = [], []
        for i in np.flatnonzero(keep):
            for _ in range(reps):
                img, _, objs = make_scene(x[i:i + 1], y[i:i + 1], bgs, big, rng, max_items=1)
                ys, xs = np.nonzero(objs[0][1])
                lo_y, lo_x = max(0, ys.max() + 1 - size), max(0, xs.max() + 1 - size)
                top = int(rng.integers(lo_y, max(lo_y, min(ys.min(), big - size)) + 1))
                left = int(rng.integers(lo_x, max(lo_x, min(xs.min(), big - size)) + 1))
                imgs.append(img[top:top + size, left:left + size])
                labels.append(int(y[i]))
        export_imagefolder(np.stack(imgs), np.array(labels), out, FASHION_MNIST_CLASSES, split, overwrite=True)
    (out / ".done").write_text("ok\n")
    return out


def pretrain(args, work: Path) -> dict:
    from edgevision.training import train

    data = write_item_crops(work / f"items_{args.pretrain_size}_x{args.pretrain_per_item}", args.pretrain_size,
                            args.pretrain_per_item, 0.1)
    out = work / f"pretrain_{args.backbone}"
    cfg = dict(model=args.backbone, data=str(data), output=str(out), img_size=args.pretrain_size,
               epochs=args.pretrain_epochs, batch_size=64, lr=args.pretrain_lr, weight_decay=0.05,
               warmup_epochs=1, workers=0, threads=args.threads, progress=False, resume="none", hflip=0.5,
               crop_scale=(0.5, 1.0), color_jitter=0.2, label_smoothing=0.1, checkpoint=args.pretrain_from)
    cached = out / "bench_row.json"  # the same pretraining is reused by later benchmark runs
    if cached.is_file() and json.loads(cached.read_text()).get("config") == {k: str(v) for k, v in cfg.items()}:
        return {**json.loads(cached.read_text()), "reused": True}
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    s = train(cfg)
    sec = time.perf_counter() - t0
    if s.get("interrupted"):
        raise SystemExit("pretraining interrupted; rerun to start it afresh")
    hist = json.loads((out / "log.json").read_text())
    row = {"task": "pretrain (classification)", "model": args.backbone, "epochs": args.pretrain_epochs,
            "train_images": s["train_images"], "seconds": sec, "metric": "top1",
            "final": hist[-1].get("val_top1"), "best": max(h.get("val_top1", 0) for h in hist),
            "load_before": load0, "load_after": os.getloadavg()[0],
            "curve": [h.get("val_top1") for h in hist], "weights": str(out / "model.safetensors")}
    row["config"] = {k: str(v) for k, v in cfg.items()}
    cached.write_text(json.dumps(row))
    return row


def run_one(task: str, model: str, data: Path, out: Path, args, checkpoint: str | None) -> dict:
    from edgevision.training import train

    epochs = args.det_epochs if task == "detection" else args.seg_epochs
    lr = args.det_lr if task == "detection" else args.seg_lr
    cfg = dict(model=model, data=str(data), output=str(out / task), img_size=args.size, epochs=epochs,
               batch_size=args.batch, lr=lr, weight_decay=1e-4, warmup_epochs=1, workers=0,
               threads=args.threads, progress=False, resume="none", hflip=0.5, label_smoothing=0.0,
               checkpoint=checkpoint, channels_last=args.channels_last,
               **({"seg_loss": args.seg_loss, "output_stride": args.output_stride} if task == "segmentation" else {}))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    s = train(cfg)
    sec = time.perf_counter() - t0
    if s.get("interrupted"):
        raise SystemExit(f"{task}: interrupted; rerun to start it afresh")
    hist = json.loads((out / task / "log.json").read_text())
    key = "val_map50" if task == "detection" else "val_miou"
    return {"task": task, "model": model, "epochs": epochs, "lr": lr, "train_images": s["train_images"],
            "seconds": sec, "metric": key.replace("val_", ""), "final": hist[-1][key],
            "best": max(h[key] for h in hist), "target": 0.5, "passed": hist[-1][key] >= 0.5 and sec <= 600,
            "final_map": hist[-1].get("val_map"), "final_pixel_acc": hist[-1].get("val_pixel_acc"),
            "load_before": load0, "load_after": os.getloadavg()[0], "curve": [h[key] for h in hist]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenetv3_large_100", help="backbone of both dense models")
    p.add_argument("--det-head", default="ssdlite")
    p.add_argument("--seg-head", default="lraspp")
    p.add_argument("--tasks", default="detection,segmentation")
    p.add_argument("--size", type=int, default=128, help="scene side and training size (px)")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--det-epochs", type=int, default=12)
    p.add_argument("--seg-epochs", type=int, default=10)
    p.add_argument("--det-lr", type=float, default=3e-3)
    p.add_argument("--seg-lr", type=float, default=3e-3)
    p.add_argument("--seg-loss", default="ce", choices=["ce", "ce+dice"], help="segmentation loss (train --seg-loss)")
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32], help="segmentation (train --output-stride)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-pretrain", action="store_true", help="dense models from scratch")
    p.add_argument("--checkpoint", help="an existing backbone classifier checkpoint (skips pretraining)")
    p.add_argument("--pretrain-size", type=int, default=64)
    p.add_argument("--pretrain-from", default=None,
                   help="start the backbone pretraining from this classifier checkpoint (e.g. ImageNet "
                        "weights; its classifier is replaced) instead of from scratch")
    p.add_argument("--pretrain-per-item", type=int, default=2, help="composed images per training item")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=4e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true",
                   help="train the dense models in channels_last memory format (edgevision train --channels-last)")
    p.add_argument("--work", default="runs/bench_dense_train")
    p.add_argument("--name", default="dense_train")
    args = p.parse_args()
    from edgevision.training.scenes import write_scenes

    work = Path(args.work)
    data = work / f"scenes_{args.size}_{args.num_train}"
    if not (data / "val" / "annotations.json").is_file():
        write_scenes(data, args.num_train, args.num_val, args.size)
    rows, ckpt = [], args.checkpoint
    if not args.no_pretrain and not ckpt:
        rows.append(pretrain(args, work))
        ckpt = rows[-1]["weights"]
        print(json.dumps(rows[-1]), flush=True)
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        head = args.det_head if task == "detection" else args.seg_head
        rows.append(run_one(task, f"{head}_{args.backbone}", data, work, args, None if args.no_pretrain else ckpt))
        print(json.dumps(rows[-1]), flush=True)
    write_results(args, data, rows, ckpt)
    return 0


def write_results(args, data: Path, rows: list, ckpt: str | None) -> None:
    cmd = ".venv/bin/python benchmarks/bench_dense_train.py " + shlex.join(sys.argv[1:])
    meta = {"command": cmd, "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor()
            or platform.machine(), "cores": os.cpu_count(), "scenes": str(data), "size": args.size,
            "num_train": args.num_train, "num_val": args.num_val, "backbone_checkpoint": ckpt}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    init = "from scratch" if args.no_pretrain else f"backbone initialised from {ckpt}"
    lines = [f"Command: `{cmd}`", "",
             f"Dense training on the generated scenes ({args.num_train} train / {args.num_val} val, {args.size} px; "
             f"Fashion-MNIST items on the bundled photos), {init}; {args.threads} torch threads, "
             f"{os.cpu_count()} cores, torch {torch.__version__}. The machine is shared with other jobs: the "
             "1-minute load average before/after each run is listed (2.0 = both cores busy), so the seconds are "
             "upper bounds. The <= 600 s budget applies to each dense run; pretraining is timed separately.", "",
             "| stage | model | epochs | seconds | metric | final | best | target | met (<= 600 s) | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = f">= {r['target']}" if "target" in r else "-"
        met = ("yes" if r["passed"] else "no") if "passed" in r else "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['epochs']} | {r['seconds']:.0f} | {r['metric']} | "
                     f"{r['final']:.3f} | {r['best']:.3f} | {target} | {met} | "
                     f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    pre = next((r for r in rows if r["task"].startswith("pretrain")), None)
    if pre is not None:
        reused = " (its weights were reused from an earlier run with the same settings)" if pre.get("reused") else ""
        lines += ["", f"Pretraining{reused} plus each dense run, end to end: " + "; ".join(
            f"{r['task']} {pre['seconds']:.0f} + {r['seconds']:.0f} = {pre['seconds'] + r['seconds']:.0f} s"
            for r in rows if r is not pre) + "."]
    lines += ["", "Per-epoch validation metric:", ""]
    lines += [f"- {r['task']}: " + ", ".join(f"{v:.3f}" for v in r["curve"]) for r in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
