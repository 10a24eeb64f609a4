"""`edgevision latency build|predict`: per-device latency tables and predictions from them."""

from __future__ import annotations

import sys
import warnings

from edgevision.cli._args import float_range, int_list, positive_int


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    from edgevision.latency.measure import RUNTIMES

    p = sub.add_parser("latency", help="latency tables of blocks on this machine, and predictions from them",
                       description="Build a latency table (every distinct block of the given networks, "
                       "timed alone on this machine and runtime) and predict networks' latency from it.")
    sp = p.add_subparsers(dest="latency_command", metavar="ACTION")
    b = sp.add_parser("build", help="time every distinct block of models/configs into a table (resumable)")
    b.add_argument("--runtime", default="eager", help=f"one of {', '.join(RUNTIMES)} (default eager); other "
                   "edgevision runtimes work for single-input blocks")
    b.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (default 1)")
    b.add_argument("--sizes", type=int_list(8, 4096), default="224", help="comma-separated input sides (default 224)")
    b.add_argument("--models", default=None,
                   help="comma-separated registry names and/or net config .json files (default: every registry model)")
    b.add_argument("--no-networks", action="store_true",
                   help="time blocks only (by default each whole network is timed beside its blocks, "
                   "which the predictor needs to fit the per-network overhead)")
    b.add_argument("--target-s", type=float_range(0.001, 10.0), default=0.15,
                   help="timing budget per block in seconds (default 0.15)")
    b.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="cpu: the thread's CPU time (default with 1 thread: robust to other jobs); wall: elapsed")
    b.add_argument("-o", "--output", required=True, help="table file (JSON); an existing one is resumed")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=run)
    q = sp.add_parser("predict", help="predict a model's latency from a table (per stage; --measure to compare)")
    q.add_argument("model", help="registry name or net config .json")
    q.add_argument("--table", required=True, help="table from `edgevision latency build`")
    q.add_argument("--size", type=int_list(8, 4096), default=None,
                   help="input side (default: the table's first size, else 224)")
    q.add_argument("--measure", action="store_true",
                   help="also time the blocks and the whole network now, on the table's runtime and threads")
    q.set_defaults(func=run)
    p.set_defaults(func=run, latency_parser=p)


def run(args) -> int:
    cmd = getattr(args, "latency_command", None)
    if cmd == "build":
        return _build(args)
    if cmd == "predict":
        return _predict(args)
    args.latency_parser.print_help()
    return 2


def _warn_line(w) -> None:
    print(f"edgevision latency: warning: {w.message}", file=sys.stderr)


def _build(args) -> int:
    from edgevision.latency.table import build_table
    from edgevision.registry import list_models

    sources = _csv(args.models) if args.models else list_models()
    if not sources:
        raise ValueError("--models is empty; give registry names or net config .json files")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = build_table(sources, args.runtime, args.output, threads=args.threads, sizes=args.sizes,
                            measure_networks=not args.no_networks, progress=not args.no_progress,
                            target_s=args.target_s, clock=args.clock,
                            log=lambda m: print(m, file=sys.stderr))
    for w in caught:
        if "latency table" in str(w.message):
            _warn_line(w)
    print(f"{args.output}: {len(table['entries'])} block entries, {len(table['networks'])} networks "
          f"({table['runtime']}, {table['threads']} thread(s), {table['machine']['cpu']})")
    return 0


def _predict(args) -> int:
    from edgevision.cli._console import console
    from edgevision.latency.predictor import Predictor
    from edgevision.latency.table import check_table, load_table, resolve_model

    table = load_table(args.table)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_table(table)
    for w in caught:
        _warn_line(w)
    if args.size and len(args.size) != 1:
        raise ValueError(f"--size takes one input side; got {args.size}")
    sizes = sorted({int(k.rsplit("@", 1)[1]) for k in table["networks"] if "@" in k})
    size = args.size[0] if args.size else (sizes[0] if sizes else 224)
    model = resolve_model(args.model).eval()
    from edgevision.latency.blocks import decompose

    units = decompose(model, size, features=False)
    pred = Predictor(table).predict_units(units)
    measured = _measure(table, model, units, size) if args.measure else None

    from rich.table import Table

    o = pred.overhead
    title = (f"{args.model} @ {size}px on {table['runtime']}, {table.get('threads')} thread(s): "
             f"predicted {pred.ms:.2f} ms" + (f", measured {measured['__net__']:.2f} ms" if measured else ""))
    t = Table(title=title)
    for h in ("stage", "units", "from table", "predicted ms", *(("measured ms", "error %") if measured else ())):
        t.add_column(h, justify="left" if h == "stage" else "right")
    stages: dict = {}
    for i, u in enumerate(pred.units):
        s = stages.setdefault(u.stage, dict(n=0, table=0, ms=0.0, meas=0.0))
        s["n"] += 1
        s["table"] += u.source == "table"
        s["ms"] += u.ms
        if measured:
            s["meas"] += measured[i]
    for name, s in stages.items():
        row = [name, str(s["n"]), f"{s['table']}/{s['n']}", f"{s['ms']:.3f}"]
        if measured:
            row += [f"{s['meas']:.3f}", f"{100 * (s['ms'] - s['meas']) / s['meas']:+.1f}"]
        t.add_row(*row)
    over = pred.ms - pred.unit_sum_ms
    t.add_row("network overhead", "", "", f"{over:+.3f}", *(("", "") if measured else ()))
    total = ["total (whole network)", str(len(pred.units)), f"{sum(u.source == 'table' for u in pred.units)}"
             f"/{len(pred.units)}", f"{pred.ms:.3f}"]
    if measured:
        m = measured["__net__"]
        total += [f"{m:.3f}", f"{100 * (pred.ms - m) / m:+.1f}"]
    t.add_row(*total)
    console().print(t)
    print(f"overhead model: {o.a:.3f} ms + {o.b:.4f} ms/unit + {o.s:.3f} x blocks "
          f"(fitted on {o.fitted_on} networks of the table)" +
          ("; stage rows are blocks timed alone" if measured else ""))
    return 0


def _measure(table: dict, model, units, size: int) -> dict:
    """Each unit alone and the whole network, interleaved, as the table was timed."""
    from edgevision.latency.measure import (
        default_clock,
        network_runner,
        time_interleaved,
        unit_runner,
    )
    from edgevision.profiling.timing import fixed_threads

    runtime, threads = table["runtime"], table.get("threads")
    settings = table.get("settings", {})
    with fixed_threads(threads):
        fns = {i: unit_runner(u, runtime, threads) for i, u in enumerate(units)}
        fns["__net__"] = network_runner(model, size, runtime, threads)
        stats = time_interleaved(fns, target_s=settings.get("target_s", 0.15),
                                 clock=settings.get("clock", default_clock(threads)))
    return {k: v["ms"] for k, v in stats.items()}
