"""Benchmark models x runtimes x batch sizes and save CSV, JSON, Markdown and a PNG plot.

Everything that can be wrong with the request (model names, runtime names, missing
packages, the output folder) is checked before the first model is built, so a typo fails
in a second rather than after minutes of timing.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from edgevision.io import atomic_write_text, save_figure
from edgevision.jsonout import to_json
from edgevision.profiling.counting import count_macs, count_params
from edgevision.profiling.runtimes import get_runtime
from edgevision.profiling.timing import (
    fixed_threads,
    machine_info,
    measure_interleaved,
    measure_latency,
    process_peak_memory,
    torch_peak_memory,
)

COLUMNS = [
    "model", "runtime", "batch", "size", "threads", "params", "macs", "published_top1",
    "median_ms", "p10_ms", "p90_ms", "throughput", "speedup_vs_eager", "peak_mem_mb", "mem_method",
    "max_abs_diff", "top1_agreement", "weights", "prepare_s", "error",
]


def check_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` if needed and prove it is writable; raise a one-line error otherwise."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"output folder {out} is not writable ({e.strerror or e})") from None
    return out


def _compile_modes() -> list[str]:
    try:
        from torch._inductor import list_mode_options

        return list(list_mode_options())
    except Exception:  # private API moved: let torch.compile judge the mode itself
        return []


def _validate(models, runtimes, batches, size, threads, warmup, iters, rounds, compile_mode,
              calibration):
    from edgevision.profiling.runtimes import RUNTIMES

    if not models:
        raise ValueError("no models given; name some or use --all")
    for name in models:
        _model_info(name)  # raises UnknownModelError with suggestions, or names a bad config file
    if not runtimes:
        raise ValueError(f"no runtimes given; choose from: {', '.join(RUNTIMES)}")
    for r in runtimes:
        get_runtime(r).check()  # unknown runtime -> ValueError, missing package -> MissingPackageError
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1; got {batches}")
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    if iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need iters >= 1, warmup >= 0 and rounds >= 1; got iters={iters}, "
                         f"warmup={warmup}, rounds={rounds}")
    modes = _compile_modes()
    if modes and compile_mode not in modes:
        raise ValueError(f"unknown compile mode {compile_mode!r}; choose from: {', '.join(modes)}")
    if calibration is not None and any(get_runtime(r).int8 for r in runtimes):
        from edgevision.export.quantize import calibration_images

        calibration_images(calibration, size=8, n=1)  # missing folder / no images -> one-line error


class _DenseBenchView(nn.Module):
    """A dense task model (detection, segmentation) as benchmarked: ``export_forward`` (backbone,
    neck, heads on a resized, normalised batch; no NMS), its outputs flattened into one tensor so
    every runtime's result compares with eager's (and an exported graph keeps every head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.in_chans = getattr(model, "in_chans", 3)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([o.flatten(1) for o in self.model.export_forward(x)], dim=1)


def _bench_view(model: nn.Module, size: int, task: str = "classification") -> tuple[nn.Module, tuple[int, ...]]:
    """(module to time, one sample's input shape): images (3, size, size); dense models at their
    own input size (export_input_size); sensor-sequence models one window (channels, steps)."""
    if task == "sequence":
        return model, tuple(model.pretrained_cfg["input_size"])
    if hasattr(model, "export_output_names") and hasattr(model, "export_forward"):
        return _DenseBenchView(model).eval(), (3, *model.export_input_size)
    return model, (3, size, size)


def _model_info(name: str):
    """The registry entry of ``name``; a net config file (search results, ``leak infer``) is
    benchmarked like the registry network it describes (its file is checked here)."""
    from edgevision.models.netconfig import is_config_path, load_config
    from edgevision.registry import model_info

    if is_config_path(name):
        load_config(name)  # a missing or invalid file fails now, before any timing
        return model_info("net_config")
    return model_info(name)


def _normalization(name, model) -> dict:
    """The model's input mean/std for calibration photos (depends on the weights' origin)."""
    from edgevision.inference import preprocess_config

    cfg = preprocess_config(model)  # the model's pretrained config (its weights' preprocessing)
    return {k: cfg[k] for k in ("mean", "std")}


def _prepare_one(model, runtime, x, ref) -> tuple:
    """Prepare ``runtime`` on ``model``; returns (fn, row with prepare time, memory, max|Δ|, agreement)."""
    start = time.perf_counter()
    fn = runtime.prepare(model, x)
    row = dict(prepare_s=time.perf_counter() - start)
    # Memory before the warm-up: a runtime's arena grows to its working size on the first run.
    if runtime.memory == "torch":
        row["peak_mem_mb"], row["mem_method"] = torch_peak_memory(fn, x) / 2**20, "torch-alloc"
    else:
        nbytes = process_peak_memory(fn, x)
        row["peak_mem_mb"] = None if nbytes is None else nbytes / 2**20
        row["mem_method"] = "rss-delta"
    with torch.inference_mode():
        out = fn(x)
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"output shape {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
    row["max_abs_diff"] = float((out.float() - ref).abs().max())
    if runtime.int8:
        row["top1_agreement"] = _agreement(model, fn, runtime, x)
    return fn, row


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _agreement(model, fn, runtime, x) -> float:
    """Top-1 agreement of the int8 runtime with eager fp32 on the calibration/eval photos."""
    from edgevision.export.quantize import top1_agreement

    b = x.shape[0]
    images = runtime.calibration_images(x.shape[-1], n=max(runtime.calib_count, b))
    images = images[: (len(images) // b) * b]
    with torch.inference_mode():
        ref = torch.cat([model(images[i:i + b]) for i in range(0, len(images), b)])
        got = torch.cat([fn(images[i:i + b]).float() for i in range(0, len(images), b)])
    return top1_agreement(ref, got)


def run_bench(models, runtimes=("eager", "onnxruntime"), batches=(1,), size=224, threads=None,
              warmup=10, iters=50, output_dir="bench-results", calibration=None,
              compile_mode="default", progress=True, command=None, checkpoints=None,
              rounds=5) -> dict:
    """Benchmark every (model, runtime, batch); returns {"machine", "settings", "results"}.

    Results are also written to ``output_dir`` (bench.csv/json/md, bench.png) when it is
    not None. ``threads`` fixes torch and ONNX Runtime intra-op threads (default: torch's).
    The runtimes of one (model, batch) are prepared first, then timed interleaved: their
    ``iters`` timed runs are split into ``rounds`` chunks that alternate between runtimes,
    so ``speedup_vs_eager`` compares runs made under the same machine load.
    ``checkpoints`` maps model names to weight files; other models run with random weights,
    which is fine for speed, but then max|Δ| and int8 agreement say little (near-zero logits).
    """
    models = list(dict.fromkeys(models))  # a name given twice is measured once
    runtimes = list(dict.fromkeys(runtimes))
    batches = list(dict.fromkeys(int(b) for b in batches))
    _validate(models, runtimes, batches, size, threads, warmup, iters, rounds, compile_mode, calibration)
    checkpoints = dict(checkpoints or {})
    for name, ckpt in checkpoints.items():
        if name not in models:
            raise ValueError(f"checkpoint given for {name!r}, which is not among the models {models}")
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} for {name} does not exist")
    out = check_output_dir(output_dir) if output_dir is not None else None
    threads = threads or torch.get_num_threads()
    rounds = max(1, min(rounds, iters))
    from tqdm import tqdm

    from edgevision.factory import create_model

    load_before = machine_info()["load_average_1_5_15"]
    rows = []
    # One step per runtime preparation and one per timed chunk of each runtime.
    steps = tqdm(total=len(models) * len(runtimes) * len(batches) * (1 + rounds), disable=not progress,
                 desc="bench", unit="step", file=sys.stderr)
    with fixed_threads(threads):
        for name in models:
            steps.set_postfix_str(f"{name} build")
            model = create_model(name, checkpoint=checkpoints.get(name)).eval()
            info = _model_info(name)
            model, sample = _bench_view(model, size, info.task)
            counts = dict(params=count_params(model), macs=count_macs(model, (1, *sample), exact_shape=True),
                          published_top1=info.published_top1,
                          weights=str(checkpoints[name]) if name in checkpoints else "random")
            for batch in batches:
                x = torch.randn(batch, *sample, generator=torch.Generator().manual_seed(0))
                with torch.inference_mode():
                    ref = model(x)
                group, fns = {}, {}
                for rt_name in runtimes:
                    steps.set_postfix_str(f"{name} {rt_name} b{batch} prepare")
                    runtime = get_runtime(rt_name, threads=threads, calibration=calibration,
                                          compile_mode=compile_mode, **_normalization(name, model))
                    row = dict(model=name, runtime=rt_name, batch=batch, size=size if sample == (3, size, size) else "x".join(map(str, sample[1:] if len(sample) == 3 else sample)),
                               threads=threads,
                               **counts)
                    try:
                        fns[rt_name], measured = _prepare_one(model, runtime, x, ref)
                        row.update(measured)
                    except Exception as e:  # one failing runtime must not lose the others' results
                        row["error"] = _error(e)
                        steps.update(rounds)  # its timing chunks will not run
                    group[rt_name] = row
                    steps.update()
                steps.set_postfix_str(f"{name} b{batch} timing {','.join(fns)}")
                for rt_name, stats in _time_group(fns, x, warmup, iters, rounds, steps.update).items():
                    group[rt_name].update(stats)
                eager_ms = group["eager"].get("median_ms") if "eager" in group else None
                for row in group.values():
                    if eager_ms and row.get("median_ms"):
                        row["speedup_vs_eager"] = eager_ms / row["median_ms"]
                    rows.append({c: row.get(c) for c in COLUMNS})
    steps.close()
    report = dict(
        machine=dict(machine_info(), load_average_before=load_before),
        settings=dict(models=models, runtimes=runtimes, batches=batches, size=size, threads=threads,
                      warmup=warmup, iters=iters, rounds=rounds, compile_mode=compile_mode,
                      calibration=str(calibration) if calibration else "bundled sample photos",
                      timing_note="eval + inference_mode; per (model, batch) the runtimes are warmed up, "
                                  "then timed interleaved in rounds; median/p10/p90 over iters runs",
                      memory_note="torch-alloc: peak live tensor bytes in one forward (torch.profiler); "
                                  "rss-delta: peak RSS growth over the first run (ONNX Runtime)",
                      macs_note="multiply-adds per image, torch FlopCounterMode / 2, math SDPA"),
        command=command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        results=rows,
    )
    if out is not None:
        report["files"] = write_results(report, out)
    return report


def _time_group(fns: dict, x, warmup, iters, rounds, on_chunk) -> dict:
    """Stats per runtime, timed interleaved; a runtime failing mid-timing gets an error instead."""
    if not fns:
        return {}
    try:
        return measure_interleaved(fns, x, warmup=warmup, iters=iters, rounds=rounds,
                                   on_round=lambda _key: on_chunk())
    except Exception:  # find which one fails, keep the others (timed one after another then)
        results = {}
        for key, fn in fns.items():
            try:
                results[key] = measure_latency(fn, x, warmup=warmup, iters=iters)
            except Exception as e:
                results[key] = dict(error=_error(e))
        return results


def _fmt(v, digits=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = ["model", "runtime", "batch", "params", "macs", "median_ms", "p10_ms", "p90_ms",
            "throughput", "speedup_vs_eager", "peak_mem_mb", "max_abs_diff", "top1_agreement", "error"]
    head = ["model", "runtime", "batch", "params (M)", "MACs (M)", "median ms", "p10 ms", "p90 ms",
            "img/s", "x eager", "peak MB", "max abs diff", "top-1 agree", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = dict(r, params=r["params"] / 1e6 if r["params"] else None,
                    macs=r["macs"] / 1e6 if r["macs"] else None)
        lines.append("| " + " | ".join(_fmt(vals.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_results(report: dict, out: Path) -> dict:
    """bench.csv, bench.json, bench.md and bench.png under ``out``; returns their paths."""
    rows = report["results"]
    files = dict(csv=out / "bench.csv", json=out / "bench.json", md=out / "bench.md", png=out / "bench.png")
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_text(files["json"], to_json(report, indent=2, default=str))
    m = report["machine"]
    s = report["settings"]
    atomic_write_text(
        files["md"],
        f"# edgevision bench\n\nCommand: `{report['command']}`\n\n"
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, load average (1, 5, 15 min) before "
        f"{m.get('load_average_before')}, after {m['load_average_1_5_15']}; "
        f"torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}. "
        f"Threads: {s['threads']}; warm-up {s['warmup']}, timed runs {s['iters']}; input {s['size']}px.\n"
        f"Timing: {s.get('timing_note', '')}. "
        f"MACs: {s['macs_note']}. Peak memory: {s['memory_note']}.\n"
        "x eager: eager median / this runtime's median (same model and batch). max abs diff: vs eager "
        "fp32 on the same input; top-1 agree: int8 vs fp32 arg-max on the calibration photos. Both "
        "say little for random weights (see the weights column of bench.csv).\n\n"
        + markdown_table(rows) + "\n"
    )
    plot_results(rows, files["png"])
    return {k: str(v) for k, v in files.items()}


def plot_results(rows: list[dict], path: Path) -> None:
    """Two panels at the smallest batch: latency vs MACs, and latency vs published top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("median_ms") is not None]
    batch = min((r["batch"] for r in ok), default=1)
    ok = [r for r in ok if r["batch"] == batch]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    labelled = set()  # name each model once, at its fastest runtime, to keep the plot readable
    fastest = {}
    for r in ok:
        if r["model"] not in fastest or r["median_ms"] < fastest[r["model"]]["median_ms"]:
            fastest[r["model"]] = r
    for runtime in dict.fromkeys(r["runtime"] for r in ok):
        rs = [r for r in ok if r["runtime"] == runtime]
        axes[0].scatter([r["macs"] / 1e6 for r in rs], [r["median_ms"] for r in rs], label=runtime)
        with_top1 = [r for r in rs if r.get("published_top1") is not None]
        axes[1].scatter([r["median_ms"] for r in with_top1], [r["published_top1"] for r in with_top1],
                        label=runtime)
    for r in fastest.values():
        if r["model"] in labelled:
            continue
        labelled.add(r["model"])
        axes[0].annotate(r["model"], (r["macs"] / 1e6, r["median_ms"]), fontsize=7)
        if r.get("published_top1") is not None:
            axes[1].annotate(r["model"], (r["median_ms"], r["published_top1"]), fontsize=7)
    axes[0].set(xlabel="MACs (M, multiply-adds)", ylabel=f"median latency (ms), batch {batch}",
                title="Latency vs MACs")
    axes[1].set(xlabel=f"median latency (ms), batch {batch}", ylabel="published ImageNet top-1 (%)",
                title="Accuracy vs latency (up-left is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
