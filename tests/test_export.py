"""ONNX / TorchScript export: every registered model exports and matches eager."""

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgevision
from edgevision.cli import main as cli_main
from edgevision.export.onnx import check_onnx, export_onnx, ort_session, run_session


def small_side(model) -> int:
    """64 px, or the model's minimum, rounded up to its required multiple."""
    side = max(64, getattr(model, "min_input_size", 32))
    mult = getattr(model, "input_multiple", 1) or 1
    return -(-side // mult) * mult


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN statistics and zero-initialised weights random values so parity is tested on
    non-trivial outputs (several families zero-init their last BN/classifier)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for p in model.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", edgevision.list_models())
def test_every_model_exports_to_onnx_and_matches_eager(name, tmp_path):
    model = randomize(edgevision.create_model(name))
    side = small_side(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", (1, 3, side, side))
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        scale = model(x).abs().max().item()
    assert scale > 1e-3, f"{name}: logits are ~0 even after randomizing; parity would be vacuous"
    diff = check_onnx(model, path, x, threads=1)
    assert diff <= 1e-4 * max(1.0, scale), f"{name}: ONNX Runtime differs from eager by {diff:.2e}"


def test_dynamic_batch_and_size(tmp_path):
    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 64), dynamic_batch=True, dynamic_size=True)
    session = ort_session(path, threads=1)
    x = torch.randn(2, 3, 96, 80)
    with torch.inference_mode():
        ref = model(x)
    out = run_session(session, x)
    assert out.shape == (2, 1000)
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_torchscript_export_roundtrip(tmp_path):
    from edgevision.export.torchscript import export_torchscript

    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    path = export_torchscript(model, tmp_path / "m.pt", (1, 3, 64, 64))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        assert (loaded(x) - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_cli_export_check_passes(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = cli_main(["export", "mobilenetv3_small_075", "--format", "onnx", "--size", "64",
                   "--output", str(out), "--check"])
    text = capsys.readouterr().out
    assert rc == 0 and out.stat().st_size > 0
    assert "max|Δ|" in text and "ok" in text


def test_cli_export_check_fails_above_tolerance(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path / "m.onnx"),
                   "--check", "--tolerance", "-1"])
    assert rc == 1
    assert "differs from eager" in capsys.readouterr().err


def test_cli_export_torchscript(tmp_path):
    out = tmp_path / "m.pt"
    rc = cli_main(["export", "mobilenetv3_small_075", "--format", "torchscript", "--size", "64",
                   "--output", str(out), "--check"])
    assert rc == 0 and out.exists()


def test_cli_export_unknown_model(capsys):
    rc = cli_main(["export", "mobilenetv3_larg_100"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model" in err and "mobilenetv3_large_100" in err


def test_missing_onnxruntime_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path / "m.onnx"),
                   "--check"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install 'edgevision[onnx]'" in err and len(err.strip().splitlines()) == 1


def test_onnx_output_matches_shape_and_is_finite(tmp_path):
    model = randomize(edgevision.create_model("mobilenetv3_small_075", num_classes=10))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 64))
    out = run_session(ort_session(path, 1), torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10) and np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("fmt, module, extra", [("executorch", "executorch", "executorch"),
                                                 ("coreml", "coremltools", "coreml")])
def test_optional_formats_name_their_extra(fmt, module, extra, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    rc = cli_main(["export", "mobilenetv3_small_075", "--format", fmt, "--size", "64",
                   "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and f"pip install 'edgevision[{extra}]'" in err


@pytest.mark.slow
def test_dynamo_exporter_matches_eager(tmp_path):
    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 64), exporter="dynamo", dynamic_batch=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        scale = model(x).abs().max().item()
    assert check_onnx(model, path, x, threads=1) <= 1e-4 * max(1.0, scale)
