"""Latency tables: schema, load/save (atomic), machine check, and the resumable build.

A table is one JSON file for one machine + runtime + thread count::

    {"format": "edgevision-latency-table/1",
     "runtime": "eager", "threads": 1,
     "machine": {"cpu", "logical_cores", "platform", "versions": {...}},   # where it was built
     "settings": {"warmup", "rounds", "target_s", "min_iters", "max_iters"},
     "entries": {KEY: {"kind", "signature", "input_shapes", "ms", "p10_ms", "p90_ms", "iters",
                       "features": {macs, params, act_elems, io_elems, n_ops}, "load", "time"}},
     "networks": {NAME@SIZE: {"ms", "p10_ms", "p90_ms", "units": [KEY, ...], "load", "time"}}}

``entries`` are blocks timed alone (KEY: see :mod:`edgevision.latency.blocks`); ``networks`` are
whole networks timed interleaved with their own blocks, which the predictor uses to fit the
per-network overhead. The file is rewritten atomically after every new entry, so an
interrupted build loses at most the group being timed and ``build_table`` on the same path
resumes (entries already present are skipped).
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

FORMAT = "edgevision-latency-table/1"
ENTRY_KEYS = ("kind", "signature", "input_shapes", "ms", "features")
NETWORK_KEYS = ("ms", "units")
# What must match for a table to describe this machine: CPU, core count, runtime, threads, and
# the versions of the packages that run the blocks.
_VERSION_PKGS = ("torch", "onnxruntime")


class LatencyTableWarning(UserWarning):
    """The table was built on another machine, runtime, thread count or package versions."""


def machine_fingerprint() -> dict:
    import os

    from edgevision.profiling.timing import _cpu_model, _version

    return dict(cpu=_cpu_model(), logical_cores=os.cpu_count(), platform=platform.platform(),
                python=platform.python_version(), versions={p: _version(p) for p in _VERSION_PKGS})


def new_table(runtime: str, threads: int | None, settings: dict | None = None) -> dict:
    return {"format": FORMAT, "runtime": runtime, "threads": threads, "machine": machine_fingerprint(),
            "settings": dict(settings or {}), "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "entries": {}, "networks": {}}


def validate_table(table, where: str = "latency table") -> dict:
    """Check the schema; ValueError naming the first problem."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a JSON object; got {type(table).__name__}")
    if table.get("format") != FORMAT:
        raise ValueError(f"{where}: format {table.get('format')!r} is not {FORMAT!r}; "
                         "build one with `edgevision latency build`")
    for key in ("runtime", "machine", "entries", "networks"):
        if key not in table:
            raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(table["entries"], dict) or not isinstance(table["networks"], dict):
        raise ValueError(f"{where}: 'entries' and 'networks' must be JSON objects")
    for k, e in table["entries"].items():
        missing = [f for f in ENTRY_KEYS if f not in e]
        if missing:
            raise ValueError(f"{where}: entry {k!r} lacks {', '.join(missing)}")
        if not isinstance(e["ms"], (int, float)) or not e["ms"] > 0:
            raise ValueError(f"{where}: entry {k!r} has a non-positive time {e['ms']!r}")
    for k, n in table["networks"].items():
        missing = [f for f in NETWORK_KEYS if f not in n]
        if missing:
            raise ValueError(f"{where}: network {k!r} lacks {', '.join(missing)}")
    return table


def load_table(path) -> dict:
    from edgevision.io import as_path

    path = as_path(path, "table")
    if not path.is_file():
        raise FileNotFoundError(f"latency table {path} does not exist; build it with `edgevision latency build`")
    try:
        table = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON latency table ({e})") from None
    return validate_table(table, str(path))


def save_table(table: dict, path) -> Path:
    from edgevision.io import as_path, atomic_write_text

    path = as_path(path, "table")
    table["updated"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    return path


def _describe(runtime, threads, machine) -> str:
    v = machine.get("versions", {})
    vers = ", ".join(f"{k} {v.get(k)}" for k in _VERSION_PKGS)
    return (f"{machine.get('cpu')} ({machine.get('logical_cores')} cores), runtime {runtime}, "
            f"{threads} thread(s), {vers}")


def table_mismatches(table: dict, runtime: str | None = None, threads: int | None = None) -> list[str]:
    """What differs between the table's machine/runtime and this one (empty when none)."""
    here = machine_fingerprint()
    there = table.get("machine", {})
    diffs = []
    for k in ("cpu", "logical_cores"):
        if there.get(k) != here[k]:
            diffs.append(k)
    for p in _VERSION_PKGS:
        if there.get("versions", {}).get(p) != here["versions"][p]:
            diffs.append(p)
    if runtime is not None and table.get("runtime") != runtime:
        diffs.append("runtime")
    if threads is not None and table.get("threads") != threads:
        diffs.append("threads")
    return diffs


def check_table(table: dict, runtime: str | None = None, threads: int | None = None) -> list[str]:
    """Warn (LatencyTableWarning, one line naming both sides) when the table is from elsewhere."""
    diffs = table_mismatches(table, runtime, threads)
    if diffs:
        here = _describe(runtime or table.get("runtime"), threads if threads is not None else table.get("threads"),
                         machine_fingerprint())
        there = _describe(table.get("runtime"), table.get("threads"), table.get("machine", {}))
        warnings.warn(f"latency table differs from this machine in {', '.join(diffs)}: table built on "
                      f"[{there}]; this machine: [{here}]; predictions may be off — rebuild the table here",
                      LatencyTableWarning, stacklevel=2)
    return diffs


# ------------------------------------------------------------------------------ building
def resolve_model(spec, num_classes: int = 1000):
    """A model from a registry name, a net config path (.json) or a config dict."""
    import torch.nn as nn

    import edgevision as ev

    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict):
        from edgevision.models.netconfig import build_from_config

        return build_from_config(spec, num_classes=num_classes)
    return ev.create_model(str(spec), num_classes=num_classes)


def _name_of(spec) -> str:
    import torch.nn as nn

    if isinstance(spec, nn.Module):
        return type(spec).__name__
    if isinstance(spec, dict):
        return spec.get("name") or "config"
    return Path(str(spec)).stem if str(spec).endswith(".json") else str(spec)


def build_table(sources: Iterable, runtime: str, path, threads: int | None = 1, sizes=(224,),
                measure_networks: bool = True, progress: bool = True, warmup: int = 2, rounds: int = 5,
                target_s: float = 0.15, min_iters: int = 5, max_iters: int = 60,
                clock: str | None = None, on_entry: Callable[[str], None] | None = None, log=None) -> dict:
    """Time every distinct unit of ``sources`` at ``sizes`` on ``runtime`` into the table at ``path``.

    ``sources``: registry names, net config paths or dicts (a dict may carry a "name"). When the
    file exists it is resumed: it must be for the same runtime and threads (ValueError otherwise,
    a machine difference warns), and entries/networks already there are not timed again.
    ``measure_networks`` also times each whole network interleaved with its blocks (the data the
    predictor fits its per-network overhead on). ``on_entry(key)`` runs after each entry is saved.
    """
    from edgevision.io import as_path
    from edgevision.latency.blocks import decompose
    from edgevision.latency.measure import (
        RUNTIMES,
        default_clock,
        load_average,
        network_runner,
        time_interleaved,
        unit_runner,
    )
    from edgevision.profiling.runtimes import RUNTIMES as ALL_RUNTIMES
    from edgevision.profiling.timing import fixed_threads

    if runtime not in RUNTIMES and runtime not in ALL_RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 8 for s in sizes):
        raise ValueError(f"sizes must be input sides >= 8 pixels; got {sizes}")
    sources = list(sources)
    if not sources:
        raise ValueError("no models or configs to build a table from")
    path = as_path(path, "output")
    clock = clock or default_clock(threads)
    settings = dict(warmup=warmup, rounds=rounds, target_s=target_s, min_iters=min_iters, max_iters=max_iters,
                    clock=clock)
    if path.exists():
        table = load_table(path)
        if table.get("settings", {}).get("clock", clock) != clock:
            raise ValueError(f"{path} was timed with the {table['settings']['clock']} clock; cannot resume it "
                             f"with the {clock} clock: use another -o")
        if table["runtime"] != runtime or table.get("threads") != threads:
            raise ValueError(f"{path} is a table for runtime {table['runtime']} with {table.get('threads')} "
                             f"thread(s); cannot resume it for runtime {runtime} with {threads}: use another -o")
        check_table(table, runtime, threads)
        if log:
            log(f"resuming {path}: {len(table['entries'])} entries, {len(table['networks'])} networks")
    else:
        table = new_table(runtime, threads, settings)

    jobs = [(spec, size) for spec in sources for size in sizes]
    bar = _progress(progress, len(jobs))
    try:
        with fixed_threads(threads):
            for spec, size in jobs:
                name = f"{_name_of(spec)}@{size}"
                bar.describe(name)
                model = resolve_model(spec).eval()
                units = decompose(model, size)
                net_key = name if measure_networks and name not in table["networks"] else None
                pending = {}
                for u in units:
                    if u.key not in table["entries"] and u.key not in pending:
                        pending[u.key] = u
                if pending or net_key:
                    fns = {k: unit_runner(u, runtime, threads) for k, u in pending.items()}
                    if net_key:
                        fns["__net__"] = network_runner(model, size, runtime, threads)
                    stats = time_interleaved(fns, warmup=warmup, rounds=rounds, target_s=target_s,
                                             min_iters=min_iters, max_iters=max_iters, clock=clock)
                    load, stamp = load_average(), time.strftime("%Y-%m-%d %H:%M:%S")
                    for k, u in pending.items():
                        table["entries"][k] = dict(kind=u.kind, signature=u.signature, input_shapes=u.input_shapes,
                                                   consts=u.consts(), **stats[k], features=u.features,
                                                   load=load, time=stamp, first_seen=f"{name}:{u.path}")
                        save_table(table, path)
                        if on_entry is not None:
                            on_entry(k)
                    if net_key:
                        table["networks"][net_key] = dict(**stats["__net__"], units=[u.key for u in units],
                                                          stages=[u.stage for u in units],
                                                          load=load, time=stamp)
                        save_table(table, path)
                elif not path.exists():
                    save_table(table, path)
                bar.advance()
    finally:
        bar.close()
    return table


class _progress:
    """A rich progress bar on stderr (a no-op when off)."""

    def __init__(self, on: bool, total: int):
        self.bar = None
        if on:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(file=sys.stderr), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("latency table", total=total)

    def describe(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text)

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
