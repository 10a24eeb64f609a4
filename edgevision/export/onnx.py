"""ONNX export with a parity check in ONNX Runtime.

Exporter choice (torch 2.14.1, measured here on timm mobilenetv3_large_100 and
efficientformer_l1 at 224): the TorchScript-based exporter (``dynamo=False``) exports in
0.4-0.6 s, the dynamo exporter (torch.export + onnxscript) in 6-10 s; both gave the same
max|Δ| vs eager (1e-8 / 4e-7) and the same ONNX Runtime latency. The TorchScript exporter
is therefore the default ("legacy"), which keeps the test that exports every registered
model fast; ``exporter="dynamo"`` is available, and ``"auto"`` falls back to dynamo when
the legacy exporter fails on a model.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgevision.export._deps import MissingPackageError, require
from edgevision.models.base import InputShapeError

DEFAULT_OPSET = 18
EXPORTERS = ("legacy", "dynamo", "auto")
try:  # the exporters' own limits
    from torch.onnx._constants import ONNX_MAX_OPSET as _MAX_OPSET
    from torch.onnx._constants import ONNX_MIN_OPSET as _MIN_OPSET
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as _LEGACY_MAX_OPSET
except ImportError:  # private module moved: the values of torch 2.4-2.15
    _MIN_OPSET, _LEGACY_MAX_OPSET, _MAX_OPSET = 7, 20, 23


class ExportError(RuntimeError):
    """An export or its parity check could not be done; the message is one line."""


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_opset(opset: int, exporter: str = "legacy") -> None:
    """Raise ValueError (one line) for an opset the chosen exporter cannot write."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    top = _LEGACY_MAX_OPSET if exporter == "legacy" else _MAX_OPSET
    if not _MIN_OPSET <= opset <= top:
        hint = (f"; the dynamo exporter goes up to {_MAX_OPSET}"
                if exporter == "legacy" and top < opset <= _MAX_OPSET else "")
        raise ValueError(f"opset {opset} is not supported by the {exporter} ONNX exporter "
                         f"(opsets {_MIN_OPSET}-{top}{hint})")


def _written_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _dynamic_axes(dynamic_batch: bool, dynamic_size: bool) -> dict:
    axes = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    return axes


def _export_legacy(model, x, path, opset, axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript exporter
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": axes, "logits": {0: "batch"} if 0 in axes else {}} if axes else None,
            do_constant_folding=True,
        )


def _export_dynamo(model, x, path, opset, axes):
    require("onnxscript", "onnx", "the dynamo ONNX exporter")
    import logging

    dims = {i: torch.export.Dim.AUTO for i in axes} if axes else None
    # Below opset 18 the dynamo exporter converts versions and logs a traceback when it
    # cannot; the opset actually written is checked by export_onnx instead.
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                output_names=["logits"], dynamic_shapes=(dims,) if dims else None, verbose=False,
            )
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    prog.save(str(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int, int] = (1, 3, 224, 224),
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
) -> Path:
    """Write ``model`` (put in eval mode) as ONNX to ``path``; returns the path.

    Input is named "input" (N, C, H, W float32), output "logits". A bad opset raises
    ValueError; an exporter failure, or a file written at another opset than asked,
    raises ExportError with a one-line message.
    """
    require("onnx", "onnx", "ONNX export")
    check_opset(opset, "dynamo" if exporter == "auto" else exporter)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"ONNX output {path} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = torch.randn(*input_size)
    axes = _dynamic_axes(dynamic_batch, dynamic_size)
    used = exporter
    try:
        if exporter == "dynamo":
            _export_dynamo(model, x, path, opset, axes)
        elif exporter == "legacy":
            _export_legacy(model, x, path, opset, axes)
        else:
            try:
                if opset > _LEGACY_MAX_OPSET:
                    raise ValueError("opset beyond the legacy exporter")
                used = "legacy"
                _export_legacy(model, x, path, opset, axes)
            except Exception:  # a model the tracer cannot handle: torch.export may
                used = "dynamo"
                _export_dynamo(model, x, path, opset, axes)
    except (MissingPackageError, InputShapeError):  # already one-line and actionable
        raise
    except Exception as e:
        raise ExportError(f"ONNX export of {type(model).__name__} failed ({used} exporter, opset {opset}): "
                          f"{type(e).__name__}: {_first_line(e)}") from e
    written = _written_opset(path)
    if written != opset:
        raise ExportError(f"the {used} exporter wrote opset {written}, not the requested {opset} "
                          f"(version conversion failed); ask for opset {written} or use another exporter")
    return path


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op threads."""
    ort = require("onnxruntime", "onnx", "the onnxruntime runtime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, x: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
    return torch.from_numpy(out)


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, threads: int | None = None) -> float:
    """max|Δ| between ONNX Runtime on ``path`` and eager ``model`` on the same input."""
    with torch.inference_mode():
        ref = model.eval()(x)
    try:
        session = ort_session(path, threads)
        out = run_session(session, x)
    except MissingPackageError:
        raise
    except Exception as e:  # onnxruntime's errors are long and multi-line
        raise ExportError(f"ONNX Runtime could not run {path} at input {tuple(x.shape)}: "
                          f"{type(e).__name__}: {_first_line(e)}") from e
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
    return float((out - ref).abs().max())


def export_and_check(model: nn.Module, input_size, path: str | Path | None = None, **kw) -> float:
    """Export to ``path`` (a temporary file when None) and return max|Δ| on a random input."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(path) if path else Path(tmp) / "model.onnx"
        export_onnx(model, target, input_size, **kw)
        x = torch.randn(*input_size)
        return check_onnx(model, target, x)
