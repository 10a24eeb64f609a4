"""Optional mobile formats: ExecuTorch (XNNPACK .pte) and Core ML (.mlpackage).

Both go through ``torch.export``. Neither package is a dependency of the development
environment; the tests exercise the missing-package path always and the real exports when
the packages are present (checked here with executorch 1.5.1 and coremltools 9.0 beside
torch 2.15: both convert; the .pte runs in ExecuTorch's Python runtime and matches eager).
Flows as documented (ExecuTorch: ``to_edge_transform_and_lower`` with ``XnnpackPartitioner``;
coremltools >= 8: ``ct.convert`` of an ExportedProgram). Core ML predictions need macOS,
so a .mlpackage cannot be checked here.
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


def run_executorch(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Run a .pte program's ``forward`` on ``x`` in ExecuTorch's Python runtime (for --check)."""
    runtime = require("executorch.runtime", "executorch", "running an ExecuTorch program")
    method = runtime.Runtime.get().load_program(Path(path)).load_method("forward")
    return method.execute([x.contiguous()])[0]
