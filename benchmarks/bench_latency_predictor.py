"""Validate the latency predictor (issue 15, item 3): predicted vs measured on unseen networks.

For each runtime:
1. build a table (edgevision.latency.build_table) from the blocks of every registry model
   (blocks only) and of a FITTING split of sampled networks (blocks + whole networks: the
   per-network overhead a + b*n + s*sum is fitted on these only);
2. predict and measure (whole network, thread CPU time, 1 thread) every registry model and a
   HELD-OUT split of sampled networks (other seed): held-out blocks missing from the table are
   predicted by the fitted per-type models, as a search would.
Writes benchmarks/results/latency_predictor.{md,json,png}; tables under
benchmarks/results/latency_tables/ (resumed when present; --fresh starts over).

    flock /tmp/timing.lock .venv/bin/python benchmarks/bench_latency_predictor.py
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def measure_networks(specs: dict, runtime: str, size: int, threads: int, clock: str, group: int = 6,
                     target_s: float = 0.3, log=print) -> dict:
    """{name: measured stats}: whole networks timed interleaved in small groups."""
    from edgevision.latency.measure import network_runner, time_interleaved
    from edgevision.latency.table import resolve_model

    out = {}
    names = list(specs)
    for i in range(0, len(names), group):
        chunk = names[i:i + group]
        fns = {n: network_runner(resolve_model(specs[n]).eval(), size, runtime, threads) for n in chunk}
        out.update(time_interleaved(fns, warmup=1, rounds=3, target_s=target_s, min_iters=3, max_iters=30,
                                    clock=clock))
        log(f"  measured {min(i + group, len(names))}/{len(names)} networks")
    return out


def summarize(rows: list[dict]) -> dict:
    err = np.array([r["err_pct"] for r in rows])
    return dict(n=len(rows), within10=float(np.mean(np.abs(err) <= 10)) if len(rows) else math.nan,
                rmse_pct=float(np.sqrt(np.mean(err ** 2))) if len(rows) else math.nan,
                max_abs_pct=float(np.max(np.abs(err))) if len(rows) else math.nan)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default="eager,onnxruntime")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fit", type=int, default=30, help="sampled networks in the fitting split")
    ap.add_argument("--heldout", type=int, default=100, help="sampled networks in the held-out split")
    ap.add_argument("--models", default="all", help="registry models (comma-separated) or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-s", type=float, default=0.05, help="timing budget per block in the table")
    ap.add_argument("--out", default=str(ROOT / "results" / "latency_predictor"))
    ap.add_argument("--fresh", action="store_true", help="rebuild the tables instead of resuming them")
    ap.add_argument("--rescore", action="store_true",
                    help="no timing: refit the overhead on the tables' fitting networks and recompute the "
                    "predictions of an existing --out .json (after a predictor change)")
    args = ap.parse_args(argv)
    if args.rescore:
        return rescore(Path(args.out), args.size)

    import torch

    import edgevision as ev
    from edgevision.latency import Predictor, build_table
    from edgevision.latency.measure import default_clock
    from edgevision.latency.sampling import sample_configs
    from edgevision.profiling.timing import fixed_threads, machine_info

    command = shlex.join([".venv/bin/python", "benchmarks/bench_latency_predictor.py", *sys.argv[1:]])
    threads, size = 1, args.size
    clock = default_clock(threads)
    zoo = ev.list_models() if args.models == "all" else [m for m in args.models.split(",") if m]
    fit_cfgs = sample_configs(args.fit, seed=1000 + args.seed, prefix="fit")
    held_cfgs = sample_configs(args.heldout, seed=2000 + args.seed, prefix="held")
    out = Path(args.out)
    tables_dir = out.parent / "latency_tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    start_machine = machine_info()
    t0 = time.time()
    report = {"command": command, "seed": args.seed, "size": size, "threads": threads, "clock": clock,
              "machine_start": start_machine, "runtimes": {}}

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    for runtime in [r for r in args.runtimes.split(",") if r]:
        path = tables_dir / f"{runtime}_{size}.json"
        if args.fresh and path.exists():
            path.unlink()
        log(f"{runtime}: table from {len(zoo)} registry models (blocks) + {len(fit_cfgs)} fitting networks")
        build_table(zoo, runtime, path, threads=threads, sizes=[size], measure_networks=False,
                    progress=False, target_s=args.target_s, clock=clock)
        table = build_table(fit_cfgs, runtime, path, threads=threads, sizes=[size], measure_networks=True,
                            progress=False, target_s=args.target_s, clock=clock)
        fit_names = [f"{c['name']}@{size}" for c in fit_cfgs]
        predictor = Predictor(table, networks=fit_names)
        o = predictor.overhead
        log(f"{runtime}: {len(table['entries'])} entries; overhead a={o.a:.3f} ms b={o.b:.4f} ms/unit "
            f"s={o.s:.3f} (fitted on {o.fitted_on} networks)")
        specs = {m: m for m in zoo} | {c["name"]: c for c in held_cfgs}
        with fixed_threads(threads):
            measured = measure_networks(specs, runtime, size, threads, clock, log=log)
        rows = []
        for name, spec in specs.items():
            p = predictor.predict(spec, size)
            meas = measured[name]["ms"]
            group = (ev.model_info(name).family if name in zoo
                     else "sampled-" + ("emo" if spec["family"] == "emo" else "mnasnet"))
            rows.append(dict(name=name, group=group, split="registry" if name in zoo else "held-out",
                             predicted_ms=p.ms, measured_ms=meas, unit_sum_ms=p.unit_sum_ms, n_units=len(p.units),
                             err_pct=100 * (p.ms - meas) / meas, from_table=p.from_table,
                             p10_ms=measured[name]["p10_ms"], p90_ms=measured[name]["p90_ms"]))
        groups = sorted({r["group"] for r in rows})
        report["runtimes"][runtime] = dict(
            table=str(path), entries=len(table["entries"]),
            overhead=dict(a=o.a, b=o.b, s=o.s, fitted_on=o.fitted_on, form=getattr(o, "form", "")),
            all=summarize(rows),
            registry=summarize([r for r in rows if r["split"] == "registry"]),
            heldout=summarize([r for r in rows if r["split"] == "held-out"]),
            by_group={g: summarize([r for r in rows if r["group"] == g]) for g in groups},
            rows=rows)
        s = report["runtimes"][runtime]["all"]
        log(f"{runtime}: {s['within10'] * 100:.1f}% within ±10%, RMSE {s['rmse_pct']:.1f}%")
        report["machine_end"] = machine_info()
        report["elapsed_s"] = time.time() - t0
        write_outputs(report, out)  # after each runtime, so a cut-short run still leaves results
    report["machine_end"] = machine_info()
    report["elapsed_s"] = time.time() - t0
    write_outputs(report, out)
    log(f"wrote {out}.md/.json/.png")
    del torch
    return 0


def rescore(out: Path, size: int) -> int:
    """Recompute predictions from stored block sums with the current overhead fit (no timing)."""
    from edgevision.latency import Predictor, load_table
    from edgevision.latency.blocks import decompose
    from edgevision.latency.sampling import sample_configs
    from edgevision.latency.table import resolve_model

    report = json.loads(out.with_suffix(".json").read_text())
    n_held = max(len([x for x in r["rows"] if x["split"] == "held-out"]) for r in report["runtimes"].values())
    held = {c["name"]: c for c in sample_configs(n_held, seed=2000 + report.get("seed", 0), prefix="held")}
    known = {x["name"]: x["n_units"] for r in report["runtimes"].values() for x in r["rows"] if "n_units" in x}
    for rt, r in report["runtimes"].items():
        table = load_table(r["table"])
        predictor = Predictor(table)  # the table's networks are the fitting split only
        o = predictor.overhead
        for row in r["rows"]:
            if "n_units" not in row and row["name"] in known:
                row["n_units"] = known[row["name"]]
            if "n_units" not in row:
                spec = row["name"] if row["split"] == "registry" else held[row["name"]]
                row["n_units"] = len(decompose(resolve_model(spec), size, features=False))
                known[row["name"]] = row["n_units"]
            row["predicted_ms"] = o(row["unit_sum_ms"], row["n_units"])
            row["err_pct"] = 100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
        rows = r["rows"]
        r["overhead"] = dict(a=o.a, b=o.b, s=o.s, fitted_on=o.fitted_on, form=o.form)
        r["all"] = summarize(rows)
        r["registry"] = summarize([x for x in rows if x["split"] == "registry"])
        r["heldout"] = summarize([x for x in rows if x["split"] == "held-out"])
        r["by_group"] = {g: summarize([x for x in rows if x["group"] == g]) for g in sorted({x["group"] for x in rows})}
        print(f"{rt}: overhead {o}; {r['all']['within10'] * 100:.1f}% within ±10%, RMSE {r['all']['rmse_pct']:.1f}%")
    report["rescored"] = True
    write_outputs(report, out)
    return 0


def write_outputs(report: dict, out: Path) -> None:
    from edgevision.io import atomic_write_text, save_figure

    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rts = list(report["runtimes"])
    fig, axes = plt.subplots(1, len(rts), figsize=(6 * len(rts), 5.5), squeeze=False)
    for ax, rt in zip(axes[0], rts):
        rows = report["runtimes"][rt]["rows"]
        for split, marker in (("registry", "o"), ("held-out", ".")):
            for fam in ("emo", "mnasnet"):
                sel = [r for r in rows if r["split"] == split and ("emo" in r["group"]) == (fam == "emo")]
                if not sel:
                    continue
                ax.scatter([r["measured_ms"] for r in sel], [r["predicted_ms"] for r in sel], marker=marker,
                           s=30 if marker == "o" else 40, alpha=0.7,
                           label=f"{split} ({'EMO-like' if fam == 'emo' else 'CNN / other'})")
        ms = [r["measured_ms"] for r in rows] + [r["predicted_ms"] for r in rows]
        lo, hi = min(ms) * 0.8, max(ms) * 1.25
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=1)
        ax.fill_between(xs, xs * 0.9, xs * 1.1, color="gray", alpha=0.2, label="±10%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        s = report["runtimes"][rt]["all"]
        ax.set_title(f"{rt}: {s['within10'] * 100:.0f}% within ±10%, RMSE {s['rmse_pct']:.1f}%")
        ax.set_xlabel("measured ms (1 thread, thread CPU time)")
        ax.set_ylabel("predicted ms")
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency predictor, {report['size']} px, batch 1")
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"), dpi=110)
    plt.close(fig)

    m0, m1 = report["machine_start"], report["machine_end"]
    lines = [f"Command: `flock /tmp/timing.lock {report['command']}`", ""]
    if report.get("rescored"):
        lines += ["Then (no timing: predictions recomputed from the stored block sums with the current overhead "
                  "fit): `.venv/bin/python benchmarks/bench_latency_predictor.py --rescore`", ""]
    lines += [
             "# Latency predictor: predicted vs measured", "",
             f"Machine: {m0['cpu']}, {m0['logical_cores']} logical cores; torch {m0['versions'].get('torch')}, "
             f"onnxruntime {m0['versions'].get('onnxruntime')}. Load average at start {m0['load_average_1_5_15']}, "
             f"at end {m1['load_average_1_5_15']} (shared machine: other helpers were training models). "
             f"Run took {report['elapsed_s'] / 60:.1f} min.", "",
             f"Setup: batch 1, {report['size']} px, {report['threads']} thread, times are the calling thread's "
             f"CPU time (`{report['clock']}` clock: the latency on an idle core, without preemption by other "
             "jobs), medians of interleaved rounds. Table = every block of the registry models + the blocks of a "
             "FITTING split of sampled networks; the per-network overhead (a + b·units + s·Σblocks) is fitted on "
             "the fitting split only. Evaluated on the registry zoo and a HELD-OUT split of sampled networks "
             "(different seed): never on what was fitted. Held-out blocks missing from the table are predicted "
             "by the per-block-type least-squares models (column 'from table' = share of units found in the table).",
             ""]
    for rt, r in report["runtimes"].items():
        o = r["overhead"]
        lines += [f"## {rt}", "",
                  f"Table: {r['entries']} entries ({r['table']}); overhead a = {o['a']:.3f} ms, b = {o['b']:.4f} ms/unit, "
                  f"s = {o['s']:.3f} (form {o.get('form', '?')}, chosen by leave-one-out on the {o['fitted_on']} fitting networks).", "",
                  "| set | networks | within ±10% | RMSE % | max |err| % |", "|---|---:|---:|---:|---:|"]
        for label, s in [("all", r["all"]), ("registry", r["registry"]), ("held-out sampled", r["heldout"])] + \
                [(f"family {g}", s) for g, s in r["by_group"].items()]:
            lines.append(f"| {label} | {s['n']} | {s['within10'] * 100:.1f}% | {s['rmse_pct']:.1f} | {s['max_abs_pct']:.1f} |")
        lines += ["", "<details><summary>per network</summary>", "",
                  "| network | group | measured ms | p10–p90 | predicted ms | error % | from table |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in sorted(r["rows"], key=lambda x: (x["split"] != "registry", x["name"])):
            lines.append(f"| {row['name']} | {row['group']} | {row['measured_ms']:.2f} | "
                         f"{row['p10_ms']:.2f}–{row['p90_ms']:.2f} | {row['predicted_ms']:.2f} | "
                         f"{row['err_pct']:+.1f} | {row['from_table'] * 100:.0f}% |")
        lines += ["", "</details>", ""]
    lines += [f"![predicted vs measured]({out.name}.png)", ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
