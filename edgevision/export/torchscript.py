"""TorchScript export: trace + freeze (+ optimize_for_inference).

``torch.jit.trace`` is deprecated in torch 2.x but still the simplest self-contained
artifact loadable from C++ (``torch::jit::load``); freezing inlines weights and folds
BatchNorm into convs. Tracing records one input shape's control flow, which is fine for
our models (no data-dependent Python control flow by contract).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn


def trace_and_freeze(model: nn.Module, example: torch.Tensor, optimize: bool = True):
    """A frozen TorchScript module of ``model`` in eval mode, traced on ``example``.

    With ``optimize``, ``torch.jit.optimize_for_inference`` is applied too, but kept only
    when it reproduces the frozen module's output on ``example``: its MKLDNN conversion pass
    was seen changing outputs (max|Δ| 0.3 on tiny_moat_0, torch 2.15), and a fast wrong
    answer is worse than a slower right one.
    """
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # trace deprecation / tracer warnings on shape math
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
    """``torch.jit.load`` without its deprecation notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def export_torchscript(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224)) -> Path:
    """Trace, freeze and save ``model`` to ``path`` (load with torch.jit.load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # optimize_for_inference may insert MKLDNN ops that tie the file to this build; keep it portable.
    scripted = trace_and_freeze(model, torch.randn(*input_size), optimize=False)
    scripted.save(str(path))
    return path
