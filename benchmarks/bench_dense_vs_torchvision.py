"""Eager latency of our dense MobileNetV3-Large models vs torchvision's, side by side in one run.

    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_dense_vs_torchvision.py [--rounds 15]

Pairs (same weights: torchvision's state dict loaded into ours through the converter, so the
detection post-processing has the same work):
- ssdlite320_mobilenetv3_large_100 vs torchvision ssdlite320_mobilenet_v3_large: full forward
  (resize, normalise, backbone, heads, box decoding, NMS) on one 320x320 image, and the
  network alone (our export_forward vs torchvision's backbone + head);
- lraspp_mobilenetv3_large_100 / deeplabv3_mobilenetv3_large_100 vs torchvision's
  lraspp_mobilenet_v3_large / deeplabv3_mobilenet_v3_large (21 classes; deeplabv3 with aux head
  as torchvision's COCO-VOC model), model(x) on a 512x512 batch of 1 (where the segmentation
  models are registered).

Each pair also times ours after ``edgevision.optimize`` (what ``edgevision predict`` runs).

Protocol: eval + inference_mode, batch 1, fixed threads, warm-up, then ``rounds`` rounds; in
each round every model runs ``runs`` times back to back, the order rotating between rounds
(interleaved, so all see the same machine load). Reported: median ms of each, ratio ours /
torchvision (<= 1.0: ours is not slower). The machine is shared: other jobs may run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgevision as ev  # noqa: E402


def _ours_from(tv_model, name: str, **kw):
    """Our model with torchvision's weights (through checkpoint=); random weights if no converter."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tv.pth"
        torch.save(tv_model.state_dict(), path)
        try:
            return ev.create_model(name, checkpoint=str(path), **kw).eval(), "torchvision weights"
        except Exception as e:  # noqa: BLE001  (a converter missing: still a fair speed comparison)
            return ev.create_model(name, **kw).eval(), f"random weights ({type(e).__name__})"


def pairs():
    from torchvision.models import segmentation as tvseg
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    with torch.no_grad():  # scores above the threshold, so NMS has work (same in both)
        for conv in tv.head.classification_head.module_list:
            conv[1].bias.normal_(0, 2.0)
    ours, w = _ours_from(tv, "ssdlite320_mobilenetv3_large_100")
    img = [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0))]
    x = torch.randn(1, 3, 320, 320)
    opt = ev.optimize(ours, example=x)
    yield "ssdlite320 full forward (1 image, NMS)", w, (lambda: ours(img)), (lambda: tv(img)), (lambda: opt(img))
    yield ("ssdlite320 network (backbone + heads)", w, (lambda: ours.export_forward(x)),
           (lambda: tv.head(list(tv.backbone(x).values()))), (lambda: opt.export_forward(x)))
    seg = set(ev.list_models(task="segmentation"))
    xs = torch.randn(1, 3, 512, 512)
    for ours_name, tv_fn, kw in (("lraspp_mobilenetv3_large_100", tvseg.lraspp_mobilenet_v3_large, {}),
                                 ("deeplabv3_mobilenetv3_large_100", tvseg.deeplabv3_mobilenet_v3_large,
                                  dict(aux_loss=True))):
        if ours_name not in seg:
            print(f"skip {ours_name}: not registered", file=sys.stderr)
            continue
        tvm = tv_fn(weights=None, weights_backbone=None, num_classes=21, **kw).eval()
        o, w = _ours_from(tvm, ours_name, num_classes=21, **kw)
        oo = ev.optimize(o, example=xs)
        yield f"{ours_name} (512x512)", w, (lambda o=o: o(xs)), (lambda t=tvm: t(xs)), (lambda oo=oo: oo(xs))


def time_all(fns, warmup: int, rounds: int, runs: int) -> list[list[float]]:
    """ms per call of each of ``fns``, interleaved: every round runs each ``runs`` times, in an
    order rotated from round to round so each sees the same machine load."""
    times = [[] for _ in fns]
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        for r in range(rounds):
            for k in range(len(fns)):
                i = (k + r) % len(fns)
                for _ in range(runs):
                    t0 = time.perf_counter()
                    fns[i]()
                    times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def _p10_p90(t: list[float]) -> list[float]:
    return [sorted(t)[len(t) // 10], sorted(t)[9 * len(t) // 10]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="time only the pairs whose label contains this text")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "dense_vs_torchvision"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for label, weights, ours, theirs, optimized in pairs():
        if args.only not in label:
            continue
        ta, tb, tc = time_all([ours, theirs, optimized], args.warmup, args.rounds, args.runs)
        mo, mt, mc = statistics.median(ta), statistics.median(tb), statistics.median(tc)
        rows.append(dict(pair=label, weights=weights, ours_ms=mo, torchvision_ms=mt, ratio=mo / mt,
                         optimized_ms=mc, optimized_ratio=mc / mt, ours_p10_p90=_p10_p90(ta),
                         torchvision_p10_p90=_p10_p90(tb), optimized_p10_p90=_p10_p90(tc)))
        print(f"{label}: ours {mo:.2f} ms, torchvision {mt:.2f} ms, ratio {mo / mt:.3f}; "
              f"ours optimized {mc:.2f} ms, ratio {mc / mt:.3f}", flush=True)
    load_after = os.getloadavg()
    cmd = ("flock /tmp/timing.lock .venv/bin/python benchmarks/bench_dense_vs_torchvision.py "
           + " ".join(sys.argv[1:])).strip()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(command=cmd, threads=args.threads, rounds=args.rounds, runs=args.runs, warmup=args.warmup,
                torch=torch.__version__, load_before=load_before, load_after=load_after, results=rows)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    lines = [
        "# Dense models on MobileNetV3-Large: our eager latency vs torchvision's",
        "",
        f"Command: `{cmd}`",
        "",
        f"Eager, batch 1, {args.threads} threads, torch {torch.__version__}; {args.warmup} warm-up runs, then "
        f"{args.rounds} rounds x {args.runs} runs per model, the order rotating between rounds "
        "(interleaved). Median and p10-p90 in ms; ratio = ours / torchvision (target <= 1.0). \"ours "
        "optimized\" is the same model after `edgevision.optimize` (BN folded, channels_last, in-place "
        "activations), what `edgevision predict` runs by default; torchvision's model runs as it is. Shared 2-core "
        f"machine, other jobs may have been running: load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after.",
        "",
        "| pair | weights | ours ms (p10-p90) | torchvision ms (p10-p90) | ratio | ours optimized ms (p10-p90) "
        "| ratio optimized |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['weights']} | {r['ours_ms']:.2f} ({r['ours_p10_p90'][0]:.1f}-"
                     f"{r['ours_p10_p90'][1]:.1f}) | {r['torchvision_ms']:.2f} ({r['torchvision_p10_p90'][0]:.1f}-"
                     f"{r['torchvision_p10_p90'][1]:.1f}) | {r['ratio']:.3f} | {r['optimized_ms']:.2f} "
                     f"({r['optimized_p10_p90'][0]:.1f}-{r['optimized_p10_p90'][1]:.1f}) | {r['optimized_ratio']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
