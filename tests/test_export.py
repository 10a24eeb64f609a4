"""ONNX / TorchScript export: every registered model exports and matches eager."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgevision
from edgevision.cli import main as cli_main
from edgevision.export.onnx import check_onnx, export_onnx, ort_session, run_session
from edgevision.testing import randomize_norms as randomize
from edgevision.testing import small_side


@pytest.mark.slow
@pytest.mark.parametrize("name", edgevision.list_models())
def test_every_model_exports_to_onnx_and_matches_eager(name, tmp_path):
    model = randomize(edgevision.create_model(name))
    side = small_side(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", (1, 3, side, side))
    g = torch.Generator().manual_seed(1)
    x, x2 = torch.randn(1, 3, side, side, generator=g), torch.randn(1, 3, side, side, generator=g)
    with torch.inference_mode():
        ref = model(x)
        scale = ref.abs().max().item()
        spread = (model(x2) - ref).abs().max().item()
    # Parity is only meaningful when the logits carry the input (not just propagated biases).
    assert spread > 0.05 * scale > 1e-3, f"{name}: logits (scale {scale:.2g}) barely depend on the input"
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
    from edgevision.export.torchscript import export_torchscript, load_torchscript

    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    path = export_torchscript(model, tmp_path / "m.pt", (1, 3, 64, 64))
    loaded = load_torchscript(path)
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


def test_cli_export_rejects_bad_opset_in_one_line(tmp_path, capsys):
    for opset, exporter in ((5, "legacy"), (21, "legacy"), (99, "dynamo")):
        rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--opset", str(opset),
                       "--exporter", exporter, "--output", str(tmp_path / "m.onnx")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"opset {opset} is not supported" in err[0], err
    assert not (tmp_path / "m.onnx").exists()


def test_requested_opset_is_the_one_written(tmp_path, monkeypatch):
    import onnx

    from edgevision.export import onnx as ev_onnx

    model = edgevision.create_model("mobilenetv3_small_075").eval()
    path = export_onnx(model, tmp_path / "m17.onnx", (1, 3, 64, 64), opset=17)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [17]
    # An exporter that silently keeps another opset (the dynamo exporter does, when its
    # version conversion fails) is caught.
    monkeypatch.setattr(ev_onnx, "_export_dynamo",
                        lambda m, x, p, opset, axes: ev_onnx._export_legacy(m, x, p, 18, axes))
    with pytest.raises(ev_onnx.ExportError, match="wrote opset 18, not the requested 16"):
        export_onnx(model, tmp_path / "m16.onnx", (1, 3, 64, 64), opset=16, exporter="dynamo")


def test_cli_export_failure_is_one_line(tmp_path, capsys, monkeypatch):
    from edgevision.export import onnx as ev_onnx

    def broken(*args):
        raise RuntimeError("Cannot export op foo\nONNX graph being constructed during exception:\n%1 = ...")

    monkeypatch.setattr(ev_onnx, "_export_legacy", broken)
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Cannot export op foo" in err[0] and "legacy exporter" in err[0]


def test_cli_export_output_folder(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path)])
    assert rc == 0 and (tmp_path / "mobilenetv3_small_075.onnx").stat().st_size > 0
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(blocker / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot create the output folder" in err[0]


def test_cli_dynamic_export_is_checked_at_a_second_shape(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--dynamic-batch", "--dynamic-size",
                   "--check", "--output", str(tmp_path / "m.onnx")])
    out = capsys.readouterr().out
    assert rc == 0 and "(1, 3, 64, 64):" in out and "(2, 3, 96, 96):" in out and "ok" in out


def test_cli_export_onnx_only_flags(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--format", "torchscript", "--opset", "17",
                   "--output", str(tmp_path / "m.pt")])
    assert rc == 2 and "apply to --format onnx only" in capsys.readouterr().err


def test_torchscript_keeps_optimize_for_inference_only_when_it_is_exact(monkeypatch):
    from edgevision.export.torchscript import trace_and_freeze

    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    real = torch.jit.optimize_for_inference

    class Wrong(nn.Module):  # stands in for a miscompiled module (as its MKLDNN pass did on tiny_moat)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t) + 1

    monkeypatch.setattr(torch.jit, "optimize_for_inference", lambda m: Wrong(real(m)))
    with pytest.warns(RuntimeWarning, match="changed the outputs"):
        ts = trace_and_freeze(model, x)
    with torch.inference_mode():
        assert (ts(x) - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch ([executorch] extra) not installed")
def test_executorch_export_matches_eager(tmp_path):
    from edgevision.export.extras import export_executorch, run_executorch

    model = randomize(edgevision.create_model("emo_1m"))
    path = export_executorch(model, tmp_path / "m.pte", (1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    assert (run_executorch(path, x) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools ([coreml] extra) not installed")
def test_coreml_export_writes_a_package(tmp_path):
    from edgevision.export.extras import export_coreml

    path = export_coreml(edgevision.create_model("mobilenetv3_small_075"), tmp_path / "m.mlpackage", (1, 3, 64, 64))
    assert (path / "Manifest.json").is_file()


def test_installed_but_broken_package_is_told_apart(monkeypatch, tmp_path):
    from edgevision.export._deps import MissingPackageError, require

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingPackageError, match="'onnx', which is not installed"):
        require("onnx", "onnx", "ONNX export")
    (tmp_path / "ev_broken_pkg").mkdir()
    (tmp_path / "ev_broken_pkg" / "__init__.py").write_text("import ev_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingPackageError, match="'ev_broken_pkg', which is installed but cannot be imported "
                       "\\(No module named 'ev_no_such_dependency'\\).*edgevision\\[coreml\\]"):
        require("ev_broken_pkg", "coreml", "Core ML export")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_export_too_small_input_is_one_line(fmt, tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--format", fmt, "--size", "8",
                   "--output", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "at least 32x32" in err[0], err
