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
    """A frozen TorchScript module of ``model`` in eval mode, traced on ``example``."""
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # trace deprecation / tracer warnings on shape math
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        if optimize:
            frozen = torch.jit.optimize_for_inference(frozen)
    return frozen


def export_torchscript(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224)) -> Path:
    """Trace, freeze and save ``model`` to ``path`` (load with torch.jit.load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # optimize_for_inference may insert MKLDNN ops that tie the file to this build; keep it portable.
    scripted = trace_and_freeze(model, torch.randn(*input_size), optimize=False)
    scripted.save(str(path))
    return path
