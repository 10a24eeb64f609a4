"""Optional mobile formats: ExecuTorch (XNNPACK .pte) and Core ML (.mlpackage).

Both go through ``torch.export``. Neither package is a dependency of the development
environment; the tests exercise the missing-package path always and the real exports when
the packages are present (checked here with executorch 1.5.1 and coremltools 9.0 beside
torch 2.15: both convert; the .pte runs in ExecuTorch's Python runtime and matches eager).
Flows as documented (ExecuTorch: ``to_edge_transform_and_lower`` with ``XnnpackPartitioner``;
coremltools >= 8: ``ct.convert`` of an ExportedProgram). Core ML predictions need macOS,
so a .mlpackage cannot be checked here.

Writing: the .pte goes through :func:`edgevision.io.atomic_write`. A .mlpackage is a folder,
which ``atomic_write`` (files) cannot take: it is saved to a hidden temporary folder beside
the destination and renamed into place, the old package moved aside first and removed only
after the new one is in place, so a failed save leaves an existing package intact and no
partial one behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from edgevision.export._deps import require
from edgevision.io import WriteError, atomic_write, translate_os_error


def _atomic_write_dir(path: Path, write_fn: Callable[[str], object]) -> None:
    """Write the folder ``path`` via ``write_fn(tmp_dir_path)`` (a fresh path beside it), then
    swap it in. Failures raise a one-line WriteError (I/O) or propagate (the writer's own)."""
    if path.exists() and not path.is_dir():
        raise WriteError(None, f"{path} exists and is a file, not a package folder", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        raise translate_os_error(e, path) from e
    target = work / path.name  # the writer creates the package folder itself
    old = None
    try:
        try:
            write_fn(str(target))
        except OSError as e:
            raise translate_os_error(e, path) from e
        try:
            if path.exists():
                old = work / (path.name + ".old")
                os.replace(path, old)
            os.replace(target, path)
        except OSError as e:
            if old is not None and old.exists() and not path.exists():
                os.replace(old, path)  # put the previous package back
            raise translate_os_error(e, path) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_executorch(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224),
                      verify: Callable[[Path], object] | None = None) -> Path:
    """XNNPACK-delegated ExecuTorch program (.pte) for ``model`` at a static input size.

    Written atomically; ``verify(tmp_path)`` runs on the temporary file before it replaces
    ``path`` (an exception from it leaves ``path`` as it was)."""
    exir = require("executorch.exir", "executorch", "ExecuTorch export")
    xnn = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch",
                  "ExecuTorch export")
    exported = torch.export.export(model.eval(), (torch.randn(*input_size),))
    program = exir.to_edge_transform_and_lower(
        exported, partitioner=[xnn.XnnpackPartitioner()]).to_executorch()
    data = program.buffer

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # the temporary file, renamed by atomic_write
            f.write(data)
        if verify is not None:
            verify(Path(tmp))

    path = Path(path)
    atomic_write(path, write, keep_suffix=True)
    return path


def export_coreml(model: nn.Module, path: str | Path, input_size=(1, 3, 224, 224)) -> Path:
    """Core ML ML Program (.mlpackage) for ``model`` at a static input size (convert only)."""
    ct = require("coremltools", "coreml", "Core ML export")
    exported = torch.export.export(model.eval(), (torch.randn(*input_size),)).run_decompositions({})
    mlmodel = ct.convert(exported, convert_to="mlprogram")
    path = Path(path)
    _atomic_write_dir(path, mlmodel.save)
    return path


def run_executorch(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Run a .pte program's ``forward`` on ``x`` in ExecuTorch's Python runtime (for --check)."""
    runtime = require("executorch.runtime", "executorch", "running an ExecuTorch program")
    method = runtime.Runtime.get().load_program(Path(path)).load_method("forward")
    return method.execute([x.contiguous()])[0]
