"""`edgevision export NAME --format onnx|torchscript|executorch|coreml [--check]`: deployable files,
parity-checked (ONNX Runtime, torch.jit.load, ExecuTorch's runtime).

Files are written atomically (a temporary file beside the destination, renamed over it). With
``--check`` the parity check runs on that temporary file, so a file that fails its check, like
one whose export fails, never replaces an existing one. A dynamic-size ONNX export is checked
at the sizes :func:`edgevision.export.onnx.check_shapes` lists: the export size, a smaller and
a larger one and both sides of each of the model's ``size_breakpoints``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgevision.cli._args import float_range, int_range, non_negative_int

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte", "coreml": ".mlpackage"}
MAX_SIDE = 8192  # largest --size accepted (a 8192^2 float image is 800 MB per batch item)
MAX_BATCH = 1024
# torch.onnx's opset limits (torch 2.14: 7-23; the legacy exporter stops at 20). Kept literal so
# that parsing does not import torch; run() checks the chosen exporter's exact range again.
OPSETS = (7, 23)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or TorchScript (with --check: parity); "
                       "ExecuTorch/Core ML with their extras")
    p.add_argument("name", help="model name, e.g. emo_1m")
    p.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="file format (default onnx)")
    p.add_argument("--output", default=None, help="output file (default NAME.onnx / NAME.pt)")
    p.add_argument("--size", type=int_range(1, MAX_SIDE), default=None,
                   help="input side in pixels (default: the model's, 224; a detection/segmentation "
                        "model's own input size, e.g. 320 for SSDLite, 800x1344 for RetinaNet)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=1, help="example batch size (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--dynamic-size", action="store_true", help="ONNX: variable height and width")
    p.add_argument("--opset", type=int_range(*OPSETS), default=None,
                   help="ONNX opset (default 18; the legacy exporter writes at most 20)")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"],
                   help="ONNX exporter: dynamo (torch.export, default; falls back to legacy with a warning "
                        "when it fails) or legacy (the deprecated TorchScript tracer)")
    p.add_argument("--no-fallback", action="store_true",
                   help="ONNX: fail instead of falling back to the legacy exporter when dynamo fails")
    p.add_argument("--checkpoint", default=None, help="weights to load first (any supported format)")
    p.add_argument("--num-classes", type=non_negative_int, default=None,
                   help="classifier size (default: the model's, 1000 for classifiers, 91 for COCO "
                        "detectors; 0: features)")
    p.add_argument("--check", action="store_true",
                   help="run the exported file (ONNX Runtime / torch.jit.load / ExecuTorch) and compare with "
                        "eager before it is written; dynamic ONNX exports at several sizes")
    p.add_argument("--tolerance", type=float_range(0.0), default=1e-4,
                   help="max |Δ| allowed by --check (default 1e-4)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX: also write NAME.int8.onnx (static int8, per-channel) and say whether int8 is "
                        "faster than fp32 on this machine (measured side by side; fp32 is advised when not)")
    p.add_argument("--int8-rounding", choices=["nearest", "gptq"], default="nearest",
                   help="--int8: round weights to the nearest int8 value, or by GPTQ (error-compensating, "
                        "fitted on the calibration images; BN folded)")
    p.add_argument("--calibration", default=None,
                   help="--int8: folder of calibration images (default: the bundled sample photos)")
    p.set_defaults(func=run)


def _validate(args, info) -> int:
    """What the argparse ranges (edgevision.cli._args) cannot check: option combinations and the
    chosen exporter's opsets (ValueError, one line). Returns the input side."""
    from edgevision.export.onnx import DEFAULT_OPSET, check_opset

    onnx_only = args.dynamic_batch or args.dynamic_size or args.opset is not None \
        or args.exporter != "dynamo" or args.no_fallback
    if args.format != "onnx" and onnx_only:
        raise ValueError("--dynamic-batch, --dynamic-size, --opset, --exporter and --no-fallback apply to "
                         "--format onnx only")
    if args.format == "onnx":
        check_opset(DEFAULT_OPSET if args.opset is None else args.opset, args.exporter)
    if getattr(args, "int8", False) and (args.format != "onnx" or args.dynamic_size):
        raise ValueError("--int8 applies to --format onnx at a fixed size (no --dynamic-size)")
    if args.check and args.format == "coreml":
        raise ValueError("--check is not available for coreml (Core ML runs models on macOS only)")
    return info.input_size[-1] if args.size is None else args.size


def _export(args, model, path, input_size, verify):
    if args.format == "onnx":
        import sys

        from edgevision.export.onnx import DEFAULT_OPSET, export_onnx

        def note(message: str) -> None:  # one line, not Python's two-line warning format
            print(f"edgevision export: note: {message}", file=sys.stderr)

        return export_onnx(model, path, input_size, dynamic_batch=args.dynamic_batch,
                           dynamic_size=args.dynamic_size,
                           opset=DEFAULT_OPSET if args.opset is None else args.opset,
                           exporter=args.exporter, fallback=not args.no_fallback, verify=verify,
                           on_fallback=note)
    if args.format == "executorch":
        from edgevision.export.extras import export_executorch

        return export_executorch(model, path, input_size, verify=verify)
    if args.format == "coreml":
        from edgevision.export.extras import export_coreml

        return export_coreml(model, path, input_size)
    from edgevision.export.torchscript import export_torchscript

    return export_torchscript(model, path, input_size, verify=verify)


def _check(args, model, input_size, results: dict):
    """The --check run on the temporary file: fills ``results`` {shape: (max|Δ|, max|eager|)}
    and raises ExportError (one line) when any shape is beyond the tolerance."""
    import torch

    from edgevision.export.onnx import ExportError, check_shapes, verify_onnx

    def verify(tmp: Path) -> None:
        if args.format == "onnx":
            shapes = check_shapes(model, input_size, args.dynamic_batch, args.dynamic_size)
            try:
                results.update(verify_onnx(model, tmp, shapes, float("inf")))
            finally:
                _report(args, results)
        else:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(*input_size, generator=gen)
            try:
                if args.format == "executorch":
                    from edgevision.export.extras import run_executorch

                    out = run_executorch(tmp, x)
                else:
                    from edgevision.export.torchscript import load_torchscript

                    with torch.inference_mode():
                        out = load_torchscript(tmp)(x)
            except Exception as e:  # the written file does not load or run
                from edgevision.export.onnx import _first_line

                raise ExportError(f"running the {args.format} file for --check failed: {type(e).__name__}: "
                                  f"{_first_line(e)}") from e
            with torch.inference_mode():
                ref = model(x)
            results[tuple(input_size)] = (float((out - ref).abs().max()), float(ref.abs().max()))
            _report(args, results)
        worst = max(results, key=lambda s: results[s][0])
        if results[worst][0] > args.tolerance:
            raise ExportError(f"{args.name} {args.format} output differs from eager by {results[worst][0]:.2e} "
                              f"> {args.tolerance:.0e} at input {worst}; the file was not written")

    return verify


def _export_sequence(args, model, path: Path) -> int:
    """A sensor-window model: ONNX only, one window (batch, channels, steps); --size sets the steps."""
    from edgevision.export.onnx import ExportError
    from edgevision.tasks.sequence.export import export_sequence_onnx

    if args.format != "onnx" or args.dynamic_size or getattr(args, "int8", False):
        raise ValueError(f"{args.name} is a sensor-sequence model: export it with --format onnx "
                         "(no --dynamic-size, no --int8)")
    steps = model.pretrained_cfg["input_size"][-1] if args.size is None else args.size
    size = (args.batch, model.in_chans, steps)
    try:
        diff = export_sequence_onnx(model, path, size, dynamic_batch=args.dynamic_batch,
                                    tolerance=args.tolerance if args.check else None)
    except ExportError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 1
    if args.check:
        print(f"check: max|Δ| vs eager = {diff:.2e} (tolerance {args.tolerance:.0e}) -> ok")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, onnx, input {size})")
    return 0


def _report(args, results: dict) -> None:
    if not results:
        return
    diff = max(d for d, _ in results.values())
    scale = max(sc for _, sc in results.values())
    shapes = ", ".join(f"{tuple(s)}: {d:.2e}" for s, (d, _) in results.items())
    ok = diff <= args.tolerance
    print(f"check: max|Δ| vs eager = {diff:.2e} (tolerance {args.tolerance:.0e}; per input {shapes}; "
          f"eager logits up to {scale:.2g}) -> {'ok' if ok else 'FAILED'}")


def _output_path(args) -> Path:
    """--output as given; an existing folder (other than a .mlpackage) gets NAME.ext inside it."""
    default = f"{args.name}{FORMATS[args.format]}"
    path = Path(args.output or default)
    if path.is_dir() and not (args.format == "coreml" and path.suffix == ".mlpackage"):
        path = path / default
    if path.is_file():  # replacing an earlier export is fine; replacing other files is refused
        if args.checkpoint and path.resolve() == Path(args.checkpoint).resolve():
            raise ValueError(f"--output {path} is the --checkpoint being exported; choose another --output")
        if path.suffix.lower() != FORMATS[args.format]:
            raise FileExistsError(f"--output {path} exists and is not a {FORMATS[args.format]} file; refusing to "
                                  f"overwrite it with the {args.format} export (remove it or choose another path)")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the output folder {parent} ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder {parent} is not writable")
    return path


def run(args) -> int:
    from edgevision.export._deps import MissingPackageError
    from edgevision.export.onnx import ExportError, _first_line
    from edgevision.factory import create_model
    from edgevision.io import WriteError
    from edgevision.models.base import InputShapeError
    from edgevision.registry import model_info

    info = model_info(args.name)  # unknown names fail here, with suggestions
    size = _validate(args, info)
    path = _output_path(args)
    model = create_model(args.name, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    if info.task == "sequence":
        return _export_sequence(args, model, path)
    # dense models export export_forward (raw head outputs) at their own size unless --size is given
    hw = tuple(model.export_input_size) if args.size is None and hasattr(model, "export_input_size") \
        else (size, size)
    input_size = (args.batch, getattr(model, "in_chans", 3), *hw)
    results: dict = {}
    verify = _check(args, model, input_size, results) if args.check else None
    try:
        try:
            _export(args, model, path, input_size, verify)
        except (MissingPackageError, ExportError, InputShapeError, WriteError):
            raise
        except Exception as e:  # tracer / torch.export / converter failures: long, multi-line
            raise ExportError(f"{args.format} export of {args.name} failed: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
    except MissingPackageError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 1
    size_mb = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))) / 2**20
    print(f"wrote {path} ({size_mb:.1f} MB, {args.format}, input {input_size})")
    if getattr(args, "int8", False):  # edgevision.export.choice: int8 only where it is measured faster
        from edgevision.export.choice import export_int8

        print(export_int8(model, path, input_size, args.calibration, rounding=args.int8_rounding))
    return 0
