"""Aging (regularized) evolution under MnasNet's latency-aware reward, with a resumable log.

Real et al., "Regularized Evolution for Image Classifier Architecture Search" (AAAI 2019):
a population of P trained candidates; each cycle draws S of them at random, mutates the one
with the best reward (one gene changed) and trains the child, which joins the population
while the *oldest* member leaves. Ageing keeps the search from clinging to one lucky
early candidate, which matters with a noisy proxy accuracy.

Latency is cheap next to training, so it is evaluated first: a candidate slower than
``max_ratio x T`` is logged as ``too_slow`` and never trained (it does not count against the
budget, which counts trained candidates). Genotypes already seen are redrawn, so the budget
buys distinct networks.

Reproducible and resumable: every random draw comes from one ``random.Random(seed)`` and
depends only on earlier results, which the JSONL log stores. A rerun replays the log (the
same draws give the same genotypes, checked one by one) and continues where it stopped;
the log is rewritten atomically after each candidate, so an interruption loses at most the
candidate in flight. A larger budget with the same settings extends an earlier run.

``batch`` > 1 draws that many candidates at a time from the population as it stands (the
asynchronous-workers flavour of aging evolution) so their latencies are measured together,
under one acquisition of the shared timing lock instead of one per candidate; the initial
population is then drawn ``oversample`` x over (under a tight target most random networks are
too slow, and each round of draws would be another wait for the lock).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from pathlib import Path
from typing import Callable

from edgevision.io import atomic_write_text
from edgevision.search.reward import REWARDS, mnasnet_reward
from edgevision.search.spaces import Space

LOG_FORMAT = "edgevision-search-log/1"
MAX_REDRAWS = 50  # attempts at drawing an unseen genotype before giving up on novelty
# Settings a resumed log must share with the run that wrote it ("budget" may grow).
_RESUME_KEYS = ("space", "seed", "target_ms", "reward", "population", "sample_size", "max_ratio", "batch", "oversample")


def _check_number(name: str, v, lo: float, integer: bool = False) -> None:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= lo
    if not ok or (integer and not isinstance(v, int)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {lo}; got {v!r}")


def check_target(space: Space, latency_fn: Callable, target_ms: float) -> float:
    """The smallest network's latency; ValueError when ``target_ms`` is below it (nothing fits)."""
    lat, source = latency_fn(space.to_config(space.smallest(), name=f"{space.name}_smallest"))
    if target_ms < lat:
        raise ValueError(f"latency target {target_ms:g} ms is below the smallest network of the "
                         f"{space.name!r} space ({lat:.3g} ms, {source}); no candidate can meet it: "
                         f"raise --latency-ms to at least {lat:.3g}")
    return lat


def read_log(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, candidate records) of a search log; (None, []) when there is none yet."""
    if not path.exists():
        return None, []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    try:
        rows = [json.loads(ln) for ln in lines]
    except ValueError:
        raise ValueError(f"{path}: not a search log (a line is not JSON); choose another output folder") from None
    if not rows or rows[0].get("format") != LOG_FORMAT:
        raise ValueError(f"{path}: not an edgevision search log; choose another output folder")
    return rows[0], rows[1:]


def _write_log(path: Path, header: dict, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in [header, *records]))


def run_search(space: Space, accuracy_fn: Callable, latency_fn: Callable, target_ms: float, budget: int,
               log_path: str | Path, seed: int = 0, reward: str = "soft", population: int = 10,
               sample_size: int = 3, max_ratio: float = 1.5, batch: int = 1, oversample: int = 1,
               info: dict | None = None,
               on_candidate: Callable | None = None) -> list[dict]:
    """Run (or resume) aging evolution; returns the candidate records (the log without its header).

    accuracy_fn(net_config) -> {"acc": float, ...}; latency_fn(net_config) -> (ms, source).
    ``info``: extra settings recorded in the header (proxy, latency method), not checked on resume.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}; got {reward!r}")
    _check_number("target_ms", target_ms, 1e-9)
    _check_number("budget", budget, 1, integer=True)
    _check_number("population", population, 2, integer=True)
    _check_number("sample_size", sample_size, 1, integer=True)
    _check_number("seed", seed, 0, integer=True)
    _check_number("max_ratio", max_ratio, 1.0)
    _check_number("batch", batch, 1, integer=True)
    _check_number("oversample", oversample, 1, integer=True)
    sample_size = min(sample_size, population)
    log_path = Path(log_path)
    header = {"format": LOG_FORMAT, "space": space.name, "seed": seed, "target_ms": float(target_ms),
              "reward": reward, "population": population, "sample_size": sample_size,
              "max_ratio": float(max_ratio), "batch": batch, "oversample": oversample, "budget": budget, **(info or {})}
    old_header, old = read_log(log_path)
    if old_header is not None:
        diff = [k for k in _RESUME_KEYS if old_header.get(k) != header[k]]
        if diff:
            k = diff[0]
            raise ValueError(f"{log_path} was written by a search with other settings ({k}: {old_header.get(k)!r} "
                             f"there, {header[k]!r} now); rerun with the same settings to resume, or use "
                             "another output folder")
    records: list[dict] = []
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(make) -> dict | None:
        for _ in range(MAX_REDRAWS):
            g = make()
            if space.key(g) not in seen:
                return g
        return None  # the reachable space is exhausted

    def evaluate(genotype: dict, parent: int | None, latency) -> dict:
        i = len(records)
        key = space.key(genotype)
        if i < len(old):  # replay: the log holds this candidate's results
            rec = old[i]
            if rec.get("key") != key:
                raise ValueError(f"{log_path}: candidate {i} in the log differs from the one this seed draws; "
                                 "the log was not written by this search (or the space changed): use another "
                                 "output folder")
            records.append(rec)
            return rec
        cfg = space.to_config(genotype, name=f"{space.name}_s{seed}_{i:04d}")
        lat, source = latency
        rec = {"i": i, "key": key, "parent": parent, "genotype": genotype, "config": cfg,
               "latency_ms": float(lat), "latency_source": source}
        if lat > max_ratio * target_ms:
            rec.update(status="too_slow", acc=None, reward=None)
        else:
            result = accuracy_fn(cfg)
            acc = float(result["acc"])
            rec.update(status="trained", acc=acc, reward=mnasnet_reward(acc, float(lat), target_ms, reward),
                       seconds=result.get("seconds"))
        records.append(rec)
        _write_log(log_path, header, records)
        if on_candidate is not None:
            on_candidate(rec)
        return rec

    def latencies(drawn: list) -> list:
        """Latency of the drawn candidates the log lacks: in one call when the method offers many()."""
        start = len(records)
        new = [space.to_config(g, name=f"{space.name}_s{seed}_{start + j:04d}")
               for j, (g, _) in enumerate(drawn) if start + j >= len(old)]
        if not new:
            out = []
        elif hasattr(latency_fn, "many") and len(new) > 1:
            out = list(latency_fn.many(new))
        else:
            out = [latency_fn(c) for c in new]
        return [None] * (len(drawn) - len(new)) + out

    pop: deque = deque()
    trained = 0
    attempts, max_attempts = 0, 20 * budget + 100  # a target so tight that all draws are too slow
    exhausted = False
    while trained < budget and attempts < max_attempts and not exhausted:
        # A generation of `batch` candidates, drawn from the population as it stands (batch=1:
        # classic aging evolution), their latencies timed together, then trained one by one.
        drawn = []
        n_random = population - len(pop)
        if n_random > 0:  # initial population: random samples, `oversample` x as many (tight targets)
            n_draws = min(n_random, budget - trained) * oversample
        else:
            n_draws = min(batch, budget - trained)
        for _ in range(n_draws):
            attempts += 1
            if n_random > 0:
                g, parent = draw(lambda: space.sample(rng)), None
            else:
                contenders = rng.sample(list(pop), sample_size)
                best = max(contenders, key=lambda r: (r["reward"], -r["i"]))
                g, parent = draw(lambda: space.mutate(best["genotype"], rng)), best["i"]
            if g is None:
                exhausted = True
                break
            seen.add(space.key(g))
            drawn.append((g, parent))
        for (g, parent), lat in zip(drawn, latencies(drawn)):
            if trained >= budget:
                break
            rec = evaluate(g, parent, lat)
            if rec["status"] == "trained":
                trained += 1
                pop.append(rec)
                if len(pop) > population:
                    pop.popleft()  # ageing: the oldest leaves, whatever its reward
    if records and (old_header is None or old_header.get("budget") != budget or len(old) != len(records)):
        _write_log(log_path, header, records)  # records the budget this log now reflects
    return records


def pareto_front(records: list[dict], lat_key: str = "latency_ms") -> list[dict]:
    """Trained records no other beats on both accuracy and latency, fastest first."""
    pts = sorted((r for r in records if r.get("acc") is not None), key=lambda r: (r[lat_key], -r["acc"]))
    front, best_acc = [], -1.0
    for r in pts:
        if r["acc"] > best_acc:
            front.append(r)
            best_acc = r["acc"]
    return front


def finalists(records: list[dict], k: int = 3) -> list[dict]:
    """The ``k`` trained candidates with the highest reward (ties: earlier first)."""
    trained = [r for r in records if r.get("status") == "trained"]
    return sorted(trained, key=lambda r: (-r["reward"], r["i"]))[:k]


def pick_winner(finals: list[dict], measured_ms: dict, target_ms: float, reward: str) -> dict:
    """Re-score the finalists with their measured latency; the best by that reward (ties: earlier)."""
    scored = []
    for r in finals:
        lat = float(measured_ms[r["i"]])
        scored.append(dict(r, measured_ms=lat, measured_reward=mnasnet_reward(r["acc"], lat, target_ms, reward)))
    return max(scored, key=lambda r: (r["measured_reward"], -r["i"]))
