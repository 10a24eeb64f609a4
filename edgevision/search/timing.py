"""Candidate latency: predicted from a latency table when one is given, else measured.

``fn(net_config) -> (latency_ms, source)`` with source "measured" or "predicted"; a latency
method may also offer ``many(configs)`` (several at once: one timing-lock acquisition).

- :class:`MeasuredLatency` times batch-1 forward passes with edgevision.latency's runners and
  interleaved timer (the same measurement the predictor is validated against). Timing holds an
  exclusive ``flock`` on ``/tmp/timing.lock`` (``EDGEVISION_TIMING_LOCK`` overrides; empty
  disables) only while it times, so that on a shared machine one timing job runs at a time
  while training (not timing) goes on unlocked.
- :class:`PredictedLatency` wraps :class:`edgevision.latency.Predictor` over a table built on
  this machine and runtime (no timing at all during the search).
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import torch

from edgevision.search.build import build_network

DEFAULT_LOCK = "/tmp/timing.lock"


@contextlib.contextmanager
def timing_lock():
    path = os.environ.get("EDGEVISION_TIMING_LOCK", DEFAULT_LOCK)
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _as_model(net, num_classes: int):
    if isinstance(net, torch.nn.Module):
        return net.eval()
    if isinstance(net, str):  # a registry name
        import edgevision as ev

        return ev.create_model(net, num_classes=num_classes).eval()
    return build_network(net, num_classes=num_classes).eval()


class MeasuredLatency:
    """Batch-1 latency measured on ``runtime`` at ``size`` px with ``threads`` threads.

    ONNX Runtime runs edgevision.latency's tracer export in the tuned session; with one thread
    the clock is the thread's CPU time (the latency on an idle core: on a loaded shared machine
    wall time mostly measures waiting for a core). :meth:`stats` times several networks
    interleaved in rounds, under one acquisition of the timing lock.
    """

    source = "measured"

    def __init__(self, runtime: str = "onnxruntime", size: int = 224, threads: int = 1, warmup: int = 2,
                 rounds: int = 5, target_s: float = 0.3, min_iters: int = 5, max_iters: int = 40,
                 num_classes: int = 10, clock: str | None = None):
        from edgevision.latency.measure import RUNTIMES, default_clock
        from edgevision.profiling.runtimes import get_runtime

        if runtime not in RUNTIMES:
            raise ValueError(f"search latency is measured on {', '.join(RUNTIMES)}; got runtime {runtime!r}")
        get_runtime(runtime).check()  # a missing package: one line, before any work
        self.runtime, self.size, self.threads, self.num_classes = runtime, size, threads, num_classes
        self.timing = dict(warmup=warmup, rounds=rounds, target_s=target_s, min_iters=min_iters,
                           max_iters=max_iters, clock=clock or default_clock(threads))

    def describe(self) -> dict:
        return {"source": self.source, "runtime": self.runtime, "size": self.size, "threads": self.threads,
                **self.timing}

    def stats(self, nets: dict, rounds: int | None = None, max_iters: int | None = None) -> dict:
        """``{key: {"ms", "p10_ms", "p90_ms", "iters"}}`` for ``{key: config | registry name | module}``."""
        from edgevision.latency.measure import network_runner, time_interleaved
        from edgevision.profiling.timing import fixed_threads

        with fixed_threads(self.threads):  # exports and sessions are made outside the lock
            runners = {k: network_runner(_as_model(v, self.num_classes), self.size, self.runtime, self.threads)
                       for k, v in nets.items()}
        timing = dict(self.timing)
        timing["rounds"] = rounds or timing["rounds"]
        timing["max_iters"] = max(max_iters or timing["max_iters"], timing["min_iters"])
        with timing_lock(), fixed_threads(self.threads):
            return time_interleaved(runners, **timing)

    def many(self, configs: list) -> list[tuple[float, str]]:
        st = self.stats(dict(enumerate(configs)))
        return [(st[i]["ms"], self.source) for i in range(len(configs))]

    def __call__(self, net_config) -> tuple[float, str]:
        return self.many([net_config])[0]


class PredictedLatency:
    """Latency from edgevision.latency's predictor over a table built on this machine and runtime.

    A table from another machine, runtime or thread count warns (LatencyTableWarning, both sides).
    """

    source = "predicted"

    def __init__(self, table, runtime: str | None = None, size: int = 224, threads: int = 1):
        from edgevision.latency import Predictor, check_table, load_table

        self.table_path, self.size = str(table), size
        data = load_table(table)
        check_table(data, runtime, threads)
        self.runtime = runtime or data.get("runtime")
        self.predictor = Predictor(data)

    def describe(self) -> dict:
        return {"source": self.source, "table": self.table_path, "runtime": self.runtime, "size": self.size}

    def __call__(self, net_config) -> tuple[float, str]:
        model = build_network(net_config, num_classes=10)
        return float(self.predictor.predict(model, self.size).ms), self.source
