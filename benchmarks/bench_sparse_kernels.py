"""Per-layer speed of the sparse 1x1 kernels vs the best dense torch op (issue 14).

For every distinct 1x1 convolution shape of MobileNetV2 at 224 px (batch 1), weights pruned
at random to each sparsity: numba CSR (edgevision.sparse.kernels.csr_spmm) against the
fastest of conv2d NCHW, conv2d channels_last and addmm (W @ X in CHW), all on the same
thread count, timed in interleaved rounds (median of rounds). Group patterns: block-CSR
4x1 / 8x1 / 1x4 against CSR at the same sparsity. Writes benchmarks/results/sparse_kernels.md.

    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_sparse_kernels.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgevision as ev
from edgevision.sparse import kernels as K


def mobilenetv2_1x1_shapes(size: int = 224):
    m = ev.create_model("mobilenetv2_100").eval()
    shapes = []

    def hook(mod, args, out):
        if mod.kernel_size == (1, 1) and mod.groups == 1 and out.shape[-1] > 1:
            s = (mod.out_channels, mod.in_channels, out.shape[-2] * out.shape[-1], out.shape[-2])
            if s not in shapes:
                shapes.append(s)

    hs = [mod.register_forward_hook(hook) for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    with torch.no_grad():
        m(torch.randn(1, 3, size, size))
    for h in hs:
        h.remove()
    return shapes


def timed(fns: dict, rounds: int, reps: int) -> dict:
    for f in fns.values():
        f()
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                f()
            res[k].append((time.perf_counter() - t) / reps)
    return {k: float(np.median(v)) for k, v in res.items()}


def dense_fns(w, b, x, side):
    o, i = w.shape
    wt, bt, xt = torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(x)
    w4 = wt.reshape(o, i, 1, 1)
    x4 = xt.reshape(1, i, side, -1)
    w4cl, x4cl = w4.contiguous(memory_format=torch.channels_last), x4.contiguous(memory_format=torch.channels_last)
    return {"conv_nchw": lambda: F.conv2d(x4, w4, bt), "conv_cl": lambda: F.conv2d(x4cl, w4cl, bt),
            "addmm": lambda: torch.addmm(bt[:, None], wt, xt)}


def geo(v):
    return float(np.exp(np.mean(np.log(v))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--group-sparsities", default="0.3,0.5,0.7")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--output", default="benchmarks/results/sparse_kernels.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    K.numba.set_num_threads(args.threads)
    csr_k = K.pick(K.csr_spmm, args.threads)
    rng = np.random.default_rng(0)
    shapes = mobilenetv2_1x1_shapes()
    load0 = os.getloadavg()
    rows, per_sparsity = [], {}
    with torch.inference_mode():
        for s in [float(v) for v in args.sparsities.split(",")]:
            for o, i, p, side in shapes:
                w = rng.standard_normal((o, i)).astype(np.float32)
                w *= rng.random((o, i)) >= s
                x = rng.standard_normal((i, p)).astype(np.float32)
                b = rng.standard_normal(o).astype(np.float32)
                y = np.empty((o, p), np.float32)
                csr = K.to_csr(w)
                fns = dense_fns(w, b, x, side)
                fns["csr"] = lambda: csr_k(*csr, b, x, y, 0)
                t = timed(fns, args.rounds, args.reps)
                np.testing.assert_allclose(y, w @ x + b[:, None], rtol=1e-3, atol=1e-3)
                best = min(t["conv_nchw"], t["conv_cl"], t["addmm"])
                rows.append((s, o, i, p, t["conv_nchw"], t["conv_cl"], t["addmm"], t["csr"], best / t["csr"]))
                per_sparsity.setdefault(s, []).append(best / t["csr"])
        group = {}
        for s in [float(v) for v in args.group_sparsities.split(",")]:
            for o, i, p, side in shapes:
                x = rng.standard_normal((i, p)).astype(np.float32)
                b = rng.standard_normal(o).astype(np.float32)
                y = np.empty((o, p), np.float32)
                w = rng.standard_normal((o, i)).astype(np.float32)
                wu = w * (rng.random((o, i)) >= s)
                csr = K.to_csr(wu)
                fns = dict(dense_fns(w, b, x, side))
                fns["csr"] = lambda: csr_k(*csr, b, x, y, 0)
                packs = {}
                for (r, c) in ((4, 1), (8, 1), (1, 4)):
                    if o % r or i % c:
                        continue
                    keep = rng.random((o // r, i // c)) >= s
                    wb = w * np.repeat(np.repeat(keep, r, 0), c, 1)
                    packs[f"{r}x{c}"] = K.to_bcsr(wb, r, c)
                    fns[f"{r}x{c}"] = (lambda kern=K.pick(K.BLOCK_KERNELS[(r, c)], args.threads), a=packs[f"{r}x{c}"]:
                                       kern(*a, b, x, y, 0))
                t = timed(fns, args.rounds, args.reps)
                best = min(t["conv_nchw"], t["conv_cl"], t["addmm"])
                for k in packs:
                    group.setdefault((s, k), []).append((t["csr"] / t[k], best / t[k]))
                group.setdefault((s, "unstructured"), []).append((1.0, best / t["csr"]))
    load1 = os.getloadavg()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Command: `flock /tmp/timing.lock .venv/bin/python {' '.join(['benchmarks/bench_sparse_kernels.py'] + (argv if argv is not None else sys.argv[1:]))}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}, "
             f"torch {torch.__version__}, numba {K.numba.__version__}. Load average before/after: "
             f"{load0[0]:.1f} / {load1[0]:.1f} (shared machine: other jobs were running; ratios come from "
             f"interleaved rounds, median of {args.rounds} rounds x {args.reps} calls).", "",
             "MobileNetV2 1x1 convolutions at 224 px, batch 1, random unstructured sparsity; speed-up = best dense "
             "torch op (min of conv NCHW, conv channels_last, addmm) / numba CSR.", "",
             "| sparsity | geo-mean speed-up (CSR vs best dense) | min | max |", "|---|---|---|---|"]
    for s, v in per_sparsity.items():
        lines.append(f"| {s:.0%} | {geo(v):.2f} | {min(v):.2f} | {max(v):.2f} |")
    lines += ["", "Group sparsity (block-CSR, same sparsity in blocks): speed-up over unstructured CSR at the "
              "same sparsity, and over the best dense op (geo-means over the shapes whose channels the block "
              "divides).", "", "| sparsity | pattern | vs unstructured CSR | vs best dense |", "|---|---|---|---|"]
    for (s, k), v in group.items():
        lines.append(f"| {s:.0%} | {k} | {geo([a for a, _ in v]):.2f} | {geo([d for _, d in v]):.2f} |")
    lines += ["", "Per layer (ms): ", "", "| sparsity | O | I | pixels | conv NCHW | conv CL | addmm | CSR | speed-up |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s, o, i, p, a, c, d, e, sp in rows:
        lines.append(f"| {s:.0%} | {o} | {i} | {p} | {a*1e3:.3f} | {c*1e3:.3f} | {d*1e3:.3f} | {e*1e3:.3f} | {sp:.2f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
