"""ONNX export (dynamo exporter, as `edgevision export` uses) of dense models' export_forward,
checked in ONNX Runtime on every output, for the six heads on MobileNetV3-Large, EMO-1M and
EfficientFormer-L1.

A name missing from the registry fails in CI (the segmentation heads come from their own
module; nothing is skipped there) and is skipped only in a checkout without them. Small input
(128 px) and few classes keep each export short; outside FAST they are marked slow.
"""

import os
import subprocess
import sys

import pytest
import torch

import edgevision as ev
from edgevision.export.onnx import export_onnx, export_view, verify_onnx

PREFIXES = ("ssdlite", "retinanet", "deeplabv3", "mobile_deeplabv3", "lraspp", "pspnet")
BACKBONES = ("mobilenetv3_large_100", "emo_1m", "efficientformer_l1")
FAST = {"ssdlite_mobilenetv3_large_100", "lraspp_mobilenetv3_large_100"}
CLASSES = {"ssdlite": 3, "retinanet": 3}  # detection counts the background; segmentation too (K+1)


def _names():
    for prefix in PREFIXES:
        for bb in BACKBONES:
            name = f"{prefix}_{bb}"
            yield pytest.param(name, id=name, marks=() if name in FAST else (pytest.mark.slow,))


def _model(name: str):
    if name not in ev.list_models(task=None):
        if os.environ.get("CI"):
            pytest.fail(f"dense model {name} is not registered")
        pytest.skip(f"{name} is not registered in this checkout")
    torch.manual_seed(0)
    model = ev.create_model(name, num_classes=CLASSES.get(name.split("_")[0], 4)).eval()
    with torch.no_grad():  # O(1) outputs (heads are initialised near zero), so the check means something
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("name", list(_names()))
def test_export_forward_onnx_parity(name, tmp_path):
    model = _model(name)
    assert hasattr(model, "export_forward") and model.export_output_names
    size = (1, 3, 128, 128)
    path = export_onnx(model, tmp_path / "m.onnx", size, fallback=False)
    results = verify_onnx(model, path, [size], tolerance=float("inf"))
    diff, scale = results[size]
    assert scale > 1e-2, "outputs too small for a meaningful check"
    assert diff <= 1e-4 * max(1.0, scale), (diff, scale)
    import onnx

    assert [o.name for o in onnx.load(str(path)).graph.output] == list(model.export_output_names)
    with torch.no_grad():
        outs = export_view(model)(torch.randn(size))
    assert len(outs) == len(model.export_output_names)


@pytest.mark.slow
def test_cli_export_check_detector(tmp_path):
    out = tmp_path / "d.onnx"
    r = subprocess.run([sys.executable, "-m", "edgevision", "export", "ssdlite_mobilenetv3_large_100", "--size", "128",
                        "--num-classes", "3", "--check", "--output", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "-> ok" in r.stdout and out.is_file()
