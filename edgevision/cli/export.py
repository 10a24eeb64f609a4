"""`edgevision export NAME --format onnx|torchscript|executorch|coreml [--check]`: deployable files,
parity-checked (ONNX Runtime, torch.jit.load, ExecuTorch's runtime)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte", "coreml": ".mlpackage"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or TorchScript (with --check: parity); "
                       "ExecuTorch/Core ML with their extras")
    p.add_argument("name", help="model name, e.g. emo_1m")
    p.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="file format (default onnx)")
    p.add_argument("--output", default=None, help="output file (default NAME.onnx / NAME.pt)")
    p.add_argument("--size", type=int, default=None, help="input side (default: the model's, 224)")
    p.add_argument("--batch", type=int, default=1, help="example batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--dynamic-size", action="store_true", help="ONNX: variable height and width")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo", "auto"],
                   help="ONNX exporter: legacy (TorchScript-based, fast), dynamo, or auto (legacy, then dynamo)")
    p.add_argument("--checkpoint", default=None, help="weights to load first (any supported format)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier size (default 1000)")
    p.add_argument("--check", action="store_true",
                   help="run the exported file (ONNX Runtime / torch.jit.load / ExecuTorch) and compare with eager")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |Δ| allowed by --check (default 1e-4)")
    p.set_defaults(func=run)


def _export(args, model, path, input_size):
    if args.format == "onnx":
        from edgevision.export.onnx import DEFAULT_OPSET, export_onnx

        return export_onnx(model, path, input_size, dynamic_batch=args.dynamic_batch,
                           dynamic_size=args.dynamic_size, opset=args.opset or DEFAULT_OPSET,
                           exporter=args.exporter)
    if args.format == "executorch":
        from edgevision.export.extras import export_executorch

        return export_executorch(model, path, input_size)
    if args.format == "coreml":
        from edgevision.export.extras import export_coreml

        return export_coreml(model, path, input_size)
    from edgevision.export.torchscript import export_torchscript

    return export_torchscript(model, path, input_size)


def _check_shapes(args, model, input_size) -> list[tuple]:
    """The export shape, plus one other shape per dynamic axis that was asked for."""
    b, c, h, w = input_size
    shapes = [input_size]
    if args.format == "onnx" and (args.dynamic_batch or args.dynamic_size):
        mult = getattr(model, "input_multiple", 1) or 1
        side = -(-(h + 32) // mult) * mult
        shapes.append((b + 1 if args.dynamic_batch else b, c,
                       side if args.dynamic_size else h, side if args.dynamic_size else w))
    return shapes


def _max_diff(args, model, path, x) -> tuple[float, float]:
    """(max|Δ| of the exported file vs eager on ``x``, max|logit| of eager) - the latter shows
    whether a tiny difference means anything (random weights can give near-zero logits)."""
    import torch

    with torch.inference_mode():
        scale = float(model(x).abs().max())
    if args.format == "onnx":
        from edgevision.export.onnx import check_onnx

        return check_onnx(model, path, x), scale
    if args.format == "executorch":
        from edgevision.export.extras import run_executorch

        with torch.inference_mode():
            return float((run_executorch(path, x) - model(x)).abs().max()), scale
    from edgevision.export.torchscript import load_torchscript

    loaded = load_torchscript(path)
    with torch.inference_mode():
        return float((loaded(x) - model(x)).abs().max()), scale


def _output_path(args) -> Path:
    """--output as given; an existing folder (other than a .mlpackage) gets NAME.ext inside it."""
    default = f"{args.name}{FORMATS[args.format]}"
    path = Path(args.output or default)
    if path.is_dir() and not (args.format == "coreml" and path.suffix == ".mlpackage"):
        path = path / default
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the output folder {parent} ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {parent} is not writable")
    return path


def run(args) -> int:
    import torch

    from edgevision.export._deps import MissingPackageError
    from edgevision.export.onnx import DEFAULT_OPSET, ExportError, check_opset
    from edgevision.factory import create_model
    from edgevision.models.base import InputShapeError
    from edgevision.registry import model_info

    info = model_info(args.name)  # unknown names fail here, with suggestions
    size = args.size or info.input_size[-1]
    if size < 1 or args.batch < 1:
        raise ValueError(f"--size and --batch must be >= 1; got size={size}, batch={args.batch}")
    if args.format != "onnx" and (args.dynamic_batch or args.dynamic_size or args.opset or args.exporter != "legacy"):
        raise ValueError("--dynamic-batch, --dynamic-size, --opset and --exporter apply to --format onnx only")
    if args.format == "onnx":
        check_opset(args.opset or DEFAULT_OPSET, "dynamo" if args.exporter == "auto" else args.exporter)
    if args.check and args.format == "coreml":
        raise ValueError("--check is not available for coreml (Core ML runs models on macOS only)")
    path = _output_path(args)
    model = create_model(args.name, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    input_size = (args.batch, model.in_chans if hasattr(model, "in_chans") else 3, size, size)
    try:
        try:
            _export(args, model, path, input_size)
        except (MissingPackageError, ExportError, InputShapeError):
            raise
        except Exception as e:  # tracer / torch.export / converter failures: long, multi-line
            from edgevision.export.onnx import _first_line

            raise ExportError(f"{args.format} export of {args.name} failed: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
        size_mb = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))) / 2**20
        print(f"wrote {path} ({size_mb:.1f} MB, {args.format}, input {input_size})")
        if not args.check:
            return 0
        gen = torch.Generator().manual_seed(0)
        try:
            diffs = {shape: _max_diff(args, model, path, torch.randn(*shape, generator=gen))
                     for shape in _check_shapes(args, model, input_size)}
        except (MissingPackageError, ExportError):
            raise
        except Exception as e:  # the written file does not load or run
            from edgevision.export.onnx import _first_line

            raise ExportError(f"running {path} for --check failed: {type(e).__name__}: {_first_line(e)}") from e
    except MissingPackageError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 1
    diff = max(d for d, _ in diffs.values())
    scale = max(sc for _, sc in diffs.values())
    ok = diff <= args.tolerance
    shapes = ", ".join(f"{tuple(s)}: {d:.2e}" for s, (d, _) in diffs.items())
    print(f"check: max|Δ| vs eager = {diff:.2e} (tolerance {args.tolerance:.0e}; per input {shapes}; "
          f"eager logits up to {scale:.2g}) -> {'ok' if ok else 'FAILED'}")
    if not ok:
        print(f"edgevision export: error: {args.name} {args.format} output differs from eager by "
              f"{diff:.2e} > {args.tolerance:.0e}", file=sys.stderr)
        return 1
    return 0
