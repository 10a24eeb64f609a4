"""Counting and timing models (params, MACs, latency, memory) across runtimes."""

from edgevision.profiling.counting import count_macs, count_params, module_summary
from edgevision.profiling.timing import machine_info, measure_latency, torch_peak_memory

__all__ = ["count_macs", "count_params", "module_summary", "machine_info", "measure_latency",
           "torch_peak_memory", "run_bench", "get_runtime", "RUNTIMES"]


def __getattr__(name):
    # bench/runtimes import the factory (-> models); loaded lazily so that counting stays
    # importable from model-free code without a cycle.
    if name == "run_bench":
        from edgevision.profiling.bench import run_bench

        return run_bench
    if name in ("get_runtime", "RUNTIMES"):
        from edgevision.profiling import runtimes

        return getattr(runtimes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
