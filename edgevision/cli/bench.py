"""`edgevision bench`: latency, throughput and memory of models across runtimes."""

from __future__ import annotations

import shlex
import sys

from edgevision.cli._args import int_list, int_range, non_negative_int, positive_int

MAX_BATCH = 1024  # as `export --batch`: a larger one only stalls the machine


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    from edgevision.profiling.runtimes import RUNTIMES

    p = sub.add_parser("bench", help="time models on runtimes (eager, optimized, compile, onnxruntime, "
                       "openvino, int8, ...)",
                       description="Measure latency (median/p10/p90), throughput and peak memory of "
                       "models on each runtime; saves CSV, JSON, Markdown and a PNG plot.")
    p.add_argument("models", nargs="*", help="model names (see `edgevision list`)")
    p.add_argument("--all", action="store_true", help="every registered model")
    # Default: eager as the baseline users know, the optimized eager path (edgevision.optimize:
    # channels_last, BN folded, in-place; 3.4x eager on EMO-1M at batch 32, results/optimized.md)
    # and the tuned ONNX Runtime session.
    p.add_argument("--runtime", default="eager,optimized,onnxruntime",
                   help=f"comma-separated, from: {', '.join(RUNTIMES)} (default eager,optimized,onnxruntime)")
    p.add_argument("--batch", type=int_list(1, MAX_BATCH), default="1",
                   help=f"comma-separated batch sizes, each 1..{MAX_BATCH} (default 1)")
    p.add_argument("--size", type=int_range(8, 4096), default=224, help="input side in pixels (default 224)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="warm-up runs (default 10)")
    p.add_argument("--iters", type=positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="the timed runs are split into this many chunks, alternating between the "
                   "runtimes of a model so that load changes hit all alike (default 5)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for the compile runtime (default, reduce-overhead, max-autotune)")
    p.add_argument("--calibration", default=None,
                   help="image folder for int8 calibration/agreement (default: bundled sample photos)")
    p.add_argument("--checkpoint", default=None,
                   help="weights for the (single) model; default random weights (speed is the same)")
    p.add_argument("--output", default="bench-results", help="output folder (default bench-results/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    m = report["machine"]
    table = Table(title=f"edgevision bench — {s['size']}px, {s['threads']} thread(s), "
                  f"load {m['load_average_1_5_15']}")
    heads = ["model", "runtime", "batch", "params M", "MACs M", "median ms", "p10 ms", "p90 ms",
             "img/s", "× eager", "peak MB", "max|Δ|", "top-1 agree"]
    for h in heads:
        table.add_column(h, justify="left" if h in ("model", "runtime") else "right")
    for r in report["results"]:
        if r.get("error"):
            table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['params'] / 1e6:.2f}",
                          f"{r['macs'] / 1e6:.0f}", f"[red]failed: {r['error'][:60]}[/red]")
            continue

        def f(v, fmt):
            return "" if v is None else format(v, fmt)

        table.add_row(r["model"], r["runtime"], str(r["batch"]), f"{r['params'] / 1e6:.2f}",
                      f"{r['macs'] / 1e6:.0f}", f(r["median_ms"], ".2f"), f(r["p10_ms"], ".2f"),
                      f(r["p90_ms"], ".2f"), f(r["throughput"], ".1f"), f(r["speedup_vs_eager"], ".2f"),
                      f(r["peak_mem_mb"], ".1f"),
                      f(r["max_abs_diff"], ".1e"), f(r["top1_agreement"], ".2f"))
    # Wide enough for every column when piped to a file (rich assumes 80 columns then).
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def run(args) -> int:
    from edgevision.export._deps import MissingPackageError
    from edgevision.profiling.bench import run_bench
    from edgevision.registry import list_models

    if args.all and args.models:
        raise ValueError("give model names or --all, not both")
    models = list_models() if args.all else args.models
    if not models:
        raise ValueError("no models given; name some (see `edgevision list`) or use --all")
    if args.checkpoint and len(models) != 1:
        raise ValueError(f"--checkpoint applies to one model; got {len(models)} models")
    checkpoints = {models[0]: args.checkpoint} if args.checkpoint else None
    try:
        report = run_bench(
            models, _csv_list(args.runtime), args.batch, size=args.size,
            threads=args.threads, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
            output_dir=args.output,
            calibration=args.calibration, compile_mode=args.compile_mode,
            progress=not args.no_progress, checkpoints=checkpoints, command=shlex.join(["edgevision", *sys.argv[1:]]),
        )
    except MissingPackageError as e:
        print(f"edgevision bench: error: {e}", file=sys.stderr)
        return 2
    _print_table(report)
    files = report["files"]
    print(f"Results: {files['csv']}, {files['json']}, {files['md']}")
    print(f"Plot: {files['png']}")
    failed = [r for r in report["results"] if r.get("error")]
    return 1 if failed else 0
