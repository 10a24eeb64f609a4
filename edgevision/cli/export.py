"""`edgevision export NAME --format onnx|torchscript [--check]`: deployable files, parity-checked."""

from __future__ import annotations

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
                   help="run the exported file (ONNX Runtime / torch.jit.load) and compare with eager")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |Δ| allowed by --check (default 1e-4)")
    p.set_defaults(func=run)


def _export(args, model, path, input_size):
    if args.format == "onnx":
        from edgevision.export.onnx import DEFAULT_OPSET, export_onnx

        return export_onnx(model, path, input_size, dynamic_batch=args.dynamic_batch,
                           dynamic_size=args.dynamic_size, opset=args.opset or DEFAULT_OPSET,
                           exporter=args.exporter)
    if args.dynamic_batch or args.dynamic_size or args.opset:
        raise ValueError("--dynamic-batch, --dynamic-size and --opset apply to --format onnx only")
    if args.format == "executorch":
        from edgevision.export.extras import export_executorch

        return export_executorch(model, path, input_size)
    if args.format == "coreml":
        from edgevision.export.extras import export_coreml

        return export_coreml(model, path, input_size)
    from edgevision.export.torchscript import export_torchscript

    return export_torchscript(model, path, input_size)


def _max_diff(args, model, path, input_size) -> float:
    import torch

    x = torch.randn(*input_size, generator=torch.Generator().manual_seed(0))
    if args.format == "onnx":
        from edgevision.export.onnx import check_onnx

        return check_onnx(model, path, x)
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return float((loaded(x) - model(x)).abs().max())


def run(args) -> int:
    from edgevision.export._deps import MissingPackageError
    from edgevision.factory import create_model
    from edgevision.registry import model_info

    info = model_info(args.name)  # unknown names fail here, with suggestions
    size = args.size or info.input_size[-1]
    if size < 1 or args.batch < 1:
        raise ValueError(f"--size and --batch must be >= 1; got size={size}, batch={args.batch}")
    path = Path(args.output or f"{args.name}{FORMATS[args.format]}")
    model = create_model(args.name, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    input_size = (args.batch, model.in_chans if hasattr(model, "in_chans") else 3, size, size)
    if args.check and args.format in ("executorch", "coreml"):
        raise ValueError(f"--check is available for onnx and torchscript, not {args.format}")
    try:
        _export(args, model, path, input_size)
        size_mb = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))) / 2**20
        print(f"wrote {path} ({size_mb:.1f} MB, {args.format}, input {input_size})")
        if not args.check:
            return 0
        diff = _max_diff(args, model, path, input_size)
    except MissingPackageError as e:
        print(f"edgevision export: error: {e}", file=sys.stderr)
        return 2
    ok = diff <= args.tolerance
    print(f"check: max|Δ| vs eager = {diff:.2e} (tolerance {args.tolerance:.0e}) -> {'ok' if ok else 'FAILED'}")
    if not ok:
        print(f"edgevision export: error: {args.name} {args.format} output differs from eager by "
              f"{diff:.2e} > {args.tolerance:.0e}", file=sys.stderr)
        return 1
    return 0
