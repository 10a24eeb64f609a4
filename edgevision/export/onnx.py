"""ONNX export with parity checks in ONNX Runtime.

Exporters (``exporter=``):

- ``"dynamo"`` (default): the current exporter. The model is captured with
  ``torch.export.export(strict=False)`` and translated by ``torch.onnx.export(..., dynamo=True)``
  (needs ``onnxscript``, in the ``[onnx]`` extra). When it fails on a model (an operator it
  cannot translate, a capture error), the legacy exporter is used instead and an
  :class:`ExportFallbackWarning` names the dynamo error (``fallback=False`` makes that an error).
- ``"legacy"``: the TorchScript-tracer exporter (``dynamo=False``), deprecated by torch. Its
  deprecation notice and its ``TracerWarning``\\ s (a Python value computed from a tensor shape
  was frozen into the graph) reach the caller: nothing here silences a warning.

Export time, measured once here (torch 2.14.1, onnxscript 0.7.2, 2 threads, load ~1.5, static
224 px, opset 18, two runs of a one-off script): mobilenetv3_large_100 legacy 0.3-0.4 s, dynamo
3.2-3.3 s; efficientformer_l1 legacy 0.5-1.7 s, dynamo 2.9 s. Both matched eager in ONNX Runtime
equally (max|Δ| 1e-8 and 3e-7). The dynamo exporter is the default anyway: it is the one torch
maintains, and with dynamic height/width it keeps size arithmetic symbolic (or refuses) where
the tracer silently freezes it.

Dynamic shapes. ``dynamic_batch`` / ``dynamic_size`` mark the batch and the height/width as
dynamic. With dynamo they are explicit :class:`torch.export.Dim`\\ s (not ``Dim.AUTO``): height
and width start at the model's ``min_input_size`` and, for a model with ``input_multiple`` m > 1,
are ``Dim(...) * m``. torch.export then refuses (or, for derived dims, narrows the range of) a
size it cannot keep symbolic; ONNX cannot carry a narrowed range or torch's run-time guards, so
a narrowed range is refused here with :class:`DynamicShapeError` instead of writing a file that
is wrong outside it, and no legacy fallback is tried (the tracer would freeze the same branch
silently). A legacy dynamic-size export of a model that declares ``size_breakpoints`` (input
sides where its computation changes, e.g. tiny-MOAT's global -> windowed attention above
256 px) is refused for the same reason.

Parity: :func:`check_shapes` lists the inputs an export must be checked at: the export size,
and for a dynamic export a smaller and a larger (non-square) size plus every breakpoint
+-``input_multiple``; :func:`verify_onnx` runs them in ONNX Runtime against eager and raises
:class:`ExportError` (one line) when any differs beyond the tolerance. ``edgevision export
--check`` runs both on the temporary file, so a file that fails its check never replaces the
destination.

Dense task models (detection, segmentation: they have ``export_output_names``) are exported
as their ``export_forward`` (:func:`export_view`): the raw head tensors of an already resized
and normalised batch, one ONNX output per name (no NMS in the graph); ``--check`` compares
every output.

Files are written through :func:`edgevision.io.atomic_write` (a temporary file in the same
folder, renamed over the destination): a failed export (disk full, exporter crash, wrong opset,
failed ``verify``) leaves an existing file untouched and no partial file behind.
"""

from __future__ import annotations

import math
import numbers
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgevision.export._deps import MissingPackageError, require
from edgevision.io import atomic_write
from edgevision.models.base import InputShapeError

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "legacy")
try:  # the exporters' own limits
    from torch.onnx._constants import ONNX_MAX_OPSET as _MAX_OPSET
    from torch.onnx._constants import ONNX_MIN_OPSET as _MIN_OPSET
    from torch.onnx._constants import (
        ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as _LEGACY_MAX_OPSET,
    )
except ImportError:  # private module moved: the values of torch 2.4-2.15
    _MIN_OPSET, _LEGACY_MAX_OPSET, _MAX_OPSET = 7, 20, 23


class ExportError(RuntimeError):
    """An export or its parity check could not be done; the message is one line."""


class DynamicShapeError(ExportError):
    """The model cannot be exported with the requested dynamic sizes (a size-dependent branch)."""


class ExportFallbackWarning(UserWarning):
    """The dynamo exporter failed and the legacy TorchScript exporter was used; names the error."""


class _ExportForward(nn.Module):
    """``forward = model.export_forward`` (the exported view of a dense task model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for attr in ("in_chans", "min_input_size", "input_multiple", "size_breakpoints", "export_output_names"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))

    def forward(self, x: torch.Tensor):
        return tuple(self.model.export_forward(x))


def export_view(model: nn.Module) -> nn.Module:
    """What is exported and checked: ``model.export_forward`` for a dense task model (one that
    declares ``export_output_names``), else the model itself."""
    if isinstance(model, _ExportForward) or not hasattr(model, "export_output_names"):
        return model
    return _ExportForward(model)


def output_names(model: nn.Module) -> list[str]:
    """ONNX output names: the model's ``export_output_names``, else ["logits"]."""
    return list(getattr(model, "export_output_names", ("logits",)))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _ints(model: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    """(smallest valid side, required multiple, size breakpoints) declared by ``model``."""
    mult = max(int(getattr(model, "input_multiple", 1) or 1), 1)
    low = max(int(getattr(model, "min_input_size", 1) or 1), 1)
    # a model may run smaller sizes eagerly than one dynamic program covers (min_export_size)
    low = max(low, int(getattr(model, "min_export_size", 0) or 0))
    low = -(-low // mult) * mult
    breakpoints = tuple(int(b) for b in (getattr(model, "size_breakpoints", ()) or ()))
    return low, mult, breakpoints


def check_export_args(model, path, input_size, **flags) -> tuple[Path, tuple[int, int, int, int]]:
    """The export functions' argument checks, before any tracing: a TypeError/ValueError naming
    the argument (``model`` not a module, ``input_size`` not four positive ints, an empty
    ``path``, a flag that is not a bool). Returns (path, input_size)."""
    from edgevision.io import as_path

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. edgevision.create_model(name)); "
                        f"got {type(model).__name__}")
    path = as_path(path, "path")
    try:
        size = tuple(input_size)
    except TypeError:
        size = None
    if size is None or len(size) != 4 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                 for v in size):
        raise TypeError(f"input_size must be four ints (batch, channels, height, width); got {input_size!r}")
    size = tuple(int(v) for v in size)
    if min(size) < 1:
        raise ValueError(f"input_size must be positive; got {size}")
    for arg, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{arg} must be True or False; got {value!r}")
    return path, size


def check_opset(opset: int, exporter: str = "dynamo") -> None:
    """Raise ValueError (one line) for an opset the chosen exporter cannot write."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int; got {type(opset).__name__}")
    top = _LEGACY_MAX_OPSET if exporter == "legacy" else _MAX_OPSET
    if not _MIN_OPSET <= opset <= top:
        hint = (f"; the dynamo exporter goes up to {_MAX_OPSET}"
                if exporter == "legacy" and top < opset <= _MAX_OPSET else "")
        raise ValueError(f"opset {opset} is not supported by the {exporter} ONNX exporter "
                         f"(opsets {_MIN_OPSET}-{top}{hint})")


def _written_opset(path: str | Path) -> int | None:
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


# ------------------------------------------------------------------------------ legacy exporter
def _dynamic_axes(dynamic_batch: bool, dynamic_size: bool) -> dict:
    axes = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    return axes


def _export_legacy(model, x, path, opset, axes):
    """The TorchScript-tracer exporter; its warnings (deprecation, TracerWarning) are not hidden."""
    names = output_names(model)
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=opset,
        input_names=["input"], output_names=names,
        dynamic_axes={"input": axes, **{n: {0: "batch"} if 0 in axes else {} for n in names}} if axes else None,
        do_constant_folding=True,
    )


# ------------------------------------------------------------------------------ dynamo exporter
def _dynamic_spec(model, x: torch.Tensor, dynamic_batch: bool, dynamic_size: bool):
    """(example input, dynamic_shapes for torch.export, {dim: (name, coefficient, min)}).

    Example sizes of 1 (batch, or one block of ``input_multiple``) are raised to 2: torch.export
    specializes dimensions seen as 0 or 1, and the graph does not depend on the example.
    """
    from torch.export import Dim

    b, c, h, w = x.shape
    dims, info = {}, {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1)
        info[0] = ("batch", 1, 1)
        b = max(b, 2)
    if dynamic_size:
        low, mult, _ = _ints(model)
        sides = []
        for i, name, side in ((2, "height", h), (3, "width", w)):
            dims[i] = Dim(f"{name}_blocks", min=low // mult) * mult if mult > 1 else Dim(name, min=low)
            info[i] = (name, mult, low)
            sides.append(max(side, 2 * mult))
        h, w = sides
    if tuple(x.shape) != (b, c, h, w):
        x = torch.randn(b, c, h, w)
    return x, (dims,) if dims else None, info


def _check_ranges(ep, info: dict, name: str) -> None:
    """Refuse an ExportedProgram whose dynamic dims torch.export narrowed (a size branch)."""
    import sympy
    from torch.utils._sympy.numbers import int_oo

    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder"
                       and n.name in ep.graph_signature.user_inputs)
    shape = placeholder.meta["val"].shape
    for dim, (dim_name, coef, low) in info.items():
        size = shape[dim]
        if not isinstance(size, torch.SymInt):
            raise DynamicShapeError(f"{name}: torch.export made the {dim_name} a constant {size} "
                                    f"(the model's code fixes it); export with a fixed {dim_name}")
        symbols = [s for s in size.node.expr.free_symbols if isinstance(s, sympy.Symbol)]
        ranges = [ep.range_constraints.get(s) for s in symbols]
        for r in ranges:
            if r is None:
                continue
            lo, hi = int(r.lower) * coef, r.upper
            bounded = hi != int_oo and hi != sympy.oo
            if bounded or lo > max(low, 2 * coef):
                top = f"{int(hi) * coef}" if bounded else "any"
                raise DynamicShapeError(
                    f"{name} cannot be exported with a dynamic {dim_name}: its code depends on the "
                    f"size (torch.export keeps only {dim_name}s {lo}..{top}, and ONNX cannot carry that "
                    f"limit); export at a fixed size")


def _is_dynamic_shape_error(e: BaseException) -> bool:
    """torch.export found the requested sizes cannot stay dynamic. (torch 2.14 sometimes fails
    with "Cannot create Dim with inconsistent min/max" while phrasing that very error.)"""
    from torch._dynamo.exc import UserError

    text = str(e)
    return isinstance(e, DynamicShapeError) or (
        isinstance(e, UserError) and ("Constraints violated" in text or "specialized" in text)) or (
        isinstance(e, AssertionError) and "Cannot create Dim" in text)


def _guard_summary(e: BaseException, limit: int = 160) -> str:
    """The first size condition torch.export reported, with the input's dims named, else its first line."""
    import re

    for line in str(e).splitlines():
        m = re.search(r"satisfy the generated guard (.*)", line)
        if m:
            guard = m.group(1).rstrip(".")
            for i, dim in ((0, "batch"), (2, "height"), (3, "width")):
                guard = re.sub(rf"L\['\w+'\]\.size\(\)\[{i}\]", dim, guard)
            guard = guard if len(guard) <= limit else guard[: limit - 3] + "..."
            return f"torch.export needs {guard}"
    return f"{type(e).__name__}: {_first_line(e)}"


def _size_oblivious():
    """torch.export treats a size seen as 1 as special (it might broadcast) and guards on it,
    which fails dynamic height/width of every CNN (a 32 px input has 1x1 maps at stride 32).
    torch.onnx's own capture turns that off the same way; private config, so optional."""
    import contextlib

    try:
        return torch.fx.experimental._config.patch(backed_size_oblivious=True)
    except (AttributeError, KeyError):
        return contextlib.nullcontext()


def _export_dynamo(model, x, opset, dynamic_batch=False, dynamic_size=False):
    """torch.export + ONNX translation in memory: returns the ONNXProgram (``.save(path)``)."""
    require("onnxscript", "onnx", "the dynamo ONNX exporter")
    name = type(model).__name__
    x, dynamic_shapes, info = _dynamic_spec(model, x, dynamic_batch, dynamic_size)
    try:
        with _size_oblivious():
            ep = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        if dynamic_shapes and _is_dynamic_shape_error(e):
            dims = " and ".join(d for d, on in (("batch", dynamic_batch), ("height/width", dynamic_size)) if on)
            raise DynamicShapeError(f"{name} cannot be exported with a dynamic {dims}: its code depends on "
                                    f"the size ({_guard_summary(e)}); export at a fixed size") from e
        raise
    if info:
        _check_ranges(ep, info, name)
    # An ExportedProgram carries its dynamic shapes; the ONNX translation adds no guessing of its own.
    prog = torch.onnx.export(ep, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                             output_names=output_names(model), verbose=False)
    written = prog.model.opset_imports.get("", None)
    if written != opset:
        raise ExportError(f"the dynamo exporter produced opset {written}, not the requested {opset} "
                          f"(its version conversion failed)")
    return prog


# ------------------------------------------------------------------------------ export_onnx
def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int, int] = (1, 3, 224, 224),
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    fallback: bool = True,
    verify: Callable[[Path], object] | None = None,
    on_fallback: Callable[[str], object] | None = None,
) -> Path:
    """Write ``model`` (put in eval mode) as ONNX to ``path`` atomically; returns the path.

    Input is named "input" (N, C, H, W float32), output "logits". ``exporter="dynamo"``
    (default) falls back to the legacy exporter with an :class:`ExportFallbackWarning` when
    it fails, unless ``fallback=False`` or the failure is a size the model cannot keep dynamic
    (:class:`DynamicShapeError`); ``on_fallback(message)`` receives that notice instead of the
    warning when given. ``verify(tmp_path)``, when given, runs on the written
    temporary file before it replaces ``path``; an exception from it leaves ``path`` as it was.
    A bad opset raises ValueError; an exporter failure, or a file at another opset than asked,
    raises ExportError with a one-line message; I/O failures raise ``edgevision.io.WriteError``.
    """
    path, input_size = check_export_args(model, path, input_size, dynamic_batch=dynamic_batch,
                                         dynamic_size=dynamic_size, fallback=fallback)
    require("onnx", "onnx", "ONNX export")
    check_opset(opset, exporter)
    name = type(model).__name__
    model = export_view(model.eval())
    x = torch.randn(*input_size)
    _, _, breakpoints = _ints(model)
    prog, used, why = None, exporter, None
    try:
        if exporter == "dynamo":
            try:
                prog = _export_dynamo(model, x, opset, dynamic_batch, dynamic_size)
            except (MissingPackageError, InputShapeError, DynamicShapeError):
                raise
            except Exception as e:
                if not fallback:
                    raise
                if opset > _LEGACY_MAX_OPSET:
                    raise ExportError(f"ONNX export of {name} failed (dynamo exporter, opset {opset}): "
                                      f"{type(e).__name__}: {_first_line(e)}; the legacy exporter cannot "
                                      f"write opset {opset} (at most {_LEGACY_MAX_OPSET})") from e
                used, why = "legacy", f"{type(e).__name__}: {_first_line(e)}"
        if used == "legacy" and dynamic_size and breakpoints:
            reason = f" (the dynamo exporter failed: {why})" if why else ""
            raise DynamicShapeError(
                f"{name} cannot be exported with dynamic height/width by the legacy exporter{reason}: the "
                f"tracer freezes its size-dependent branches (input sides {', '.join(map(str, breakpoints))}); "
                f"export at a fixed size")
        if why:
            note = (f"the dynamo ONNX exporter failed on {name} ({why}); exporting with the legacy "
                    f"TorchScript exporter instead")
            if on_fallback is not None:  # e.g. the CLI prints it as one line
                on_fallback(note)
            else:
                warnings.warn(note, ExportFallbackWarning, stacklevel=2)
    except (MissingPackageError, InputShapeError, ExportError):
        raise
    except Exception as e:
        raise ExportError(f"ONNX export of {name} failed ({used} exporter, opset {opset}): "
                          f"{type(e).__name__}: {_first_line(e)}") from e

    def write(tmp: str) -> None:
        if prog is not None:
            prog.save(tmp)
        else:
            try:
                _export_legacy(model, x, tmp, opset, _dynamic_axes(dynamic_batch, dynamic_size))
            except (MissingPackageError, InputShapeError, OSError):
                raise
            except Exception as e:
                raise ExportError(f"ONNX export of {name} failed (legacy exporter, opset {opset}): "
                                  f"{type(e).__name__}: {_first_line(e)}") from e
        written = _written_opset(tmp)
        if written != opset:
            raise ExportError(f"the {used} exporter wrote opset {written}, not the requested {opset} "
                              f"(version conversion failed); ask for opset {written} or use another exporter")
        if verify is not None:
            verify(Path(tmp))

    atomic_write(path, write, keep_suffix=True)
    return path


# ------------------------------------------------------------------------------ running and checking
# ONNX Runtime transformers our sessions turn off. WeightBiasQuantization (ORT >= 1.2x) quantizes
# the float weights of any conv that sits between a DequantizeLinear and a QuantizeLinear, which
# is exactly a layer that mixed precision keeps fp32. It rounds them with its own scheme, and
# on a fine-tuned Lite0 one such depthwise conv raised the int8 output error from 3.5e-2 (that
# transformer off) to 3.4e-1. On a file with no fp32 layers it has nothing to do.
DISABLED_ORT_OPTIMIZERS = ["WeightBiasQuantization"]


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op threads."""
    ort = require("onnxruntime", "onnx", "the onnxruntime runtime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_ORT_OPTIMIZERS)


def run_session(session, x: torch.Tensor) -> torch.Tensor:
    return run_session_all(session, x)[0]


def run_session_all(session, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every output of the session (a dense model's heads), in the graph's order."""
    name = session.get_inputs()[0].name
    outs = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
    return tuple(torch.from_numpy(o) for o in outs)


def _run_checked(session, path, x: torch.Tensor, all_outputs: bool = False):
    """run_session's output; with all_outputs, a tuple of every output (run_session's alone for a
    single-output model, so one patched run_session covers both)."""
    try:
        if all_outputs and len(session.get_outputs()) > 1:
            return run_session_all(session, x)
        return (run_session(session, x),) if all_outputs else run_session(session, x)
    except Exception as e:  # onnxruntime's errors are long and multi-line
        raise ExportError(f"ONNX Runtime could not run {path} at input {tuple(x.shape)}: "
                          f"{type(e).__name__}: {_first_line(e)}") from e


def _load_session(path, threads):
    """An ONNX Runtime session on ``path``; a file it cannot load is an ExportError (one line)."""
    try:
        return ort_session(path, threads)
    except MissingPackageError:
        raise
    except Exception as e:
        raise ExportError(f"ONNX Runtime could not load {path}: {type(e).__name__}: {_first_line(e)}") from e


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, threads: int | None = None) -> float:
    """max|Δ| between ONNX Runtime on ``path`` and eager ``model`` on the same input."""
    with torch.inference_mode():
        ref = export_view(model.eval())(x)
    refs = tuple(ref) if isinstance(ref, (tuple, list)) else (ref,)
    session = _load_session(path, threads)
    outs = _run_checked(session, path, x, all_outputs=True)
    for out, r in zip(outs, refs):
        if out.shape != r.shape:
            raise ValueError(f"ONNX output shape {tuple(out.shape)} differs from eager {tuple(r.shape)}")
    return max(float((o - r).abs().max()) for o, r in zip(outs, refs))


def check_shapes(model: nn.Module, input_size, dynamic_batch: bool = False,
                 dynamic_size: bool = False) -> list[tuple[int, int, int, int]]:
    """The inputs a parity check of an export must cover.

    Always the export shape. A dynamic batch adds batch+1. A dynamic height/width adds a
    smaller valid size, a larger non-square one and, for each of the model's
    ``size_breakpoints`` (input sides where its computation changes), the breakpoint and one
    ``input_multiple`` (1 px when any size works) below and above it, square and mixed
    (height below, width above), so both sides of every size-dependent branch are run.
    Sizes below ``min_input_size`` or off the multiple are left out.
    """
    b, c, h, w = (int(v) for v in input_size)
    shapes = [(b, c, h, w)]
    b2 = b + 1 if dynamic_batch else b
    if dynamic_size:
        low, mult, breakpoints = _ints(model)

        def up(s: int) -> int:
            return -(-s // mult) * mult

        smaller = max(low, up(min(h, w) // 2))
        if smaller < min(h, w):
            shapes.append((b, c, smaller, smaller))
        shapes.append((b2, c, up(h + 32), up(w + 64)))
        for bp in breakpoints:
            below, above = bp - mult, bp + mult
            for hh, ww in ((below, below), (bp, bp), (above, above), (below, above)):
                if min(hh, ww) >= low and hh % mult == 0 and ww % mult == 0:
                    shapes.append((b, c, hh, ww))
    elif dynamic_batch:
        shapes.append((b2, c, h, w))
    return list(dict.fromkeys(shapes))


def verify_onnx(model: nn.Module, path: str | Path, shapes, tolerance: float = 1e-4,
                threads: int | None = None, seed: int = 0) -> dict[tuple, tuple[float, float]]:
    """Run ``path`` in ONNX Runtime and ``model`` eagerly on a random input of each shape.

    Returns ``{shape: (max|Δ|, max|eager logit|)}``; raises :class:`ExportError` (one line,
    naming the worst shape) when any max|Δ| exceeds ``tolerance``.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or math.isnan(tolerance) \
            or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0; got {tolerance!r}")
    session = _load_session(path, threads)
    gen = torch.Generator().manual_seed(seed)
    model = export_view(model.eval())
    results = {}
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            ref = model(x)
        refs = tuple(ref) if isinstance(ref, (tuple, list)) else (ref,)
        outs = _run_checked(session, path, x, all_outputs=True)
        if len(outs) != len(refs):
            raise ExportError(f"the ONNX file has {len(outs)} outputs, eager {len(refs)}")
        for out, r in zip(outs, refs):
            if out.shape != r.shape:
                raise ExportError(f"ONNX output shape {tuple(out.shape)} differs from eager {tuple(r.shape)} "
                                  f"at input {tuple(shape)}")
        results[tuple(shape)] = (max(float((o - r).abs().max()) for o, r in zip(outs, refs)),
                                 max(float(r.abs().max()) for r in refs))
    worst = max(results, key=lambda s: results[s][0])
    if results[worst][0] > tolerance:
        raise ExportError(f"{type(model).__name__} ONNX output differs from eager by {results[worst][0]:.2e} "
                          f"> {tolerance:.0e} at input {worst} (checked {len(results)} input sizes)")
    return results


def export_and_check(model: nn.Module, input_size, path: str | Path | None = None, **kw) -> float:
    """Export to ``path`` (a temporary file when None) and return max|Δ| on a random input."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(path) if path else Path(tmp) / "model.onnx"
        export_onnx(model, target, input_size, **kw)
        x = torch.randn(*input_size)
        return check_onnx(model, target, x)
