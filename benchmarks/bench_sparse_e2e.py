"""End-to-end: the sparse runtime vs the fastest dense torch path and ONNX Runtime (issue 14).

MobileNetV2 and MobileNetV1 (timm weights layout, random init: speed does not depend on the
values), pruned by magnitude to the given sparsity (first conv, depthwise and classifier
dense), batch 1 at 224 px, fixed threads. Side by side in one process, interleaved rounds:
  sparse     edgevision.sparse.compile (CSR 1x1 on numba or torch/MKL, autotuned numba
             depthwise, NCHW, BN folded)
  optimized  edgevision.optimize on the same (zeros in) weights: channels_last, BN folded
  fused      torch eager NCHW, BN folded
  ort        ONNX Runtime fp32 of the dense network (our export), same threads
glibc's heap is kept (edgevision.export.optimize.keep_heap: freed large blocks are reused
instead of unmapped) for the whole process, as `edgevision bench` does for both runtimes, so no
runtime pays page faults the others do not. Writes benchmarks/results/sparse_e2e.md.

    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_sparse_e2e.py
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgevision as ev
from edgevision.export.fuse import fuse_bn
from edgevision.profiling.runtimes import get_runtime
from edgevision.sparse import compile as sparse_compile
from edgevision.sparse import prune, strip_masks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilenetv2_100,mobilenetv1_100")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--output", default="benchmarks/results/sparse_e2e.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from edgevision.export.optimize import keep_heap

    heap = keep_heap()
    x = torch.randn(1, 3, args.size, args.size)
    load0 = os.getloadavg()
    table = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        m = ev.create_model(name).eval()
        prune(m, args.sparsity)
        dense = strip_masks(copy.deepcopy(m)).eval()
        fns = {"sparse": sparse_compile(m, x), "optimized": ev.optimize(dense, example=x),
               "fused": fuse_bn(copy.deepcopy(dense), x, inplace=False)}
        ort = get_runtime("onnxruntime", threads=args.threads)
        try:
            ort.check()
            fns["ort"] = ort.prepare(dense, x)
        except Exception as e:  # keep the torch figures if ORT is unavailable
            print(f"onnxruntime skipped: {e}", file=sys.stderr)
        with torch.inference_mode():
            ref = dense(x)
            for k, f in fns.items():
                err = (f(x) - ref).abs().max().item()
                assert err < 1e-3, (k, err)
            times = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, f in fns.items():
                    t = time.perf_counter()
                    for _ in range(args.reps):
                        f(x)
                    times[k].append((time.perf_counter() - t) / args.reps)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        info = fns["sparse"].sparse_info
        table.append((name, med, info))
        print(name, {k: round(v, 2) for k, v in med.items()}, {k: len(v) for k, v in info.items()})
    load1 = os.getloadavg()
    cmd = " ".join(["benchmarks/bench_sparse_e2e.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [f"Command: `flock /tmp/timing.lock .venv/bin/python {cmd}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}, "
             f"batch 1, {args.size} px, torch {torch.__version__}. Load average before/after: {load0[0]:.1f} / "
             f"{load1[0]:.1f} (shared machine: other jobs were running; the runtimes were timed in interleaved "
             f"rounds, median of {args.rounds} rounds x {args.reps} calls, so they shared the load). "
             f"glibc heap kept for all runtimes: {heap}.", "",
             f"Magnitude-pruned to {args.sparsity:.0%} (layer scope; first conv, depthwise convs and classifier "
             "dense). Latency in ms; speed-up = runtime / sparse.", "",
             "| model | sparse | optimized (channels_last, BN folded) | fused eager NCHW | ORT dense | "
             "sparse vs best torch | sparse vs ORT | sparse 1x1 (of which torch CSR) / depthwise (numba) / kept dense "
             "/ fused blocks | graph |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, med, info in table:
        best = min(med["optimized"], med["fused"])
        ort = med.get("ort", float("nan"))
        lines.append(f"| {name} | {med['sparse']:.2f} | {med['optimized']:.2f} | {med['fused']:.2f} | {ort:.2f} | "
                     f"{best / med['sparse']:.2f}x | {ort / med['sparse']:.2f}x | {len(info['sparse'])} "
                     f"({len(info['torch_csr'])}) / "
                     f"{len(info['depthwise'])} / {len(info['kept_dense'])} / {len(info['fused_blocks'])} | "
                     f"{info['graph']} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
