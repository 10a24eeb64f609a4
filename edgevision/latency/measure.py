"""Time blocks in isolation (and whole networks) on one runtime, interleaved.

A unit is run alone with its recorded input shapes: eager and channels_last call the module;
onnxruntime exports the unit alone (TorchScript-tracer exporter: 0.3 s a block where the dynamo
exporter takes ~3 s, and the same exporter is used for the whole networks the predictor is
checked against) and runs it in :func:`~edgevision.profiling.runtimes.tuned_ort_session`.
Other runtimes go through ``Runtime.prepare`` (single-input units only).

Timing is interleaved in rounds (a, b, c, a, b, c, ...) across all the units of one group, the
whole network included when it is timed, so load changes on a shared machine hit a network and
its blocks alike; each key gets enough runs to fill ``target_s`` (between ``min_iters`` and
``max_iters``), and the median is kept.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from edgevision.latency.blocks import Unit

RUNTIMES = ("eager", "channels_last", "onnxruntime")


def _inputs_like(unit_tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    # Fresh, ordinary (not inference-mode) tensors of the recorded values: the exporter and
    # channels_last copies need normal tensors.
    return [t.detach().clone() if not t.is_inference() else torch.tensor(t.numpy()) for t in unit_tensors]


def _export(module: nn.Module, inputs: list[torch.Tensor], path: Path) -> Path:
    """TorchScript-tracer export (fast); the dynamo exporter where the tracer fails (MOAT's
    symbolic window sizes)."""
    import io
    import warnings
    from contextlib import redirect_stdout

    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module.eval(), tuple(inputs), str(path), dynamo=False, opset_version=17,
                              input_names=names, do_constant_folding=True)
        except Exception:
            with redirect_stdout(io.StringIO()):  # the dynamo exporter prints its progress
                ep = torch.export.export(module.eval(), tuple(inputs), strict=False)
                prog = torch.onnx.export(ep, tuple(inputs), dynamo=True, opset_version=18,
                                         input_names=names, verbose=False)
            prog.save(str(path))
    return path


def make_runner(module: nn.Module, inputs: list[torch.Tensor], runtime: str,
                threads: int | None = 1, workdir: str | Path | None = None) -> Callable[[], object]:
    """A no-argument function that runs ``module(*inputs)`` once on ``runtime``."""
    module = module.eval()
    if runtime == "eager":
        return lambda: module(*inputs)
    if runtime == "channels_last":
        m = copy.deepcopy(module).to(memory_format=torch.channels_last)
        xs = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs]
        return lambda: m(*xs)
    if runtime == "onnxruntime":
        from edgevision.profiling.runtimes import tuned_ort_session

        fd, name = tempfile.mkstemp(suffix=".onnx", dir=workdir)
        os.close(fd)
        try:
            _export(module, inputs, Path(name))
            session = tuned_ort_session(name, threads)
        finally:
            os.unlink(name)
        feed = {i.name: np.ascontiguousarray(t.numpy(), dtype=np.float32)
                for i, t in zip(session.get_inputs(), inputs)}
        return lambda: session.run(None, feed)
    from edgevision.profiling.runtimes import get_runtime

    if len(inputs) != 1:
        raise ValueError(f"runtime {runtime!r} times single-input blocks only; use one of {', '.join(RUNTIMES)}")
    rt = get_runtime(runtime, threads=threads)
    rt.check()
    fn = rt.prepare(copy.deepcopy(module), inputs[0])
    x = inputs[0]
    return lambda: fn(x)


def unit_runner(unit: Unit, runtime: str, threads: int | None = 1) -> Callable[[], object]:
    return make_runner(unit.as_module(), _inputs_like(unit.tensors), runtime, threads)


def network_runner(model: nn.Module, size: int, runtime: str, threads: int | None = 1) -> Callable[[], object]:
    chans = getattr(model, "in_chans", 3)
    x = torch.randn(1, chans, size, size, generator=torch.Generator().manual_seed(0))
    return make_runner(model, [x], runtime, threads)


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def default_clock(threads: int | None) -> str:
    return "cpu" if threads == 1 else "wall"


def time_interleaved(fns: dict, warmup: int = 2, rounds: int = 5, target_s: float = 0.15,
                     min_iters: int = 5, max_iters: int = 60, clock: str = "wall") -> dict:
    """``{key: {"ms": median, "p10_ms", "p90_ms", "iters"}}`` of no-argument functions,
    interleaved in ``rounds`` (see the module docstring).

    ``clock="cpu"`` times with the calling thread's CPU time: with one thread (eager and ONNX
    Runtime then run on the calling thread) that is the latency on an idle core, without the
    time the thread waited for a core on a loaded machine (at load 12 on 2 cores a 50 ms
    network was preempted for more of its run than a 1 ms block, so wall-clock sums of
    blocks came out 1.7x below the network). ``"wall"``: perf_counter, for several threads."""
    from edgevision.profiling.timing import _percentile

    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    now = CLOCKS[clock]
    if not fns:
        return {}
    if warmup < 0 or rounds < 1 or min_iters < 1 or max_iters < min_iters:
        raise ValueError(f"bad timing settings: warmup={warmup}, rounds={rounds}, "
                         f"min_iters={min_iters}, max_iters={max_iters}")
    est = {}
    with torch.inference_mode():
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(max(warmup, 1)):
                fn()
            est[key] = (time.perf_counter() - start) / max(warmup, 1)
        iters = {k: int(min(max_iters, max(min_iters, target_s / max(e, 1e-6)))) for k, e in est.items()}
        per_round = {k: max(1, -(-n // rounds)) for k, n in iters.items()}
        times: dict = {k: [] for k in fns}
        for _ in range(rounds):
            for key, fn in fns.items():
                for _ in range(per_round[key]):
                    start = now()
                    fn()
                    times[key].append((now() - start) * 1e3)
    out = {}
    for key, t in times.items():
        s = sorted(t)
        out[key] = dict(ms=statistics.median(s), p10_ms=_percentile(s, 10), p90_ms=_percentile(s, 90), iters=len(s))
    return out
