"""Dense training on this CPU: detection and segmentation trained from scratch on the generated
scenes (``edgevision sample-data --task ...``), each within a wall-clock budget.

Targets (issue 13): mAP@.5 >= 0.5 (detection) and mIoU >= 0.5 (segmentation), <= 10 minutes each
on a 2-core CPU. The engine is the one `edgevision train` runs; the numbers are the final
epoch's validation metrics on the 100 held-out scenes (Fashion-MNIST *test* items).
This is a benchmark (long; run with `nice -n 10`), not a timed test; the machine is shared, so
the load average is recorded with the figures.

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

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(task: str, model: str, data: Path, out: Path, args) -> dict:
    from edgevision.training import train

    epochs = args.det_epochs if task == "detection" else args.seg_epochs
    cfg = dict(model=model, data=str(data), output=str(out / task), img_size=args.size, epochs=epochs,
               batch_size=args.batch, lr=args.lr, weight_decay=1e-4, warmup_epochs=1, workers=0,
               threads=args.threads, progress=False, resume="none", hflip=0.5, label_smoothing=0.0)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    s = train(cfg)
    sec = time.perf_counter() - t0
    if s.get("interrupted"):
        raise SystemExit(f"{task}: interrupted; rerun to start it afresh")
    hist = json.loads((out / task / "log.json").read_text())
    key = "val_map50" if task == "detection" else "val_miou"
    return {"task": task, "model": model, "epochs": epochs, "train_images": s["train_images"],
            "seconds": sec, "metric": key.replace("val_", ""), "final": hist[-1][key],
            "best": max(h[key] for h in hist), "target": 0.5, "passed": hist[-1][key] >= 0.5 and sec <= 600,
            "final_map": hist[-1].get("val_map"), "final_pixel_acc": hist[-1].get("val_pixel_acc"),
            "load_before": load0, "load_after": os.getloadavg()[0], "curve": [h[key] for h in hist]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--det-model", default="ssdlite_mobilenetv3_large_100")
    p.add_argument("--seg-model", default="lraspp_mobilenetv3_large_100")
    p.add_argument("--tasks", default="detection,segmentation")
    p.add_argument("--size", type=int, default=128, help="scene side and training size (px)")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--det-epochs", type=int, default=12)
    p.add_argument("--seg-epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_dense_train")
    p.add_argument("--name", default="dense_train")
    args = p.parse_args()
    from edgevision.training.scenes import write_scenes

    work = Path(args.work)
    data = work / f"scenes_{args.size}_{args.num_train}"
    if not (data / "val" / "annotations.json").is_file():
        write_scenes(data, args.num_train, args.num_val, args.size)
    rows = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        model = args.det_model if task == "detection" else args.seg_model
        rows.append(run_one(task, model, data, work, args))
        print(json.dumps(rows[-1]), flush=True)
    cmd = "nice -n 10 .venv/bin/python benchmarks/bench_dense_train.py " + shlex.join(sys.argv[1:])
    meta = {"command": cmd, "torch": torch.__version__, "threads": args.threads, "cpu": platform.processor()
            or platform.machine(), "cores": os.cpu_count(), "scenes": str(data), "size": args.size,
            "num_train": args.num_train, "num_val": args.num_val}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Command: `{cmd}`", "",
             f"Dense training from scratch on the generated scenes ({args.num_train} train / {args.num_val} val, "
             f"{args.size} px; Fashion-MNIST items on the bundled photos), {args.threads} torch threads, "
             f"{os.cpu_count()} cores, torch {torch.__version__}. The machine is shared with other jobs: the "
             "1-minute load average before/after each run is listed (2.0 = both cores busy).", "",
             "| task | model | epochs | seconds | metric | final | best | target | met (<= 600 s) | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r['epochs']} | {r['seconds']:.0f} | {r['metric']} | "
                     f"{r['final']:.3f} | {r['best']:.3f} | >= {r['target']} | {'yes' if r['passed'] else 'no'} | "
                     f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    lines += ["", "Per-epoch validation metric:", ""]
    lines += [f"- {r['task']}: " + ", ".join(f"{v:.3f}" for v in r["curve"]) for r in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
