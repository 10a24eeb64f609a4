"""ONNX export of a sequence model at one window [1, C, T], with a parity check.

edgevision.export.onnx.export_onnx takes only image batches (its argument check wants four
ints, batch x channels x height x width), so a sensor window is exported here with torch's
own (dynamo) exporter and checked with the same ONNX Runtime helper
(:func:`edgevision.export.onnx.check_onnx`). Input "input" [B, C, T] float32, output "logits".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def export_sequence_onnx(model: nn.Module, path, input_size: tuple[int, int, int], opset: int = 18,
                         dynamic_batch: bool = True, tolerance: float | None = None) -> float:
    """Write ``model`` (eval mode) to ``path`` atomically; returns max|Δ| between ONNX Runtime
    and eager on a random window of ``input_size`` (batch, channels, steps). With ``tolerance``,
    a larger difference raises ExportError and ``path`` is left as it was."""
    from edgevision.export.onnx import ExportError, check_onnx
    from edgevision.io import atomic_write

    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (batch, channels, steps) of positive ints; got {input_size!r}")
    model = model.eval()
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                             output_names=["logits"], dynamic_shapes=shapes, verbose=False)
    diff = []

    def write(tmp: str) -> None:
        prog.save(tmp)
        diff.append(check_onnx(model, tmp, torch.randn(*size, generator=torch.Generator().manual_seed(1))))
        if tolerance is not None and diff[-1] > tolerance:
            raise ExportError(f"ONNX output differs from eager by {diff[-1]:.2e} > {tolerance:.0e}; "
                              f"{Path(path).name} was not written")

    atomic_write(Path(path), write, keep_suffix=True)
    return diff[-1]
