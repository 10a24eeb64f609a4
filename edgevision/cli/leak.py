"""`edgevision leak`: architecture-leakage audit (trace, infer, audit)."""

from __future__ import annotations

import json
import sys

from edgevision.cli._args import int_range, positive_int

# edgevision.leak.trace.RUNTIMES, spelled out so `--help` does not import torch (a test checks they agree)
RUNTIMES = ("eager", "channels_last", "onnxruntime")


def add_parser(sub) -> None:
    p = sub.add_parser("leak", help="architecture-leakage audit: what a model's execution trace reveals",
                       description="DeepPeep-style audit: record the trace an observer with profiler access "
                       "sees, infer the architecture from it, and score how much was recovered.")
    lsub = p.add_subparsers(dest="leak_command", metavar="SUBCOMMAND")

    t = lsub.add_parser("trace", help="record the observer's trace of one inference (JSON)")
    t.add_argument("model", help="model name (see `edgevision list`) or a net-config .json")
    t.add_argument("--runtime", choices=RUNTIMES, default="eager")
    t.add_argument("--size", type=int_range(8, 4096), default=224, help="input side in pixels (default 224)")
    t.add_argument("--repeats", type=positive_int, default=7, help="profiled runs (median kept; default 7)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: CUDA kernel records (eager)")
    t.add_argument("-o", "--output", required=True, help="trace file to write (.json)")
    t.set_defaults(func=run_trace)

    i = lsub.add_parser("infer", help="recover the architecture from a trace; write it as a net config")
    i.add_argument("trace", help="trace file from `edgevision leak trace`")
    i.add_argument("--latency-model", default=None,
                   help="fitted latency model (.json; default: this machine's cached one, fitted if missing)")
    i.add_argument("--fit-nets", type=positive_int, default=40, help="random networks to fit on when fitting")
    i.add_argument("-o", "--output", default=None, help="net config to write (.json); create_model builds it")
    i.set_defaults(func=run_infer)

    a = lsub.add_parser("audit", help="trace -> infer -> score, with a report and a PNG of the segmented trace")
    a.add_argument("model", help="model name or net-config .json")
    a.add_argument("--runtime", choices=RUNTIMES, default="eager")
    a.add_argument("--size", type=int_range(8, 4096), default=224)
    a.add_argument("--repeats", type=positive_int, default=7)
    a.add_argument("--latency-model", default=None, help="fitted latency model (.json; default: cached/fitted)")
    a.add_argument("--fit-nets", type=positive_int, default=40)
    a.add_argument("--output", default="leak-audit", help="folder for report.txt, audit.json, trace.png, net.json")
    a.set_defaults(func=run_audit)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _progress(i, n):
    print(f"\rfitting the latency model on random networks: {i}/{n}", end="" if i < n else "\n", file=sys.stderr)


def run_trace(args) -> int:
    from edgevision.leak.trace import record_trace, save_trace

    tr = record_trace(args.model, size=args.size, runtime=args.runtime, repeats=args.repeats, device=args.device)
    save_trace(tr, args.output)
    print(f"{args.output}: {tr['n_ops']} ops, {sum(o['us'] for o in tr['ops']) / 1e3:.1f} ms "
          f"({tr['runtime']}, {tr['size']}px)")
    return 0


def run_infer(args) -> int:
    from edgevision.leak import infer_architecture, latency_model
    from edgevision.leak.report import block_line
    from edgevision.leak.trace import load_trace

    tr = load_trace(args.trace)
    lm = latency_model(tr["runtime"], tr["size"], path=args.latency_model, n_nets=args.fit_nets, progress=_progress)
    r = infer_architecture(tr, lm)
    print(f"family {r['family']}, stem c{r['stem']['c']}, head {r['head']['num_features']} features")
    for n, b in enumerate(r["blocks"]):
        print(f"{n:>3}  {block_line(b)}")
    if args.output:
        from edgevision.models.netconfig import save_config

        save_config(r["config"], args.output)
        print(f"net config written to {args.output} (edgevision.create_model({args.output!r}) builds it)")
    return 0


def run_audit(args) -> int:
    from pathlib import Path

    from edgevision.io import atomic_write_text
    from edgevision.leak import audit, latency_model
    from edgevision.leak.report import plot_trace, report_text
    from edgevision.leak.trace import save_trace
    from edgevision.models.netconfig import save_config

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a folder")
    lm = latency_model(args.runtime, args.size, path=args.latency_model, n_nets=args.fit_nets, progress=_progress)
    res = audit(args.model, size=args.size, runtime=args.runtime, lm=lm, repeats=args.repeats)
    out.mkdir(parents=True, exist_ok=True)
    text = report_text(res["model"], res)
    atomic_write_text(out / "report.txt", text + "\n")
    save_trace(res["trace"], out / "trace.json")
    atomic_write_text(out / "audit.json", json.dumps({k: res[k] for k in ("model", "result", "scores")}, indent=1))
    plot_trace(res, out / "trace.png", title=f"{res['model']}: trace segmented into recovered blocks")
    try:
        save_config(res["result"]["config"], out / "net.json")
    except ValueError as e:
        print(f"note: recovered config not buildable: {e}", file=sys.stderr)
    print(text)
    print(f"written: {out}/report.txt, audit.json, trace.json, trace.png, net.json")
    return 0


def run(args) -> int:  # the subcommand modules' common entry point
    return args.func(args)
