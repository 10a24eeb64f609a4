"""Int8: ONNX Runtime static quantization (QDQ, per-channel weights) and PyTorch PT2E.

Calibration uses real photos, never noise: an image folder you give, or scikit-image's
bundled sample photos (offline) with deterministic crops and flips. Dynamic int8 is not
offered: measured here it is slower than fp32 for convnets.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # noqa: E402
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD  # noqa: E402

from edgevision.export._deps import require

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Clip", "Relu")  # ONNX op types made int8 (see below)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
def _views(img, size: int) -> list:
    """Deterministic views of one photo: center crop, four corner crops, and their mirror images."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    boxes = [((w - side) // 2, (h - side) // 2)]
    crop = int(side * 0.75)
    boxes += [(0, 0), (w - crop, 0), (0, h - crop), (w - crop, h - crop)]
    views = []
    for i, (left, top) in enumerate(boxes):
        s = side if i == 0 else crop
        v = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
        views += [v, v.transpose(Image.FLIP_LEFT_RIGHT)]
    return views


def _normalize(imgs: list, mean, std) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in imgs])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def calibration_images(folder: str | Path | None = None, size: int = 224, n: int = 32,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Up to ``n`` normalized (N, 3, size, size) images from ``folder`` or the bundled photos.

    ``mean``/``std`` must be the model's own normalization (e.g. 0.5/0.5 for TF-trained weights).
    """
    from edgevision.images import load_rgb, sample_photos

    imgs = []
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"calibration folder {folder} is not a directory")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {folder}")
        for f in files[:n]:
            imgs.append(_views(load_rgb(f), size)[0])  # center crop, as at evaluation
    else:
        # The photos shipped in the package. Round-robin over them (all center crops first,
        # then corners, flips), so a small n still spans every scene.
        per_photo = [_views(img, size) for _, img in sample_photos()]
        imgs = [views[k] for k in range(len(per_photo[0])) for views in per_photo]
    return _normalize(imgs[:n], mean, std)


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of images whose arg-max class is the same in the two logit sets."""
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


class _Reader:
    """ONNX Runtime CalibrationDataReader over a tensor of images, one at a time."""

    def __init__(self, input_name: str, images: torch.Tensor, batch: int):
        self.input_name = input_name
        self.batches = [images[i:i + batch].numpy() for i in range(0, len(images) - batch + 1, batch)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self):
        self.pos = 0


def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def preprocess_onnx(fp32_path: str | Path, out: str | Path) -> Path:
    """ORT's quantization pre-processing (shape inference, graph cleanup), so QDQ pairs land
    right; returns ``out``, or ``fp32_path`` itself when pre-processing fails."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=True)
        return Path(out)
    except Exception:
        return Path(fp32_path)


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
WEIGHT_TYPES = ("int8", "uint8")  # symmetric int8 (u8s8 kernels) or asymmetric uint8 (u8u8)


def _calibration_method(q, method: str):
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}")
    return {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
            "entropy": q.CalibrationMethod.Entropy}[method]


def quantize_onnx_static(fp32_path: str | Path, int8_path: str | Path, images: torch.Tensor,
                         batch: int = 1, reduce_range: bool | None = None, per_channel: bool = True,
                         method: str = "minmax", percentile: float = 99.999,
                         nodes_to_exclude: list[str] | None = None,
                         calibration_cache: str | Path | None = None, preprocess: bool = True,
                         weight_type: str = "int8") -> Path:
    """Static int8 ONNX (QDQ format, int8 weights, uint8 activations).

    Quantized: Conv, Gemm and MatMul, which carry the compute, and Clip/Relu, so that a
    conv's ReLU/ReLU6 fuses into its int8 kernel and the conv output is quantized over the
    activated range rather than the wider pre-activation one (measured here on pretrained
    efficientnet_lite0, 32 sample photos: top-1 agreement with fp32 0.38 -> 0.84 and 3.3 ->
    2.2 ms vs 3.9 ms fp32). Quantizing every supported op (adds, softmax, ...) was worse on
    the attention models. LayerNormalization stays float: per-channel quantization of its
    weights along axis 1 is rejected by ONNX Runtime with a warning. ``batch`` must match a
    static input batch.
    ``reduce_range`` (7-bit weights) defaults to on for x86 CPUs without VNNI, where ORT's
    u8s8 kernels can saturate (its documented advice; measured here on pretrained
    efficientnet_lite0: top-1 agreement 0.44 -> 0.53 on the sample photos).
    ``per_channel``: one weight scale per output channel (default; what depthwise convs need)
    or one per tensor. ``method``: activation ranges from the calibration images by
    "minmax", "percentile" (``percentile`` of |x|'s histogram) or "entropy" (KL-optimal
    clipping, TensorRT's method), all ONNX Runtime's calibrators. ``nodes_to_exclude``: ONNX
    node names kept in fp32 (mixed precision). ``calibration_cache``: a JSON file of
    activation ranges; written on the first call and reused (then ``images`` may be None),
    so variants of one model (per-node exclusions) calibrate once. ``preprocess=False``: the
    file already went through :func:`preprocess_onnx` (node names then stay as given).
    ``weight_type="uint8"``: asymmetric uint8 weights (ORT's u8u8 kernels), which do not
    saturate on AVX2 without VNNI, so the full 8-bit weight range is usable there; give
    ``reduce_range=False`` with it.
    """
    q = require("onnxruntime.quantization", "onnx", "ONNX Runtime int8 quantization")
    onnx = require("onnx", "onnx", "ONNX Runtime int8 quantization")
    from edgevision.io import atomic_write

    calib = _calibration_method(q, method)
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}")
    int8_path = Path(int8_path)
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    extra = {"CalibPercentile": float(percentile)} if method == "percentile" else {}
    extra["WeightSymmetric"] = True  # also for uint8 (zero point 128): what fake_quantize_weight mirrors
    reader = None if images is None else _Reader(input_name, images, batch)
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + graph cleanup first, as ORT recommends, so QDQ pairs land right.
        pre = preprocess_onnx(fp32_path, Path(tmp) / "pre.onnx") if preprocess else Path(fp32_path)
        cache = {} if calibration_cache is None else {"calibration_cache_path": str(calibration_cache)}
        # Atomic (edgevision.io): a failed or cut-short quantization never leaves a partial file.
        atomic_write(int8_path, lambda part: q.quantize_static(
            str(pre), part, reader,
            quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8 if weight_type == "int8" else q.QuantType.QUInt8,
            reduce_range=(not _cpu_has_vnni()) if reduce_range is None else reduce_range,
            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=list(nodes_to_exclude or []),
            calibrate_method=calib, extra_options=extra, **cache,
        ), keep_suffix=True)
    return int8_path


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the ONNX nodes that carry weights and get int8 kernels (Conv, Gemm, MatMul with
    a constant operand): the candidates for mixed precision."""
    onnx = require("onnx", "onnx", "ONNX Runtime int8 quantization")
    graph = onnx.load(str(path)).graph
    consts = {i.name for i in graph.initializer}
    return [n.name for n in graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and any(i in consts for i in n.input[1:])]


def quantize_pt2e(model: nn.Module, example: torch.Tensor, images: torch.Tensor) -> nn.Module:
    """PyTorch int8 through the PT2E flow in torchao (X86 Inductor quantizer), calibrated on images.

    Returns the converted graph module (reference quantized ops); compile it with inductor
    to get fused int8 kernels.
    """
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "quant", "PT2E int8 (torchao)")
    xiq = require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "quant",
                  "PT2E int8 (torchao)")
    quantizer = xiq.X86InductorQuantizer()
    # torchao's own advice: 7-bit activation ranges on CPUs without VNNI, whose u8s8 kernels
    # saturate (pretrained Lite0 on an AMD EPYC without VNNI: fp32/int8 logit cosine 0.72
    # with full ranges, above the 0.8 that tests/test_bench_runtimes.py asks with 7-bit).
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=not _cpu_has_vnni()))
    exported = torch.export.export(model.eval(), (example,), strict=False).module()
    prepared = pt2e.prepare_pt2e(exported, quantizer)
    batch = example.shape[0]
    with torch.no_grad():
        for i in range(0, len(images) - batch + 1, batch):
            prepared(images[i:i + batch])
    return pt2e.convert_pt2e(prepared)
