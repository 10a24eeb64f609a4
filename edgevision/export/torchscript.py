"""TorchScript export: trace + freeze (+ optimize_for_inference).

``torch.jit.trace`` is deprecated in torch 2.x but still the simplest self-contained
artifact loadable from C++ (``torch::jit::load``); freezing inlines weights and folds
BatchNorm into convs. Tracing records one input shape's control flow: a TorchScript file
runs at the traced size; other sizes may take the wrong side of a size-dependent branch.
The tracer's warnings (its deprecation notice, ``TracerWarning`` for a Python value computed
from a tensor) are not silenced: they reach the caller.

The file is serialized in memory and written with :func:`edgevision.io.atomic_write`: a full
disk is a one-line ``WriteError`` (torch's own C++ writer aborted the process on ENOSPC) and
an existing file is left intact.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from edgevision.io import atomic_write


def trace_and_freeze(model: nn.Module, example: torch.Tensor, optimize: bool = True):
    """A frozen TorchScript module of ``model`` in eval mode, traced on ``example``.

    With ``optimize``, ``torch.jit.optimize_for_inference`` is applied too, but kept only
    when it reproduces the frozen module's output on ``example``: its MKLDNN conversion pass
    was seen changing outputs (max|Δ| 0.3 on tiny_moat_0, torch 2.15), and a fast wrong
    answer is worse than a slower right one.
    """
    from edgevision.models.base import check_input_shape

    check_input_shape(model, example)  # in eager: the traced graph carries no Python checks
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        if not optimize:
            return frozen
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(traced))  # works in place
        ref = frozen(example)
        diff = float((optimized(example) - ref).abs().max())
    if diff <= 1e-4 * max(1.0, float(ref.abs().max())):
        return optimized
    warnings.warn(f"torch.jit.optimize_for_inference changed the outputs of {type(model).__name__} by "
                  f"{diff:.2e}; using the frozen module without it", RuntimeWarning, stacklevel=2)
    return frozen


def load_torchscript(path: str | Path):
    """``torch.jit.load`` of a file written by :func:`export_torchscript`."""
    return torch.jit.load(str(path))


def export_torchscript(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224),
                       verify: Callable[[Path], object] | None = None) -> Path:
    """Trace, freeze and save ``model`` to ``path`` atomically (load with torch.jit.load).

    ``verify(tmp_path)``, when given, runs on the written temporary file before it replaces
    ``path``; an exception from it leaves ``path`` as it was.
    """
    from edgevision.export.onnx import check_export_args

    path, input_size = check_export_args(model, path, input_size)
    # optimize_for_inference may insert MKLDNN ops that tie the file to this build; keep it portable.
    scripted = trace_and_freeze(model, torch.randn(*input_size), optimize=False)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # the temporary file, renamed by atomic_write
            f.write(buffer.getbuffer())
        if verify is not None:
            verify(Path(tmp))

    atomic_write(path, write, keep_suffix=True)
    return path
