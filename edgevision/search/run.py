"""One search end to end: latency method, target check, proxy, evolution, finalists verified by
measurement, outputs (best config JSON, JSONL log, summary JSON, Pareto PNG) in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from edgevision.io import atomic_write_text
from edgevision.search.build import save_network_config
from edgevision.search.evolution import check_target, finalists, pick_winner, run_search
from edgevision.search.plot import plot_pareto
from edgevision.search.proxy import Proxy, ProxyConfig
from edgevision.search.spaces import get_space
from edgevision.search.timing import (
    MeasuredLatency,
    PredictedLatency,
)

LOG_NAME, BEST_NAME, SUMMARY_NAME, PARETO_NAME = "search_log.jsonl", "best.json", "summary.json", "pareto.png"


def _check_output(out: Path) -> Path:
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{p} exists and is not a folder; choose another output folder")
            break
    out.mkdir(parents=True, exist_ok=True)
    return out


def search(space: str, target_ms: float, output: str | Path, runtime: str = "onnxruntime",
           table: str | Path | None = None, data: str | Path | None = None, budget: int = 20, seed: int = 0,
           reward: str = "soft", population: int = 10, sample_size: int = 3, max_ratio: float = 1.5,
           batch: int = 1, oversample: int = 1,
           n_finalists: int = 3, latency_size: int = 224, threads: int = 1, proxy_config: ProxyConfig | None = None,
           accuracy_fn=None, latency_fn=None, verify_fn=None, log=print) -> dict:
    """Run (or resume) a search; returns the summary written to ``output/summary.json``.

    ``accuracy_fn``/``latency_fn``/``verify_fn`` replace the proxy, the latency method and the
    finalists' measurement (tests inject cheap fakes; ``verify_fn({i: config}) -> {i: ms}``).
    """
    sp = get_space(space)
    out = _check_output(Path(output))
    measured = None
    if latency_fn is None:
        if table is not None:
            latency_fn = PredictedLatency(table, runtime=runtime, size=latency_size, threads=threads)
        else:
            latency_fn = measured = MeasuredLatency(runtime, size=latency_size, threads=threads)
    smallest = check_target(sp, latency_fn, target_ms)
    proxy = None
    if accuracy_fn is None:
        proxy = Proxy(data, split="search", config=proxy_config or ProxyConfig(seed=seed))
        accuracy_fn = proxy
    info = {"latency": getattr(latency_fn, "describe", lambda: {"source": "custom"})(),
            "proxy": ({**vars(proxy.config), "data": proxy.source, **proxy.sizes} if proxy else {"source": "custom"})}

    def progress(rec):
        acc = "   -  " if rec["acc"] is None else f"{100 * rec['acc']:5.1f}%"
        log(f"[{rec['i']:3d}] {rec['latency_ms']:7.2f} ms  top-1 {acc}  {rec['status']}")

    records = run_search(sp, accuracy_fn, latency_fn, target_ms, budget, out / LOG_NAME, seed=seed, reward=reward,
                         population=population, sample_size=sample_size, max_ratio=max_ratio, batch=batch,
                         oversample=oversample, info=info,
                         on_candidate=progress)
    finals = finalists(records, n_finalists)
    if not finals:
        raise ValueError(f"no candidate within {max_ratio:g} x the {target_ms:g} ms target was found "
                         f"(smallest network: {smallest:.3g} ms); raise --latency-ms")
    if verify_fn is None:  # the finalists' latency is measured, side by side, whatever the search used
        m = measured or MeasuredLatency(runtime, size=latency_size, threads=threads)
        stats = m.stats({r["i"]: r["config"] for r in finals}, rounds=8, max_iters=80)
        verify_fn_result = {i: s["ms"] for i, s in stats.items()}
    else:
        verify_fn_result = verify_fn({r["i"]: r["config"] for r in finals})
    winner = pick_winner(finals, verify_fn_result, target_ms, reward)
    cfg = dict(winner["config"], name=f"{space}_search_{target_ms:g}ms_s{seed}")
    save_network_config(cfg, out / BEST_NAME)
    summary = {"space": space, "target_ms": target_ms, "reward": reward, "seed": seed, "budget": budget,
               "runtime": runtime, "latency_size": latency_size, "threads": threads,
               "smallest_ms": smallest, "trained": sum(r["status"] == "trained" for r in records),
               "too_slow": sum(r["status"] == "too_slow" for r in records),
               "winner": {k: winner[k] for k in ("i", "acc", "latency_ms", "latency_source", "measured_ms",
                                                 "reward", "measured_reward", "genotype")},
               "finalists": [{"i": r["i"], "acc": r["acc"], "latency_ms": r["latency_ms"],
                              "measured_ms": verify_fn_result[r["i"]]} for r in finals],
               "config": cfg, "files": {"best": BEST_NAME, "log": LOG_NAME, "pareto": PARETO_NAME}}
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
    plot_pareto(records, out / PARETO_NAME, target_ms=target_ms, best=winner,
                title=f"{space} space, target {target_ms:g} ms ({runtime}), seed {seed}",
                xlabel=f"latency (ms, {records[0]['latency_source']})")
    return summary
