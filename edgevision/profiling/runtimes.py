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
freezing on), torchscript (trace + freeze), onnxruntime (fp32, our ONNX export, tuned session:
see :func:`tuned_ort_session`), openvino (fp32, OpenVINO CPU plugin on our ONNX export),
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
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 onnx_file: str | Path | None = None):
        self.threads = threads
        # An fp32 ONNX export of this model at the example's shape, made by the caller, so that
        # runtimes timed side by side (onnxruntime, openvino) share one export.
        self.onnx_file = onnx_file
        self.compile_mode = compile_mode
        self.calibration = calibration
        self.calib_count = calib_count
        self.mean, self.std = tuple(mean), tuple(std)  # the model's input normalization
        self._tmp = None

    def check(self) -> None:
        """Raise MissingPackageError when a package this runtime needs is missing."""

    def prepare(self, model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def onnx_export(self, model, example) -> Path:
        """``onnx_file`` when given, else a fresh export of ``model`` at ``example``'s shape."""
        from edgevision.export.onnx import export_onnx

        if self.onnx_file is not None:
            return Path(self.onnx_file)
        if example.dim() == 3:  # a sensor window (batch, channels, steps): the sequence exporter
            from edgevision.tasks.sequence.export import export_sequence_onnx

            path = self.workdir() / "model.onnx"
            export_sequence_onnx(model, path, tuple(example.shape), dynamic_batch=False)
            return path
        return export_onnx(model, self.workdir() / "model.onnx", tuple(example.shape))

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


def _symbolic_batch(path) -> str | None:
    """The name of the input's batch dimension when the ONNX file leaves it dynamic, else None."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return dim[0].dim_param or None if len(dim) else None


def tuned_ort_options(threads: int | None = None):
    """The SessionOptions of :func:`tuned_ort_session` (why each is set: its docstring); also
    used by callers that add to them (the leakage tracer turns profiling on)."""
    ort = require("onnxruntime", "onnx", "the onnxruntime runtime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
        if threads > 1:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    return opts


def tuned_ort_session(path: str | Path, threads: int | None = None, batch: int | None = None):
    """The ONNX Runtime CPU session the ``onnxruntime`` runtimes time (fp32 and int8).

    ``batch`` fixes a dynamic batch dimension of the file (a free-dimension override), so a
    file exported once with a dynamic batch is optimized for the batch it will run at.

    Settings, chosen by measurement (MobileNetV2, EMO-1M and EfficientFormer-L1; 1 thread,
    batch 1, 224 px, interleaved rounds, on a shared 2-core AVX2 machine at load 3-5, so only
    effects well above its noise are claimed):

    - ``ORT_ENABLE_ALL``: the one setting that matters. Over ``ORT_ENABLE_EXTENDED`` it adds
      the NCHWc layout transformer (convolutions run on MLAS's blocked channel layout, with
      the reorders hoisted to the graph's ends): MobileNetV2 2.8x faster, EMO-1M 2.7x; the
      attention-heavy EfficientFormer-L1 gains nothing (within noise). This is ORT's "NHWC"
      path on the CPU EP for fp32 (its NhwcTransformer applies to int8 QLinearConv only).
    - threads: ``intra_op_num_threads`` = the bench's ``--threads``; ``inter_op`` = 1 with
      ``ORT_SEQUENTIAL`` (a classifier's graph is one chain; parallel execution only adds
      scheduling). With several threads, spinning is off
      (``session.intra_op.allow_spinning=0``: idle workers sleep instead of burning cores that
      other jobs need); that one is reasoned, not measured (all measurements here are 1 thread).
    - Left at ORT's defaults because they measured within noise (±10% under load):
      ``ORT_ENABLE_LAYOUT`` instead of ALL, denormals-as-zero, memory pattern and CPU arena
      off, I/O binding into a preallocated output. Optimized-model caching
      (``optimized_model_filepath``) only shortens session creation, not inference, and
      a saved NCHWc graph is tied to this CPU's vector width, so it is not used.
    """
    ort = require("onnxruntime", "onnx", "the onnxruntime runtime")
    opts = tuned_ort_options(threads)
    name = _symbolic_batch(path) if batch else None
    if name:
        opts.add_free_dimension_override_by_name(name, int(batch))
    from edgevision.export.onnx import DISABLED_ORT_OPTIMIZERS  # keeps mixed-precision layers fp32

    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_ORT_OPTIMIZERS)


class OnnxRuntime(Runtime):
    name, summary = "onnxruntime", "ONNX Runtime CPU, fp32, our ONNX export, tuned session"
    memory = "process"

    def check(self):
        require("onnx", "onnx", "the onnxruntime runtime")
        require("onnxruntime", "onnx", "the onnxruntime runtime")

    def prepare(self, model, example):
        from edgevision.export.onnx import run_session

        session = tuned_ort_session(self.onnx_export(model, example), self.threads, batch=example.shape[0])
        return lambda x: run_session(session, x)


class OpenVINO(Runtime):
    """OpenVINO's CPU plugin on our (parity-checked) ONNX export, fp32.

    Latency hint at batch 1, throughput hint at batch N, ``INFERENCE_NUM_THREADS`` = the
    bench's threads and precision pinned to f32 (on CPUs with bf16/AMX the plugin would
    otherwise run bf16 and the outputs would not match eager). The throughput hint would
    split the threads into parallel streams, which one synchronous request cannot use, so
    ``NUM_STREAMS`` is 1: a batch-N call gets every thread.
    """
    name, summary = "openvino", "OpenVINO CPU plugin, fp32, our ONNX export"
    memory = "process"
    profile = False  # set True before prepare() to collect per-node times (PERF_COUNT)

    def check(self):
        require("onnx", "onnx", "the openvino runtime")
        require("openvino", "openvino", "the openvino runtime")

    def prepare(self, model, example):
        import numpy as np

        ov = require("openvino", "openvino", "the openvino runtime")
        path = self.onnx_export(model, example)
        config = {"PERFORMANCE_HINT": "LATENCY" if example.shape[0] == 1 else "THROUGHPUT",
                  "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.profile:
            config["PERF_COUNT"] = "YES"  # per-node times in request.get_profiling_info()
        core = ov.Core()
        graph = core.read_model(str(path))
        if graph.input(0).get_partial_shape().is_dynamic:  # an export with a dynamic batch
            graph.reshape(list(example.shape))
        compiled = core.compile_model(graph, "CPU", config)
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            request.infer([np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)],
                          share_inputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data.copy())  # the buffer is reused

        run.request = request  # for profiling (benchmarks/bench_floor.py)
        return run


class OnnxRuntimeInt8(OnnxRuntime):
    name, summary = "onnxruntime-int8", "ONNX Runtime CPU, static int8 QDQ, per-channel weights"
    int8 = True

    def prepare(self, model, example):
        from edgevision.export.onnx import export_onnx, run_session
        from edgevision.export.quantize import quantize_onnx_static

        fp32 = export_onnx(model, self.workdir() / "model.onnx", tuple(example.shape), dynamic_batch=True)
        images = self.calibration_images(example.shape[-1])
        int8 = quantize_onnx_static(fp32, self.workdir() / "model.int8.onnx", images, batch=1)
        session = tuned_ort_session(int8, self.threads)
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


class Sparse(Runtime):
    name, summary = "sparse", ("edgevision.sparse.compile: sparse 1x1 convs (CSR), numba depthwise, fused blocks, "
                                "BN folded, NCHW, one fx graph")

    def check(self):
        require("numba", "sparse", "the sparse runtime")

    def prepare(self, model, example):
        from edgevision.sparse.runtime import prepare_for_bench

        return prepare_for_bench(model, example)  # never pruned: one line on stderr, runs dense


RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (Eager, ChannelsLast, Fused, Optimized, Compile, TorchScript, OnnxRuntime, OpenVINO,
                OnnxRuntimeInt8, Pt2eInt8, Sparse)
}


def get_runtime(name: str, **options) -> Runtime:
    """The runtime called ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; choose from: {', '.join(RUNTIMES)}") from None
    return cls(**options)
