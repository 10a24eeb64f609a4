"""The fast eager path against plain eager: eager vs channels_last vs ``edgevision.optimize``.

Models: EMO-1M, EdgeNeXt-XXS (timm's, the reference of EMO's speed claim), MobileNetV2-1.0
and EdgeViT-XXS; batch 1 (latency) and 32 (throughput); 1 thread; random weights (speed does
not depend on them). Variants, each the library's own code:

- ``eager``: the ``eager`` bench runtime (NCHW, PyTorch as is);
- ``channels_last``: the ``channels_last`` bench runtime (weights and input NHWC);
- ``optimized-noheap``: ``edgevision.optimize`` without the allocator setting (BN folded,
  channels_last, in-place activations and adds; the ``optimized`` runtime with
  ``EDGEVISION_KEEP_HEAP=0``);
- ``optimized``: the ``optimized`` bench runtime as the CLI runs it (also glibc keeping
  freed memory, :func:`edgevision.export.optimize.keep_heap`);
- ``eager-heap``: plain eager with the allocator setting only (how much of the gain is
  the allocator's);
- ``official-eager`` (EMO models, with ``--official-repo`` pointing to a local checkout of
  zhangzjn/EMO, which needs ``einops``): the official code's model, plain eager, in a fresh
  process as its users run it. With ``--official-repo`` every EMO worker builds the official
  model from the same seed and ours gets its weights through the checkpoint converter, so all
  variants run the same weights and the max |Δ| column compares the official outputs too.

The allocator setting is process-wide, so every variant runs in its own worker process
(spawned: a clean allocator each) holding its model and input; the parent times them with
:func:`edgevision.profiling.timing.measure_interleaved` (warm-up, then the timed runs split
into rounds that alternate between the variants, so load drifts hit all alike). One timed
call = one request to a worker and its reply after one forward: every variant pays the same
pipe round trip, measured with a no-op worker and reported (tens of microseconds). Each
worker also reports its minor page faults per forward (getrusage), the symptom the
allocator setting removes (counted over the timed runs, after the warm-up), and the max |Δ|
of its outputs vs the eager worker's.

    python benchmarks/bench_optimized.py                     # full: 5 rounds, 50 / 20 iterations
    python benchmarks/bench_optimized.py --rounds 1 --iters 2 --batch 1,2 --output /tmp/opt  # smoke

Writes benchmarks/results/optimized.{md,json} (``--output`` changes the stem), the command at
the top of both.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["emo_1m", "edgenext_xx_small", "mobilenetv2_100", "edgevit_xxs"]
DEFAULT_VARIANTS = ["eager", "channels_last", "optimized-noheap", "optimized", "eager-heap"]
VARIANTS = [*DEFAULT_VARIANTS, "official-eager"]
# variant -> (bench runtime, allocator setting)
_SPEC = {"eager": ("eager", False), "channels_last": ("channels_last", False),
         "optimized-noheap": ("optimized", False), "optimized": ("optimized", True),
         "eager-heap": ("eager", True), "official-eager": ("eager", False)}
CLAIM = ("emo_1m", "edgenext_xx_small")  # EMO paper: 2.16x EdgeNeXt-XXS's CPU throughput


def _build(name: str, official_repo: str | None = None, official: bool = False) -> torch.nn.Module:
    import timm

    import edgevision as ev

    torch.manual_seed(0)
    if official_repo and name.startswith("emo_"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_emo_edgenext import load_official

        theirs, ours = load_official(official_repo, name)
        return theirs if official else ours
    if official:
        raise ValueError(f"official-eager needs --official-repo and an EMO model; got {name}")
    if name in ev.list_models():
        return ev.create_model(name).eval()
    return timm.create_model(name, pretrained=False).eval()


def _input(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _worker(conn, name: str, variant: str, batch: int, size: int, threads: int, official_repo=None) -> None:
    """One variant in its own process: build, prepare, then one forward per "run" request."""
    try:
        runtime, heap = _SPEC[variant] if variant != "noop" else (None, False)
        os.environ["EDGEVISION_KEEP_HEAP"] = "1" if heap else "0"
        torch.set_num_threads(threads)
        if heap:
            from edgevision.export.optimize import keep_heap

            if not keep_heap():
                raise RuntimeError("the allocator setting does not apply here (not glibc?)")
        if variant == "noop":
            conn.send(("ready", None, {}))
            fn, x = (lambda x: None), None
        else:
            from edgevision.profiling.runtimes import get_runtime

            model = _build(name, official_repo, official=variant == "official-eager")
            x = _input(batch, size)
            fn = get_runtime(runtime, threads=threads).prepare(model, x)
            with torch.inference_mode():
                out = fn(x).float()
            info = dict(getattr(fn, "optimize_info", {}) or {})
            conn.send(("ready", out, info))
        runs, faults0 = 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            while True:
                msg = conn.recv()
                if msg == "run":
                    fn(x)
                    runs += 1
                    conn.send(None)
                elif msg == "reset":
                    runs, faults0 = 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    conn.send(None)
                elif msg == "stats":
                    ru = resource.getrusage(resource.RUSAGE_SELF)
                    conn.send(dict(runs=runs, minor_faults=ru.ru_minflt - faults0, max_rss_mb=ru.ru_maxrss / 1024))
                else:
                    break
    except Exception as e:  # report to the parent instead of hanging it
        conn.send(("error", f"{type(e).__name__}: {e}", {}))


class _Remote:
    """A worker process as a callable for measure_interleaved (it ignores the argument)."""

    def __init__(self, ctx, name, variant, batch, size, threads, official_repo=None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, name, variant, batch, size, threads, official_repo),
                                daemon=True)
        self.proc.start()

    def ready(self, timeout: float = 900):
        if not self.conn.poll(timeout):
            raise RuntimeError("worker did not start in time")
        return self.conn.recv()

    def __call__(self, _x):
        self.conn.send("run")
        self.conn.recv()

    def ask(self, msg):
        self.conn.send(msg)
        return self.conn.recv()

    def close(self):
        try:
            self.conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def _pipe_overhead_us(ctx, threads: int, n: int = 200) -> float:
    from edgevision.profiling.timing import measure_interleaved

    noop = _Remote(ctx, "", "noop", 1, 1, threads)
    try:
        noop.ready()
        stats = measure_interleaved({"noop": noop}, torch.empty(1), warmup=20, iters=n, rounds=1)
        return stats["noop"]["median_ms"] * 1e3
    finally:
        noop.close()


def run_group(ctx, name, batch, args) -> list[dict]:
    """All variants of one model at one batch size, timed interleaved."""
    from edgevision.profiling.timing import measure_interleaved

    variants = [v for v in args.variants if v != "official-eager" or name.startswith("emo_")]
    workers = {v: _Remote(ctx, name, v, batch, args.size, args.threads, args.official_repo) for v in variants}
    try:
        ready = {v: w.ready() for v, w in workers.items()}
        errors = {v: r[1] for v, r in ready.items() if r[0] == "error"}
        ok = {v: w for v, w in workers.items() if v not in errors}
        iters = args.iters if args.iters else (50 if batch == 1 else 20)
        stats = {}
        if ok:
            for w in ok.values():  # warm up here, so that page faults count the timed runs only
                for _ in range(args.warmup):
                    w(None)
                w.ask("reset")
            stats = measure_interleaved(ok, torch.empty(batch), warmup=0, iters=iters, rounds=args.rounds)
        ref = ready.get("eager", (None, None))[1]
        rows = []
        for v in variants:
            row = dict(model=name, batch=batch, variant=v)
            if v in errors:
                rows.append({**row, "error": errors[v]})
                continue
            extra = ok[v].ask("stats")
            out, info = ready[v][1], ready[v][2]
            row.update(stats[v])
            row.update(minor_faults_per_call=extra["minor_faults"] / max(extra["runs"], 1),
                       max_rss_mb=extra["max_rss_mb"],
                       max_abs_diff_vs_eager=None if ref is None else float((out - ref).abs().max()),
                       optimize_info={k: info[k] for k in ("bn_folded", "inplace_activations",
                                                           "inplace_binary_ops", "heap_kept") if k in info})
            rows.append(row)
        eager = next((r for r in rows if r["variant"] == "eager" and "median_ms" in r), None)
        official = next((r for r in rows if r["variant"] == "official-eager" and "median_ms" in r), None)
        for r in rows:
            if eager and "median_ms" in r:
                r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
            if official and "median_ms" in r:
                r["time_vs_official_eager"] = r["median_ms"] / official["median_ms"]
        return rows
    finally:
        for w in workers.values():
            w.close()


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def to_markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# edgevision.optimize vs eager (CPU)", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, load (1/5/15 min) at start "
        f"{m['load_average_1_5_15']}, at end {report['load_at_end']}; torch {m['versions']['torch']}, "
        f"timm {m['versions']['timm']}; {m['time']}.", "",
        f"Settings: {s['size']} px, {s['threads']} thread(s), warm-up {s['warmup']}, iterations "
        f"{s['iters'] or '50 at batch 1, 20 otherwise'} in {s['rounds']} interleaved rounds; random weights. "
        f"Each variant in its own process; a timed call includes a pipe round trip of "
        f"{report['pipe_overhead_us']:.0f} µs (median, same for every variant).", "",
        "| model | batch | variant | median ms | p10 ms | p90 ms | img/s | × eager | faults/call | "
        "peak RSS MB | max abs diff vs eager | BN folded / in-place act / in-place add,mul |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | failed: {r['error'][:80]} |"
                         + " |" * 8)
            continue
        oi = r.get("optimize_info") or {}
        ops = (f"{oi.get('bn_folded')} / {oi.get('inplace_activations')} / {oi.get('inplace_binary_ops')}"
               if oi else "")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
            f"{r['p90_ms']:.2f} | {r['throughput']:.1f} | {_fmt(r.get('speedup_vs_eager'), '.2f')} | "
            f"{r['minor_faults_per_call']:.0f} | {r['max_rss_mb']:.0f} | "
            f"{_fmt(r['max_abs_diff_vs_eager'], '.1e')} | {ops} |")
    vs = [r for r in report["results"] if r.get("time_vs_official_eager") is not None
          and r["variant"] != "official-eager"]
    if vs:
        lines += ["", "Time relative to the official EMO code's plain eager (same weights, each in a fresh "
                  "process; issue 12's target for `optimized`: <= 0.5 at batch 32):", "",
                  "| model | batch | variant | time / official eager |", "|---|---:|---|---:|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['variant']} | {r['time_vs_official_eager']:.2f} |" for r in vs]
    if report["claim"]:
        lines += ["", "EMO-1M / EdgeNeXt-XXS throughput (the EMO paper claims 2.16; the two models are "
                  "timed in consecutive groups, not interleaved with each other):", "",
                  "| batch | variant | EMO-1M img/s | EdgeNeXt-XXS img/s | ratio |", "|---:|---|---:|---:|---:|"]
        for c in report["claim"]:
            lines.append(f"| {c['batch']} | {c['variant']} | {c['emo_1m']:.1f} | {c['edgenext_xx_small']:.1f} | "
                         f"{c['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def _claim(rows: list[dict]) -> list[dict]:
    out = []
    by = {(r["model"], r["batch"], r["variant"]): r for r in rows if "throughput" in r}
    for (model, batch, variant), r in by.items():
        other = by.get((CLAIM[1], batch, variant))
        if model == CLAIM[0] and other:
            out.append(dict(batch=batch, variant=variant, emo_1m=r["throughput"],
                            edgenext_xx_small=other["throughput"], ratio=r["throughput"] / other["throughput"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated from {','.join(VARIANTS)}")
    p.add_argument("--official-repo", default=None,
                   help="a local checkout of zhangzjn/EMO: adds official-eager for the EMO models (needs einops)")
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=0, help="timed runs per variant (default 50 at batch 1, 20 else)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", default=str(RESULTS / "optimized"), help="output stem (.md and .json are added)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    if "eager" not in args.variants:
        args.variants.insert(0, "eager")  # the baseline of every ratio
    if args.official_repo and "official-eager" not in args.variants:
        args.variants.append("official-eager")
    if "official-eager" in args.variants and not args.official_repo:
        p.error("official-eager needs --official-repo (a local checkout of zhangzjn/EMO)")
    batches = [int(b) for b in args.batch.split(",") if b]

    from edgevision.jsonout import to_json
    from edgevision.profiling.timing import machine_info

    command = shlex.join(["python", "benchmarks/bench_optimized.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    ctx = mp.get_context("spawn")
    overhead = _pipe_overhead_us(ctx, args.threads)
    rows = []
    for batch in batches:
        for name in args.models:
            start = time.time()
            group = run_group(ctx, name, batch, args)
            rows += group
            best = max((r for r in group if "throughput" in r), key=lambda r: r["throughput"], default=None)
            print(f"{name} batch {batch}: " + ", ".join(
                f"{r['variant']} {r['median_ms']:.1f} ms" if "median_ms" in r else f"{r['variant']} FAILED"
                for r in group) + (f" (best {best['variant']}; {time.time() - start:.0f} s)" if best else ""),
                flush=True)
    report = dict(command=command, machine=machine, load_at_end=[round(v, 2) for v in os.getloadavg()],
                  settings=dict(size=args.size, threads=args.threads, warmup=args.warmup, iters=args.iters,
                                rounds=args.rounds, batches=batches, models=args.models, variants=args.variants),
                  pipe_overhead_us=overhead, results=rows, claim=_claim(rows))
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(to_json(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(report))
    print(f"Results: {stem.with_suffix('.md')}, {stem.with_suffix('.json')}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
