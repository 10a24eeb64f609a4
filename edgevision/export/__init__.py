"""Deployment: ONNX and TorchScript export, int8 quantization, deploy-time BatchNorm folding."""

from edgevision.export._deps import MissingPackageError
from edgevision.export.fuse import find_bn_pairs, fuse_bn
from edgevision.export.onnx import (
    DynamicShapeError,
    ExportError,
    ExportFallbackWarning,
    check_onnx,
    check_shapes,
    export_onnx,
    ort_session,
    verify_onnx,
)
from edgevision.export.quantize import (
    calibration_images,
    quantize_onnx_static,
    quantize_pt2e,
)
from edgevision.export.torchscript import export_torchscript, trace_and_freeze

__all__ = [
    "MissingPackageError", "find_bn_pairs", "fuse_bn", "check_onnx", "export_onnx", "ort_session",
    "ExportError", "DynamicShapeError", "ExportFallbackWarning", "check_shapes", "verify_onnx",
    "calibration_images", "quantize_onnx_static", "quantize_pt2e", "export_torchscript",
    "trace_and_freeze",
]
