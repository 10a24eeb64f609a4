"""Latency, throughput and peak memory of a forward pass, and the machine it ran on.

Protocol (as in timm's benchmark and DESIGN.md): eval mode and ``torch.inference_mode``,
a fixed number of torch threads (recorded), warm-up runs, then many timed runs; we report
the median and the 10th/90th percentiles, since shared machines produce long upper tails.
Variants that are compared (runtimes of one model) are timed interleaved, in rounds, so
that load changes during the measurement do not favour whichever ran first.

Peak memory has two methods, because the CPU has no allocator counters like CUDA's:
- ``torch``: torch.profiler with ``profile_memory=True`` records every CPU tensor allocation
  and free; replaying them in time order gives the peak of live tensor bytes during the
  forward (activations and temporaries, not weights). Exact and repeatable. tracemalloc
  would see nothing, since torch allocates outside Python's allocator.
- ``process``: for runtimes torch cannot see into (ONNX Runtime), the growth of the
  process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over the very
  first run, when the runtime's arena grows to its working size. Coarser (page granular,
  includes allocator slack); Linux only, else None.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in [0, 100])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(times_ms: list[float], batch: int) -> dict:
    """median/p10/p90 (ms) of timed runs and the throughput (img/s) at the median."""
    times = sorted(times_ms)
    median = statistics.median(times)
    return dict(
        median_ms=median,
        p10_ms=_percentile(times, 10),
        p90_ms=_percentile(times, 90),
        throughput=batch / (median / 1e3),
    )


def _check_counts(warmup: int, iters: int) -> None:
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0; got iters={iters}, warmup={warmup}")


def measure_latency(fn: Callable, x: torch.Tensor, warmup: int = 10, iters: int = 50) -> dict:
    """Time ``fn(x)``: median/p10/p90 latency in ms over ``iters`` runs after ``warmup``.

    Throughput is batch size / median latency (img/s). Runs under inference_mode; the
    caller fixes the thread count (see :func:`fixed_threads`).
    """
    return measure_interleaved({"fn": fn}, x, warmup=warmup, iters=iters, rounds=1)["fn"]


def measure_interleaved(fns: dict, x: torch.Tensor, warmup: int = 10, iters: int = 50,
                        rounds: int = 5, on_round: Callable | None = None) -> dict:
    """Time several ``fn(x)`` side by side: ``{key: stats}`` as in :func:`measure_latency`.

    Each function is warmed up, then the ``iters`` timed runs of every function are split
    into ``rounds`` chunks and the chunks alternate (a, b, c, a, b, c, ...), so a change of
    machine load during the measurement hits all of them alike instead of the last one
    (shared 2-core machines drift by several x). ``on_round(key)`` is called after each chunk.
    """
    _check_counts(warmup, iters)
    rounds = max(1, min(rounds, iters))
    chunks = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    times: dict = {key: [] for key in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        for n in chunks:
            for key, fn in fns.items():
                for _ in range(n):
                    start = time.perf_counter()
                    fn(x)
                    times[key].append((time.perf_counter() - start) * 1e3)
                if on_round is not None:
                    on_round(key)
    return {key: dict(latency_stats(t, x.shape[0]), iters=iters, warmup=warmup) for key, t in times.items()}


class _quiet_native_stderr:
    """Silence fd 2 for a moment: the profiler's C++ side prints start/stop and GPU-probe lines."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def torch_peak_memory(fn: Callable, x: torch.Tensor) -> int:
    """Peak bytes of live CPU tensors allocated during ``fn(x)`` (torch.profiler replay)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), _quiet_native_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn(x)
    del out
    # Each op's own (self) allocations net of frees land at its end; "[memory]" events are
    # frees/allocations outside any op (e.g. a Python reference dropped between ops).
    deltas = []
    for ev in prof.events():
        if ev.name == "[memory]":
            deltas.append((ev.time_range.start, ev.cpu_memory_usage))
        elif ev.self_cpu_memory_usage:
            deltas.append((ev.time_range.end, ev.self_cpu_memory_usage))
    deltas.sort(key=lambda d: d[0])
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def process_peak_memory(fn: Callable, x: torch.Tensor) -> int | None:
    """Growth of the process's peak RSS during ``fn(x)`` in bytes (Linux), else None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets VmHWM (peak RSS) to the current RSS
    except OSError:
        return None
    before = _read_status_kb("VmRSS")
    with torch.inference_mode():
        fn(x)
    peak = _read_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) * 1024


class fixed_threads:
    """Context manager: run with exactly ``n`` torch intra-op threads, restore afterwards."""

    def __init__(self, n: int | None):
        if n is not None and n < 1:
            raise ValueError(f"threads must be >= 1; got {n}")
        self.n = n
        self.saved = torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info() -> dict:
    """Where a measurement ran: CPU, cores, load (shared machines distort timings), versions."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return dict(
        cpu=_cpu_model(),
        logical_cores=os.cpu_count(),
        load_average_1_5_15=load,
        platform=platform.platform(),
        python=platform.python_version(),
        versions={
            pkg: _version(pkg)
            for pkg in ("edgevision", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "torchao", "openvino")
        },
        time=time.strftime("%Y-%m-%d %H:%M:%S %z"),
    )
