"""Choosing int8 or fp32 per model and machine: int8 only where it is measured faster.

Whether ONNX Runtime's int8 kernels beat its fp32 ones depends on the CPU (VNNI/AMX dot
products, or AVX2 only) and on the model (depthwise convs and the Q/DQ around unquantized
ops cost time). So the rule measures both, side by side in one run (interleaved rounds, so
load drifts hit both), and recommends int8 only when its median latency is lower than fp32's
by more than ``margin``; a tie or a slower int8 gives "fp32". Never a guess from CPU flags.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def choose_precision(fp32_ms: float, int8_ms: float, margin: float = 0.03) -> str:
    """"int8" when int8 is faster than fp32 by more than ``margin`` (a fraction), else "fp32"."""
    if not (fp32_ms > 0 and int8_ms > 0):
        raise ValueError(f"latencies must be positive; got fp32 {fp32_ms} ms, int8 {int8_ms} ms")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1); got {margin}")
    return "int8" if int8_ms < fp32_ms * (1.0 - margin) else "fp32"


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int = 7, iters: int = 10,
                   warmup: int = 3) -> dict[str, list[float]]:
    """Per-call latency (ms) of each function, in interleaved rounds: {name: [median per round]}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            out[name].append(statistics.median(times))
    return out


def int8_verdict(fp32_path: str | Path, int8_path: str | Path, input_shape=(1, 3, 224, 224),
                 threads: int = 1, margin: float = 0.03,
                 timer: Callable[[dict], dict[str, list[float]]] | None = None, **timing) -> dict:
    """Time the fp32 and int8 ONNX files side by side on this machine and apply the rule.

    Returns {fp32_ms, int8_ms, speedup (fp32/int8), choice, threads, batch}. ``timer`` replaces
    :func:`interleaved_ms` (tests pass a fake one; it gets {"fp32": fn, "int8": fn}).
    """
    from edgevision.export.onnx import ort_session

    x = torch.randn(*input_shape).numpy()
    runs = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        session = ort_session(path, threads)
        feed = {session.get_inputs()[0].name: x}
        runs[name] = (lambda s=session, f=feed: s.run(None, f))
    times = (timer or interleaved_ms)(runs, **timing)
    fp32_ms, int8_ms = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return dict(fp32_ms=fp32_ms, int8_ms=int8_ms, speedup=fp32_ms / int8_ms,
                choice=choose_precision(fp32_ms, int8_ms, margin), threads=threads, batch=input_shape[0],
                margin=margin)


def verdict_line(v: dict) -> str:
    """One line for the CLI and the benchmark: the measured ratio and what to use."""
    faster = v["int8_ms"] < v["fp32_ms"]
    why = "int8 is faster here" if v["choice"] == "int8" else (
        "int8 is slower here" if not faster else f"int8 is not faster by more than {v['margin']:.0%} here")
    return (f"int8 {v['int8_ms']:.2f} ms vs fp32 {v['fp32_ms']:.2f} ms (ONNX Runtime, batch {v['batch']}, "
            f"{v['threads']} thread(s), measured side by side on this machine): use {v['choice']} ({why})")


def export_int8(model, fp32_path: str | Path, input_size, calibration: str | Path | None = None,
                threads: int = 1, rounding: str = "nearest") -> str:
    """`edgevision export --int8`: write ``<fp32>.int8.onnx`` next to the fp32 file (per-channel
    minmax, calibrated on ``calibration`` images or the bundled photos), time both and return
    the lines to print, ending with the verdict. ``rounding="gptq"``: the weights are first put
    on the int8 grid by error-compensating rounding on the same images (BN folded;
    :mod:`edgevision.export.gptq`), then quantized from that float model."""
    from edgevision.export.int8 import WEIGHT_ROUNDINGS
    from edgevision.export.quantize import _cpu_has_vnni, calibration_images, quantize_onnx_static
    from edgevision.inference import preprocess_config

    if rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"int8 rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}; got {rounding!r}")
    fp32_path = Path(fp32_path)
    norm = preprocess_config(model)
    images = calibration_images(calibration, size=input_size[-1], n=32, mean=norm["mean"], std=norm["std"])
    images = images[: (len(images) // input_size[0]) * input_size[0]]
    source, rr = fp32_path, not _cpu_has_vnni()
    if rounding == "gptq":  # the torch-side steps of quantize_model: BN folded, then GPTQ
        import torch

        from edgevision.export.int8 import Int8Config, prepare_float
        from edgevision.export.onnx import export_onnx

        with torch.no_grad():
            rounded, _ = prepare_float(model.eval(), images, Int8Config(weight_rounding="gptq", reduce_range=rr,
                                                                        calib_batch=input_size[0]))
        source = export_onnx(rounded, fp32_path.with_suffix(".gptq.onnx"), tuple(input_size))
    try:
        int8_path = quantize_onnx_static(source, fp32_path.with_suffix(".int8.onnx"), images, batch=input_size[0],
                                         reduce_range=rr)
    finally:
        if source != fp32_path:
            Path(source).unlink(missing_ok=True)
    v = int8_verdict(fp32_path, int8_path, tuple(input_size), threads=threads)
    how = ", GPTQ-rounded weights" if rounding == "gptq" else ""
    return f"wrote {int8_path} (int8, calibrated on {len(images)} images{how})\n" + verdict_line(v)
