"""What an observer with profiler access sees when a model runs: the execution trace.

Observer model (DeepPeep's threat model, on this CPU). The observer shares the machine with
the deployed model and can run a profiler over its inferences (torch.profiler for PyTorch
eager, in the model's NCHW layout or in channels_last, ONNX Runtime's built-in profiler for an
ONNX deployment, or the CUDA kernel log on a GPU), as often as it likes, but cannot read the
model file or the process memory. It sees:

- the ordered sequence of operators and the kernel each dispatched to (``aten::conv2d`` ->
  ``aten::mkldnn_convolution``; ONNX Runtime op types such as ``FusedConv``), i.e. the names
  a profiler prints, and
- the duration of each (we keep the median, 10th and 90th percentile over repeated runs,
  since the observer can watch many inferences),
- the input resolution the application feeds (public: the app's preprocessing), and the
  machine it runs on.

It does NOT see: module names or the Python stack (``with_modules``/``with_stack`` off; ONNX
node names, which carry module paths, are dropped), tensor shapes of inputs, outputs or
parameters (``record_shapes`` off; ONNX ``*_type_shape``/``*_size`` arguments dropped),
weights, group counts, kernel sizes, strides or channel counts. Everything the attack learns
about those comes from the order of ops and their durations (a BatchNorm's or activation's
duration grows with the number of elements it touches; a convolution's with its MACs).

The trace is versioned JSON (``format``/``version``/``runtime``/``machine``), so a trace from
another version or runtime is refused with one line. ``record_trace(..., lab=True)`` is the
attacker's own laboratory mode, used only on networks the attacker generated itself
(:mod:`edgevision.leak.randnets`): it adds the true conv shapes under ``lab`` so the latency
model can be fitted; it is never used on the audited model.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

TRACE_FORMAT = "edgevision-leak-trace"
TRACE_VERSION = 1
# eager: PyTorch NCHW as a model comes; channels_last: the same in NHWC memory format (the layout
# edgevision.optimize runs), where depthwise convs skip the layout reorders that otherwise
# dominate their time (and so hide their kernel size); onnxruntime: the tuned ORT session.
RUNTIMES = ("eager", "channels_last", "onnxruntime")
TORCH_RUNTIMES = ("eager", "channels_last")

# Allocation/view bookkeeping below an op: not the kernel that does the work.
_UTILITY = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::as_strided_",
            "aten::as_strided", "aten::view", "aten::detach", "aten::_nnpack_available", "aten::zeros",
            "aten::zero_", "aten::fill_", "detach", "aten::alias", "aten::expand", "aten::reshape",
            "aten::_reshape_alias", "aten::_unsafe_view", "aten::contiguous", "aten::copy_", "aten::clone"}


class TraceError(ValueError):
    """A trace file that cannot be used (wrong format/version/runtime, empty, truncated)."""


def _load_model(model_or_name) -> tuple[nn.Module, str]:
    if isinstance(model_or_name, nn.Module):
        return model_or_name.eval(), type(model_or_name).__name__
    if not isinstance(model_or_name, (str, Path)) or not str(model_or_name):
        raise TypeError(f"expected a model name, a net-config path or an nn.Module; got {type(model_or_name).__name__}")
    import edgevision as ev

    return ev.create_model(str(model_or_name)).eval(), str(model_or_name)


def _check_runs(model: nn.Module, name: str, x: torch.Tensor) -> None:
    try:
        with torch.inference_mode():
            model(x)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{name} cannot run at {x.shape[-1]}px input: {first}; choose another --size") from None


def _kernel_of(event) -> str:
    """The deepest non-bookkeeping op below a top-level op: the kernel the op dispatched to."""
    best, depth = event.name, 0
    stack = [(c, 1) for c in event.cpu_children]
    while stack:
        e, d = stack.pop()
        if e.name not in _UTILITY and d > depth:
            best, depth = e.name, d
        stack.extend((c, d + 1) for c in e.cpu_children)
    return best


def _eager_runs(model, x, repeats: int, warmup: int, device: str) -> list[list[tuple[str, str, float]]]:
    """One list of (op, kernel, microseconds) per profiled forward: top-level ops only, or the
    CUDA kernels on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    runs = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            # Exactly the observer's view: no shapes, no module hierarchy, no Python stack.
            with profile(activities=activities, record_shapes=False, with_modules=False,
                         with_stack=False, profile_memory=False) as prof:
                model(x)
                if device == "cuda":
                    torch.cuda.synchronize()
            events = prof.events()
            if device == "cuda":
                ops = [(e.name, e.name, float(e.device_time)) for e in events
                       if getattr(e.device_type, "name", "") == "CUDA"]
            else:
                ops = [(e.name, _kernel_of(e), float(e.time_range.elapsed_us())) for e in events
                       if e.cpu_parent is None and not e.name.startswith("ProfilerStep")]
            runs.append(ops)
    return runs


_CALIB_SIZES = (16, 48, 128)  # spatial sides of the attacker's own (1, 32, s, s) reference tensors


def _calibration(repeats: int) -> list[dict]:
    """The attacker's own reference ops (BatchNorm, ReLU on tensors it chose), profiled the same
    way right after the observed runs: how fast this machine is *now*. Dividing a trace by it
    removes most of the load drift between the lab traces and the observed one. It says
    nothing about the observed model."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    out = []
    w = torch.ones(32)
    with torch.inference_mode():
        for side in _CALIB_SIZES:
            x = torch.randn(1, 32, side, side)
            times: dict[str, list[float]] = {"bn": [], "relu": []}
            for _ in range(max(3, repeats)):
                with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                    y = F.batch_norm(x, w, w, w, w, False)
                    torch.relu_(y)
                for e in prof.events():
                    if e.cpu_parent is None and e.name in ("aten::batch_norm", "aten::relu_"):
                        times["bn" if "batch" in e.name else "relu"].append(float(e.time_range.elapsed_us()))
            for op, ts in times.items():
                ts.sort()
                if ts:
                    out.append({"op": op, "n": 32 * side * side, "us": ts[len(ts) // 10]})
    return out


def _ort_session_options(ort, threads: int | None, profile_prefix: str):
    """The settings of the timed ``onnxruntime`` runtime (tuned_ort_options), plus profiling."""
    from edgevision.profiling.runtimes import tuned_ort_options

    opts = tuned_ort_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = profile_prefix
    return opts


def _ort_runs(model, x, repeats: int, warmup: int, threads: int | None) -> list[list[tuple[str, str, float]]]:
    from edgevision.export._deps import require
    from edgevision.export.onnx import export_onnx

    ort = require("onnxruntime", "onnx", "tracing with --runtime onnxruntime")
    with tempfile.TemporaryDirectory(prefix="edgevision-leak-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", tuple(x.shape))
        opts = _ort_session_options(ort, threads, str(Path(tmp) / "ort_profile"))
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(warmup + repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    # Node events only, in time order: (op type, duration). Node names (module paths) and the
    # shape/size arguments are dropped here, at the source.
    nodes = [(e.get("args", {}).get("op_name", "?"), float(e["dur"]), e["ts"]) for e in events
             if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    nodes.sort(key=lambda n: n[2])
    n_runs = warmup + repeats
    if not nodes or len(nodes) % n_runs:
        raise RuntimeError(f"ONNX Runtime profile has {len(nodes)} node events, not a multiple of {n_runs} runs")
    per = len(nodes) // n_runs
    return [[(o, o, d) for (o, d, _) in nodes[r * per:(r + 1) * per]] for r in range(warmup, n_runs)]


def _summarise(runs: list[list[tuple[str, str, float]]]) -> list[dict]:
    """Per op position: median and 10/90th percentile durations over the runs that agree on the
    op sequence (the most common sequence)."""
    if not runs:
        raise RuntimeError("no profiled runs")
    signature = statistics.mode([tuple(o for o, _, _ in r) for r in runs])
    runs = [r for r in runs if tuple(o for o, _, _ in r) == signature]
    ops = []
    for i, (op, kernel, _) in enumerate(runs[0]):
        ts = sorted(r[i][2] for r in runs)
        q = lambda p: ts[min(len(ts) - 1, max(0, int(round(p * (len(ts) - 1)))))]  # noqa: E731
        ops.append({"op": op, "kernel": kernel, "us": round(statistics.median(ts), 3),
                    "us_p10": round(q(0.1), 3), "us_p90": round(q(0.9), 3)})
    return ops


def _lab_truth(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Attacker's lab only: every Conv2d's true shape, in execution order (forward hooks)."""
    convs: list[dict] = []

    def hook(mod, inp, out):
        convs.append(dict(cin=mod.in_channels, cout=mod.out_channels, k=mod.kernel_size[0],
                          stride=mod.stride[0], groups=mod.groups, h=out.shape[-2], w=out.shape[-1],
                          numel=out[0].numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return convs


def _machine() -> dict:
    from edgevision.profiling.timing import machine_info

    info = machine_info()
    return {k: info[k] for k in ("cpu", "logical_cores", "load_average_1_5_15", "platform", "versions", "time")}


def record_trace(model_or_name, size: int = 224, runtime: str = "eager", repeats: int = 7, warmup: int = 3,
                 threads: int | None = 1, device: str = "cpu", lab: bool = False) -> dict:
    """The observer's trace of one batch-1 inference at ``size`` px (see the module docstring)."""
    from edgevision.profiling.timing import fixed_threads

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} for tracing; choose from: {', '.join(RUNTIMES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda; got {device!r}")
    if device == "cuda" and (runtime not in TORCH_RUNTIMES or not torch.cuda.is_available()):
        raise ValueError("--device cuda needs a CUDA GPU and --runtime eager or channels_last")
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise ValueError(f"size must be an integer in [8, 4096]; got {size!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got {repeats}, {warmup}")
    model, name = _load_model(model_or_name)
    in_chans = getattr(model, "in_chans", 3) or 3
    x = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    if runtime == "channels_last":  # on a copy: the caller's model keeps its layout
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with fixed_threads(threads):
        _check_runs(model, name, x)
        if runtime in TORCH_RUNTIMES:
            if device == "cuda":
                model, x = model.cuda(), x.cuda()
            runs = _eager_runs(model, x, repeats, warmup, device)
            calibration = _calibration(repeats) if device == "cpu" else []
        else:
            calibration = []
            runs = _ort_runs(model, x, repeats, warmup, threads)
    ops = _summarise(runs)
    trace = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "runtime": runtime, "device": device,
             "size": size, "threads": threads, "repeats": repeats, "machine": _machine(),
             "calibration": calibration, "n_ops": len(ops), "ops": ops}
    if lab:
        trace["lab"] = {"convs": _lab_truth(model.cpu(), x.cpu())}
    return trace


def save_trace(trace: dict, path: str | Path) -> Path:
    from edgevision.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(trace, indent=1))
    return path


def validate_trace(trace, runtime: str | None = None, source: str = "trace") -> dict:
    """The trace, checked: one-line TraceError naming what is wrong otherwise."""
    if not isinstance(trace, dict) or trace.get("format") != TRACE_FORMAT:
        raise TraceError(f"{source}: not an edgevision leak trace (no format {TRACE_FORMAT!r}); "
                         "record one with `edgevision leak trace MODEL -o trace.json`")
    if trace.get("version") != TRACE_VERSION:
        raise TraceError(f"{source}: trace format version {trace.get('version')!r}, this edgevision reads "
                         f"version {TRACE_VERSION}; record the trace again with this version")
    if trace.get("runtime") not in RUNTIMES:
        raise TraceError(f"{source}: unknown runtime {trace.get('runtime')!r} (known: {', '.join(RUNTIMES)})")
    if runtime is not None and trace["runtime"] != runtime:
        raise TraceError(f"{source}: trace recorded with runtime {trace['runtime']!r}, but the latency model "
                         f"is for {runtime!r}; trace with --runtime {runtime} or fit a model for {trace['runtime']}")
    ops = trace.get("ops")
    if not isinstance(ops, list) or not ops:
        raise TraceError(f"{source}: empty trace (no ops recorded)")
    n = trace.get("n_ops")
    if n != len(ops):
        raise TraceError(f"{source}: truncated trace: {len(ops)} ops present, header says {n}")
    for i, op in enumerate(ops):
        if not (isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("us"), (int, float))
                and math.isfinite(op["us"]) and op["us"] >= 0):
            raise TraceError(f"{source}: op {i} is malformed (need 'op' name and 'us' duration >= 0)")
    if not isinstance(trace.get("size"), int) or trace["size"] < 8:
        raise TraceError(f"{source}: missing or invalid input 'size'")
    return trace


def load_trace(path: str | Path, runtime: str | None = None) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    if not text.strip():
        raise TraceError(f"{path}: empty trace file")
    try:
        trace = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: truncated or not JSON ({e.msg} at line {e.lineno})") from None
    return validate_trace(trace, runtime=runtime, source=str(path))
