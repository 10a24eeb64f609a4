"""Latency-constrained search vs the hand-made networks, on the Fashion-MNIST subset (issue 15).

Protocol:
1. Time the baselines (mobilenetv3_small_075, mobilenetv3_large_100, emo_1m) on ONNX Runtime,
   1 thread, batch 1, 224 px. Two targets: T1 = 0.95 x small_075's latency (searched in the
   ``mnasnet`` space), T2 = 0.95 x min(large_100, emo_1m) (searched in the ``emo`` space).
2. Each search is ``edgevision.search.run.search`` (what ``edgevision search`` runs): aging
   evolution, hard MnasNet reward, proxy accuracy = a short training on 80% of the subset's
   training images, scored on the other 20% (the test split is never seen by the search).
3. The winners and the baselines are retrained from scratch with one identical budget (all
   training images, the same epochs, input size, optimizer and seed) and scored on the
   held-out test split (100 images per class); their latencies are measured side by side,
   interleaved in rounds, in one run.
4. A winner dominates a baseline when its test top-1 is higher and its latency is not higher.

Training runs unlocked (nice it); every timing holds /tmp/timing.lock (edgevision.search.timing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

BASELINES = ["mobilenetv3_small_075", "mobilenetv3_large_100", "emo_1m"]


def _model(spec):
    import edgevision as ev
    from edgevision.search.build import build_network

    if isinstance(spec, str):  # dropout off for every network alike (the registry adds 0.2 to timm CNNs)
        return ev.create_model(spec, num_classes=10, drop_rate=0.0)
    return build_network(spec, num_classes=10)


class CachedLatency:
    """A latency method that remembers configs already measured (fewer acquisitions of the lock)."""

    def __init__(self, measured):
        self.m, self.cache = measured, {}

    def describe(self):
        return self.m.describe()

    def many(self, cfgs):
        key = [json.dumps({k: v for k, v in c.items() if k != "name"}, sort_keys=True) for c in cfgs]
        todo = {k: c for k, c in zip(key, cfgs) if k not in self.cache}
        if todo:
            st = self.m.stats(todo)
            self.cache.update({k: st[k]["ms"] for k in todo})
        return [(self.cache[k], self.m.source) for k in key]

    def __call__(self, cfg):
        return self.many([cfg])[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=8, help="trained candidates per search")
    p.add_argument("--emo-budget", type=int, default=6, help="trained candidates of the emo search")
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--final-epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/edgevision-search-bench", help="search outputs (logs resume)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--render", action="store_true", help="only rewrite OUT/search.md from OUT/search.json")
    args = p.parse_args(argv)
    if args.render:
        report = json.loads((Path(args.out) / "search.json").read_text())
        _write_md(Path(args.out) / "search.md", report, argparse.Namespace(**report["settings"]))
        return 0
    cmd = "nice -n 10 python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_search.py", *sys.argv[1:]])

    import torch

    from edgevision.profiling.counting import count_macs, count_params
    from edgevision.profiling.timing import machine_info
    from edgevision.search.build import save_network_config
    from edgevision.search.evolution import read_log
    from edgevision.search.plot import plot_pareto
    from edgevision.search.proxy import Proxy, ProxyConfig
    from edgevision.search.run import search
    from edgevision.search.timing import MeasuredLatency

    torch.set_num_threads(1)
    t0 = time.time()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    load_before = machine_info()["load_average_1_5_15"]
    lat = MeasuredLatency("onnxruntime", size=224, threads=1)

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    from edgevision.search.spaces import get_space

    cached = CachedLatency(lat)
    smallest = {sp: get_space(sp).to_config(get_space(sp).smallest()) for sp in ("mnasnet", "emo")}
    base = lat.stats({**{n: n for n in BASELINES}, **smallest}, rounds=8, max_iters=60)
    for sp, cfg in smallest.items():  # the searches' target checks then need no timing of their own
        cached.cache[json.dumps({k: v for k, v in cfg.items() if k != "name"}, sort_keys=True)] = base.pop(sp)["ms"]
    log("baselines: " + ", ".join(f"{n} {s['ms']:.2f} ms" for n, s in base.items()))
    t1 = 0.95 * base["mobilenetv3_small_075"]["ms"]
    t2 = 0.95 * min(base["mobilenetv3_large_100"]["ms"], base["emo_1m"]["ms"])
    pc = dict(img_size=args.img_size, threads=1, seed=args.seed)
    searches = {}
    for key, space, target, budget in (("T1", "mnasnet", t1, args.budget), ("T2", "emo", t2, args.emo_budget)):
        log(f"search {key}: {space} space, target {target:.2f} ms, budget {budget}")
        s = search(space, round(target, 3), work / f"{key}_{space}", budget=budget, seed=args.seed, reward="hard",
                   population=args.population, sample_size=2, max_ratio=1.0, batch=args.batch, oversample=3,
                   proxy_config=ProxyConfig(epochs=args.search_epochs, **pc), latency_fn=cached,
                   # every candidate's latency here is already a measurement (CPU time, same protocol):
                   # the finalists keep it instead of waiting for the shared lock once more
                   verify_fn=lambda cfgs: {i: cached(c)[0] for i, c in cfgs.items()},
                   log=lambda m: log("  " + m))
        searches[key] = s
        log(f"  winner #{s['winner']['i']}: val top-1 {100 * s['winner']['acc']:.1f}%, "
            f"{s['winner']['measured_ms']:.2f} ms measured")

    # Retrain from scratch with one budget; score on the held-out test split.
    final = Proxy(split="final", config=ProxyConfig(epochs=args.final_epochs, **pc))
    nets = {n: n for n in BASELINES}
    nets.update({f"searched_{k}": s["config"] for k, s in searches.items()})
    rows = {}
    for name, spec in nets.items():
        cache = work / f"final_{name}_e{args.final_epochs}_s{args.seed}_{args.img_size}px.json"
        if cache.exists() and json.loads(cache.read_text()).get("spec") == spec:  # a rerun after a crash
            rows[name] = json.loads(cache.read_text())["row"]
            continue
        model = _model(spec)
        r = final(spec if isinstance(spec, dict) else {}, model=model)
        m224 = _model(spec).eval()
        rows[name] = dict(top1=r["acc"], train_s=r["seconds"], params=count_params(m224),
                          macs=count_macs(m224, (1, 3, 224, 224)))
        cache.write_text(json.dumps({"spec": spec, "row": rows[name]}))
        log(f"final {name}: test top-1 {100 * r['acc']:.1f}% ({r['seconds']:.0f} s)")
    st = lat.stats(nets, rounds=10, max_iters=80)
    for name in nets:
        rows[name].update(ms=st[name]["ms"], p10_ms=st[name]["p10_ms"], p90_ms=st[name]["p90_ms"])

    checks = []
    for key, rivals in (("T1", ["mobilenetv3_small_075", "mobilenetv3_large_100", "emo_1m"]),
                        ("T2", ["mobilenetv3_large_100", "emo_1m"])):
        w = rows[f"searched_{key}"]
        for b in rivals:
            checks.append(dict(target=key, winner=f"searched_{key}", baseline=b,
                               top1_gain=100 * (w["top1"] - rows[b]["top1"]), latency_ratio=w["ms"] / rows[b]["ms"],
                               dominates=w["top1"] > rows[b]["top1"] and w["ms"] <= rows[b]["ms"]))
    for k, s in searches.items():
        save_network_config(s["config"], out / f"search_best_{k}.json")
    machine = machine_info()
    report = dict(command=cmd, settings=vars(args), machine=machine, load_before=load_before,
                  baselines_first_timing={n: s["ms"] for n, s in base.items()},
                  searches={k: {kk: s[kk] for kk in ("space", "target_ms", "reward", "budget", "trained", "too_slow",
                                                     "winner", "finalists", "config")} for k, s in searches.items()},
                  final=rows, checks=checks, seconds=round(time.time() - t0, 1))
    (out / "search.json").write_text(json.dumps(report, indent=1) + "\n")
    _write_md(out / "search.md", report, args)

    # Pareto figure: the searches' candidates (val split) and the final points (test split).
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from edgevision.io import save_figure
    from edgevision.search.evolution import pareto_front

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"T1": "tab:blue", "T2": "tab:orange"}
    for key, s in searches.items():
        _, recs = read_log(work / f"{key}_{s['space']}" / "search_log.jsonl")
        pts = [r for r in recs if r.get("acc") is not None]
        axes[0].scatter([r["latency_ms"] for r in pts], [100 * r["acc"] for r in pts], s=16, alpha=0.6,
                        color=colors[key], label=f"{s['space']} space candidates")
        fr = pareto_front(pts)
        axes[0].plot([r["latency_ms"] for r in fr], [100 * r["acc"] for r in fr], color=colors[key], lw=1)
        axes[0].axvline(s["target_ms"], color=colors[key], ls="--", lw=1, label=f"target {key} {s['target_ms']:.2f} ms")
    axes[0].set_title("search (proxy: val split of the training images)", fontsize=9)
    for name, r in rows.items():
        mark = "*" if name.startswith("searched") else "s"
        axes[1].scatter([r["ms"]], [100 * r["top1"]], marker=mark, s=150 if mark == "*" else 50,
                        color="tab:red" if mark == "*" else "black")
        axes[1].annotate(name, (r["ms"], 100 * r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[1].set_title("retrained from scratch, same budget (held-out test split)", fontsize=9)
    for a in axes:
        a.set_xlabel("latency (ms, ONNX Runtime, 1 thread, 224 px, CPU time)")
        a.set_ylabel("top-1 (%)")
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "search_pareto.png", dpi=110)
    plt.close(fig)
    for key, s in searches.items():  # the per-search Pareto PNGs stay in the work folder
        _, recs = read_log(work / f"{key}_{s['space']}" / "search_log.jsonl")
        plot_pareto(recs, work / f"{key}_{s['space']}" / "pareto.png", target_ms=s["target_ms"])

    log(f"done in {time.time() - t0:.0f} s")
    return 0


def _write_md(path: Path, r: dict, args) -> None:
    L = ["# Latency-constrained search vs hand-made networks (Fashion-MNIST subset)", "",
         f"Command: `{r['command']}`", "",
         f"Machine: {r['machine']['cpu']}, {r['machine']['logical_cores']} logical cores, shared with other jobs "
         f"(load average before {r['load_before']}, after {r['machine']['load_average_1_5_15']}); "
         f"torch {r['machine']['versions']['torch']}, onnxruntime {r['machine']['versions']['onnxruntime']}. "
         f"Total {r['seconds'] / 60:.1f} min.", "",
         "Latency: ONNX Runtime (tuned session, tracer export), batch 1, 224x224, 1 thread, CPU time of the "
         "calling thread (the latency on an idle core; wall time on this loaded machine mostly measures waiting "
         "for a core), median of interleaved rounds, all final networks timed side by side in one run under "
         "/tmp/timing.lock. Training: from scratch, "
         f"{args.img_size}x{args.img_size} inputs (28 px images resized), AdamW lr 4e-3, batch 64, wd 0.02, warm-up + "
         "cosine, label smoothing 0.1, crop/flip, dropout 0 for every network, seed "
         f"{args.seed}, 1 thread.", "",
         "## Final table (retrained from scratch, same budget, held-out test split)", "",
         f"All networks: {args.final_epochs} epochs on the 2,000 training images; top-1 on the 1,000 test images "
         "(never used by the search). MACs at 224 px (multiply-adds).", "",
         "| network | test top-1 % | latency ms (p10-p90) | params M | MACs M |", "|---|---|---|---|---|"]
    for name, x in r["final"].items():
        L.append(f"| {name} | {100 * x['top1']:.1f} | {x['ms']:.2f} ({x['p10_ms']:.2f}-{x['p90_ms']:.2f}) | "
                 f"{x['params'] / 1e6:.2f} | {x['macs'] / 1e6:.0f} |")
    L += ["", "## Dominance (higher test top-1 at equal or lower measured latency)", "",
          "| target | searched | baseline | top-1 gain (points) | latency ratio | dominates |", "|---|---|---|---|---|---|"]
    for c in r["checks"]:
        L.append(f"| {c['target']} | {c['winner']} | {c['baseline']} | {c['top1_gain']:+.1f} | "
                 f"{c['latency_ratio']:.2f} | {'yes' if c['dominates'] else 'no'} |")
    L += ["", "## Searches", ""]
    for k, s in r["searches"].items():
        w = s["winner"]
        L.append(f"- {k}: `{s['space']}` space, target {s['target_ms']:.2f} ms, {s['reward']} reward, "
                 f"{s['trained']} trained candidates ({s['too_slow']} more measured over the target, not trained); "
                 f"winner #{w['i']}: val top-1 {100 * w['acc']:.1f}%, {w['measured_ms']:.2f} ms measured. "
                 f"Config: `benchmarks/results/search_best_{k}.json`.")
    L += ["", "![Pareto](search_pareto.png)", "",
          "Left: every trained candidate (proxy: "
          f"{args.search_epochs} epochs on 80% of the training images, top-1 on the other 20%). Right: the final "
          "retrained networks on the test split.", "",
          "Caveats: tiny search budgets (a few minutes of one shared core per search); one training seed per "
          "network, so differences of a point or two are within seed noise; accuracies are for a short "
          "from-scratch schedule at low resolution, not ImageNet; latency is for 224 px inputs (the deployment "
          "size the latency tables use), while training runs at low resolution for speed."]
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
