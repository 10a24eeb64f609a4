"""Optional mobile formats: ExecuTorch (XNNPACK .pte) and Core ML (.mlpackage).

Both go through ``torch.export``. Neither package is installed in the development
environment, so only the missing-package path is exercised by the tests here; the calls
follow the packages' documented flows (ExecuTorch: ``to_edge_transform_and_lower`` with
``XnnpackPartitioner``; coremltools >= 8: ``ct.convert`` of an ExportedProgram).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edgevision.export._deps import require


def export_executorch(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224)) -> Path:
    """XNNPACK-delegated ExecuTorch program (.pte) for ``model`` at a static input size."""
    exir = require("executorch.exir", "executorch", "ExecuTorch export")
    xnn = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch",
                  "ExecuTorch export")
    exported = torch.export.export(model.eval(), (torch.randn(*input_size),))
    program = exir.to_edge_transform_and_lower(
        exported, partitioner=[xnn.XnnpackPartitioner()]).to_executorch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)
    return path


def export_coreml(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224)) -> Path:
    """Core ML ML Program (.mlpackage) for ``model`` at a static input size (convert only)."""
    ct = require("coremltools", "coreml", "Core ML export")
    exported = torch.export.export(model.eval(), (torch.randn(*input_size),)).run_decompositions({})
    mlmodel = ct.convert(exported, convert_to="mlprogram")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path
