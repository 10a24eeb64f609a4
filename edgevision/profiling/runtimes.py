"""Ways to run a model, behind one interface: ``Runtime(...).prepare(model, example) -> fn``.

``fn(x)`` takes and returns torch tensors (NCHW float32 in, logits out), so the timing loop
and the max|Δ| vs eager check are the same for every runtime. ``prepare`` never mutates
the caller's model (runtimes that change layout or weights work on a copy) and does all
one-time work (tracing, compiling, exporting, quantizing) so that timing sees only steady
state. ``check()`` raises MissingPackageError naming the pip extra before anything runs.

Runtimes: eager, channels_last, fused (eager after folding BatchNorm), optimized
(:func:`edgevision.optimize`: channels_last, BN folded, in-place activations and adds, and
glibc keeping freed memory; that allocator setting is process-wide, so the runtimes timed
beside it in one run share it; ``EDGEVISION_KEEP_HEAP=0`` turns it off), compile (inductor,
freezing on), torchscript (trace + freeze), onnxruntime (fp32, our ONNX export),
onnxruntime-int8 (static QDQ, per-channel weights), pt2e-int8 (torchao + inductor).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from edgevision.export._deps import require


class Runtime:
    name = ""
    summary = ""
    memory = "torch"  # how peak memory is measured: "torch" (allocations) or "process" (RSS)
    int8 = False  # int8 runtimes also report top-1 agreement with fp32 on real images

    def __init__(self, threads: int | None = None, compile_mode: str = "default",
                 calibration: str | Path | None = None, calib_count: int = 32,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.threads = threads
        self.compile_mode = compile_mode
        self.calibration = calibration
        self.calib_count = calib_count
        self.mean, self.std = tuple(mean), tuple(std)  # the model's input normalization
        self._tmp = None

    def check(self) -> None:
        """Raise MissingPackageError when a package this runtime needs is missing."""

    def prepare(self, model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"edgevision-{self.name}-")
        return Path(self._tmp.name)

    def calibration_images(self, size: int, n: int | None = None) -> torch.Tensor:
        from edgevision.export.quantize import calibration_images

        return calibration_images(self.calibration, size=size, n=n or self.calib_count,
                                  mean=self.mean, std=self.std)


class Eager(Runtime):
    name, summary = "eager", "PyTorch eager, fp32, NCHW"

    def prepare(self, model, example):
        return model.eval()


class ChannelsLast(Runtime):
    name, summary = "channels_last", "PyTorch eager, fp32, channels_last weights and input"

    def prepare(self, model, example):
        m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        return lambda x: m(x.contiguous(memory_format=torch.channels_last))


class Fused(Runtime):
    name, summary = "fused", "PyTorch eager after folding BatchNorm into convs"

    def prepare(self, model, example):
        from edgevision.export.fuse import fuse_bn

        return fuse_bn(model, example, inplace=False)


class Optimized(Runtime):
    name, summary = "optimized", "edgevision.optimize: channels_last, BN folded, in-place ops, heap kept"

    def prepare(self, model, example):
        from edgevision.export.optimize import keep_heap_from_env, optimize

        return optimize(model, keep_heap=keep_heap_from_env(), example=example[:1])


class Compile(Runtime):
    name, summary = "compile", "torch.compile, inductor, freezing (compiles on prepare)"

    def prepare(self, model, example):
        import torch._inductor.config as inductor_config

        m = copy.deepcopy(model).eval()
        compiled = torch.compile(m, mode=None if self.compile_mode == "default" else self.compile_mode,
                                 dynamic=False)
        # Freezing (weights as constants, conv+bn folding, weight prepacking) is read at
        # compile time, i.e. on the first call, and only applies without autograd.
        with inductor_config.patch(freezing=True), torch.inference_mode():
            compiled(example)
        return compiled


class TorchScript(Runtime):
    name, summary = "torchscript", "torch.jit.trace + freeze + optimize_for_inference"

    def prepare(self, model, example):
        from edgevision.export.torchscript import trace_and_freeze

        return trace_and_freeze(copy.deepcopy(model), example)


class OnnxRuntime(Runtime):
    name, summary = "onnxruntime", "ONNX Runtime CPU, fp32, our ONNX export"
    memory = "process"

    def check(self):
        require("onnx", "onnx", "the onnxruntime runtime")
        require("onnxruntime", "onnx", "the onnxruntime runtime")

    def prepare(self, model, example):
        from edgevision.export.onnx import export_onnx, ort_session, run_session

        path = export_onnx(model, self.workdir() / "model.onnx", tuple(example.shape))
        session = ort_session(path, self.threads)
        return lambda x: run_session(session, x)


class OnnxRuntimeInt8(OnnxRuntime):
    name, summary = "onnxruntime-int8", "ONNX Runtime CPU, static int8 QDQ, per-channel weights"
    int8 = True

    def prepare(self, model, example):
        from edgevision.export.onnx import export_onnx, ort_session, run_session
        from edgevision.export.quantize import quantize_onnx_static

        fp32 = export_onnx(model, self.workdir() / "model.onnx", tuple(example.shape), dynamic_batch=True)
        images = self.calibration_images(example.shape[-1])
        int8 = quantize_onnx_static(fp32, self.workdir() / "model.int8.onnx", images, batch=1)
        session = ort_session(int8, self.threads)
        return lambda x: run_session(session, x)


class Pt2eInt8(Compile):
    name, summary = "pt2e-int8", "PyTorch int8 via torchao PT2E (X86 inductor quantizer) + compile"
    int8 = True

    def check(self):
        require("torchao", "quant", "the pt2e-int8 runtime")

    def prepare(self, model, example):
        from edgevision.export.quantize import quantize_pt2e

        images = self.calibration_images(example.shape[-1])
        images = images[: (len(images) // example.shape[0]) * example.shape[0]]
        quantized = quantize_pt2e(copy.deepcopy(model), example, images)
        return super().prepare(quantized, example)


RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (Eager, ChannelsLast, Fused, Optimized, Compile, TorchScript, OnnxRuntime, OnnxRuntimeInt8, Pt2eInt8)
}


def get_runtime(name: str, **options) -> Runtime:
    """The runtime called ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; choose from: {', '.join(RUNTIMES)}") from None
    return cls(**options)
