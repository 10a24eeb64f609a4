"""Counting and timing models (params, MACs, latency, memory) across runtimes."""

from edgevision.profiling.counting import count_macs, count_params, module_summary

__all__ = ["count_macs", "count_params", "module_summary"]
