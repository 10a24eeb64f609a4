"""FusionActNet against its two single-network baselines on sensor windows (issue 17).

Trains ``resnet1d``, ``residual_mobilenet1d`` and ``fusionactnet`` with the same engine and
settings (``edgevision train`` under the hood) on the bundled UEA BasicMotions set (the
sktime wheel's copy; 40 train / 40 test windows, 6 channels x 100 steps), for several seeds,
and reports the test accuracy of each (the archive's own test split; the final epoch, no model
selection on the test set), FusionActNet's routing accuracy, and ONNX export parity of the
seed-0 weights. With ``--uci-har DIR`` / ``--motionsense DIR`` it runs the same protocol on
those published folders (UCI HAR: its own subject split; MotionSense: windows of 128 steps
every 64, test subjects 20-24); without them the result file says the data was absent.

    nice -n 10 .venv/bin/python benchmarks/bench_har.py                       # -> results/har.md
    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_har.py --latency # -> results/har_latency.md

``--latency``: batch-1 latency of one window (eager vs ONNX Runtime, interleaved rounds, fixed
threads, random weights); edgevision's ``bench`` builds image inputs only, hence this.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("resnet1d", "residual_mobilenet1d", "fusionactnet")


def train_one(model: str, data: str, seed: int, out: Path, args) -> dict:
    from edgevision.training import make_config, train

    cfg = make_config(model, data=data, output=str(out), epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, warmup_epochs=2, weight_decay=0.05, label_smoothing=0.1, seed=seed,
                      workers=0, threads=args.threads, progress=False, resume="none", deterministic=True)
    t0 = time.perf_counter()
    s = train(cfg)
    if s.get("interrupted"):
        raise SystemExit(f"{model}: training interrupted; rerun the benchmark")
    return {"acc": s["final_val_acc"], "seconds": time.perf_counter() - t0, "summary": s,
            "route_acc": s.get("last_route_acc")}


def run_dataset(name: str, data: str, args, work: Path) -> dict:
    from edgevision.checkpoints import load_checkpoint
    from edgevision.tasks.sequence.data import load_sequence_data
    from edgevision.tasks.sequence.export import export_sequence_onnx
    from edgevision.tasks.sequence.task import build_sequence_model

    d = load_sequence_data(data)
    res = {"dataset": d.name, "source": d.source, "train": len(d.train), "test": len(d.test), "window": d.window,
           "channels": len(d.channels), "classes": list(d.classes), "skipped_nan": d.skipped_nan,
           "static": [d.classes[i] for i in d.static_classes], "models": {}}
    for model in MODELS:
        runs = []
        for seed in args.seeds:
            out = work / name / model / f"seed{seed}"
            r = train_one(model, data, seed, out, args)
            log = json.loads((out / "log.json").read_text())[-1]
            runs.append({"seed": seed, "acc": r["acc"], "seconds": r["seconds"],
                         "route_acc": log.get("val_route_acc"), "expert_acc": log.get("val_expert_acc")})
            print(f"{name} {model} seed {seed}: test acc {r['acc']:.2f}% ({r['seconds']:.0f} s)", flush=True)
        m = build_sequence_model(model, len(d.classes), len(d.channels), d.window, d.static_classes)
        load_checkpoint(m, work / name / model / f"seed{args.seeds[0]}" / "model.safetensors")
        params = sum(p.numel() for p in m.parameters())
        onnx_delta = None
        if not args.no_onnx:
            onnx_delta = export_sequence_onnx(m, work / f"{name}_{model}.onnx", (1, len(d.channels), d.window))
        accs = [r["acc"] for r in runs]
        res["models"][model] = {"params": params, "runs": runs, "mean": statistics.mean(accs),
                                "std": statistics.pstdev(accs), "onnx_max_abs_diff": onnx_delta}
    return res


def latency(args) -> str:
    from edgevision.export.onnx import ort_session, run_session
    from edgevision.profiling.timing import (
        fixed_threads,
        machine_info,
        measure_interleaved,
    )
    from edgevision.tasks.sequence.export import export_sequence_onnx
    from edgevision.tasks.sequence.task import build_sequence_model

    lines = [f"threads {args.threads}; batch 1; window [1, 6, 100] (BasicMotions) and [1, 9, 128] (UCI HAR); "
             f"random weights; {args.iters} timed runs in 5 interleaved rounds after 20 warm-up runs; median "
             f"(p10-p90) ms. Load average before: {machine_info()['load_average_1_5_15']} (shared machine: other "
             f"jobs may have been running).", "",
             "| model | window | eager ms | ONNX Runtime ms | eager / ORT |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, fixed_threads(args.threads):
        for chans, steps, k, static in ((6, 100, 4, (0,)), (9, 128, 6, (3, 4, 5))):
            for model in MODELS:
                m = build_sequence_model(model, k, chans, steps, static).eval()
                path = Path(tmp) / f"{model}.onnx"
                export_sequence_onnx(m, path, (1, chans, steps))
                sess = ort_session(path, threads=args.threads)
                x = torch.randn(1, chans, steps)
                t = measure_interleaved({"eager": m, "ort": lambda v, s=sess: run_session(s, v)}, x,
                                        warmup=20, iters=args.iters, rounds=5)
                e, o = t["eager"], t["ort"]
                lines.append(f"| {model} | {chans}x{steps} | {e['median_ms']:.3f} ({e['p10_ms']:.3f}-{e['p90_ms']:.3f}) "
                             f"| {o['median_ms']:.3f} ({o['p10_ms']:.3f}-{o['p90_ms']:.3f}) "
                             f"| {e['median_ms'] / o['median_ms']:.2f}x |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def markdown(results: list[dict], absent: list[str], args, command: str) -> str:
    out = ["# FusionActNet vs single-network baselines (issue 17)", "", f"Command: `{command}`", "",
           f"Settings (same for every model): AdamW, lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs "
           f"(cosine, 2 warm-up), weight decay 0.05, label smoothing 0.1, light gain/jitter augmentation, "
           f"seeds {', '.join(map(str, args.seeds))}, deterministic, {args.threads} thread(s), CPU. Test accuracy = "
           f"the final epoch on the data set's own test split (nothing is selected on it). Machine shared with "
           f"other jobs (accuracy does not depend on it).", ""]
    for r in results:
        out += [f"## {r['dataset']} ({r['source']})", "",
                f"{r['train']} train / {r['test']} test windows of {r['channels']} channels x {r['window']} steps; "
                f"classes {', '.join(r['classes'])} (static: {', '.join(r['static'])}); NaN windows skipped: "
                f"{r['skipped_nan']}.", "",
                "| model | params | test acc % per seed | mean ± std | ONNX max abs diff (seed 0) |",
                "|---|---|---|---|---|"]
        for name, m in r["models"].items():
            per = ", ".join(f"{x['acc']:.1f}" for x in m["runs"])
            delta = "n/a" if m["onnx_max_abs_diff"] is None else f"{m['onnx_max_abs_diff']:.1e}"
            out.append(f"| {name} | {m['params']:,} | {per} | {m['mean']:.1f} ± {m['std']:.1f} | {delta} |")
        fa = r["models"]["fusionactnet"]
        best = max((n for n in r["models"] if n != "fusionactnet"), key=lambda n: r["models"][n]["mean"])
        route = ", ".join(f"{x['route_acc']:.1f}" for x in fa["runs"] if x["route_acc"] is not None)
        expert = ", ".join(f"{x['expert_acc']:.1f}" for x in fa["runs"] if x["expert_acc"] is not None)
        verdict = ">=" if fa["mean"] >= r["models"][best]["mean"] else "<"
        out += ["", f"FusionActNet mean {fa['mean']:.1f}% {verdict} best baseline ({best}) "
                f"{r['models'][best]['mean']:.1f}%. FusionActNet's guidance module routes static vs dynamic "
                f"correctly on {route}% of the test windows; its experts are right within the true superclass on "
                f"{expert}% (per seed).", ""]
    for a in absent:
        out += [f"## {a}", "", f"Data absent: no `--{a.lower().replace(' ', '-')} DIR` was given (no network here); "
                f"the protocol runs when the published folder is passed.", ""]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--uci-har", help="the published UCI HAR folder")
    p.add_argument("--motionsense", help="the MotionSense folder (with A_DeviceMotion_data/)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export parity check")
    p.add_argument("--latency", action="store_true", help="only the batch-1 latency table (run under flock)")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "har.md"))
    p.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_har.py " + " ".join(sys.argv[1:])
    if args.latency:
        text = f"# Batch-1 latency of one sensor window\n\nCommand: `flock /tmp/timing.lock {command}`\n\n" + latency(args)
        out = Path(args.out).with_name("har_latency.md") if args.out.endswith("har.md") else Path(args.out)
        out.write_text(text + "\n")
        print(f"wrote {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        results, absent = [run_dataset("basicmotions", "basicmotions", args, work)], []
        for label, arg in (("UCI HAR", args.uci_har), ("MotionSense", args.motionsense)):
            if arg:
                results.append(run_dataset(label.lower().replace(" ", "_"), arg, args, work))
            else:
                absent.append(label)
    out = Path(args.out)
    out.write_text(markdown(results, absent, args, "nice -n 10 " + command) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("EDGEVISION_KEEP_HEAP", "0")
    sys.exit(main())
