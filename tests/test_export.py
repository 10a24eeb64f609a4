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


def _error_lines(stderr: str) -> list[str]:
    """The command's own error lines: exporter warnings (not hidden) may precede them; no traceback."""
    assert "Traceback" not in stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("edgevision export:")]


def _smallest_per_family() -> list[str]:
    """The smallest registered variant (published parameters) of each family."""
    best = {}
    for name in edgevision.list_models():
        info = edgevision.model_info(name)
        key = (info.published_params or float("inf"), name)
        best[info.family] = min(best.get(info.family, key), key)
    return sorted(name for _, name in best.values())


FAMILY_REPRESENTATIVES = _smallest_per_family()


def _dynamo_parity(name, tmp_path):
    """Export ``name`` with the dynamo exporter (no legacy fallback) at its small side and compare
    ONNX Runtime with eager on an input that reaches the logits."""
    model = randomize(edgevision.create_model(name))
    side = small_side(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", (1, 3, side, side), exporter="dynamo", fallback=False)
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


# The dynamo exporter (torch.export + onnxscript) takes 3-15 s per model on a 2-core machine
# (against ~1 s for the legacy tracer), so exporting all registered models takes minutes: the
# default run exports the smallest variant of every family (the variants of a family share
# their code and differ only in widths/depths), and the all-models run is marked slow.
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_every_family_exports_with_dynamo_and_matches_eager(name, tmp_path):
    _dynamo_parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(edgevision.list_models()) - set(FAMILY_REPRESENTATIVES)))
def test_every_model_exports_with_dynamo_and_matches_eager(name, tmp_path):
    _dynamo_parity(name, tmp_path)


def test_family_representatives_cover_every_family():
    families = {edgevision.model_info(n).family for n in edgevision.list_models()}
    assert {edgevision.model_info(n).family for n in FAMILY_REPRESENTATIVES} == families
    assert len(FAMILY_REPRESENTATIVES) == len(families)


def test_dynamic_batch_and_size(tmp_path):
    model = randomize(edgevision.create_model("mobilenetv3_small_075"))
    path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 64), dynamic_batch=True, dynamic_size=True,
                       fallback=False)
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


def test_cli_export_check_fails_above_tolerance(tmp_path, capsys, monkeypatch):
    from edgevision.export import onnx as ev_onnx

    real = ev_onnx.run_session
    monkeypatch.setattr(ev_onnx, "run_session", lambda session, x: real(session, x) + 1e-3)  # a wrong file
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(out), "--check",
                   "--exporter", "legacy"])
    captured = capsys.readouterr()
    err = _error_lines(captured.err)
    assert rc == 1 and len(err) == 1 and "differs from eager by 1.00e-03" in err[0], err
    assert "FAILED" in captured.out
    # The file that failed its check did not replace the previous one, and left nothing behind.
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


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
    assert "pip install 'edgevision[onnx]'" in err and len(_error_lines(err)) == 1


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


def test_cli_export_rejects_bad_opset_in_one_line(tmp_path, capsys):
    for opset, exporter in ((5, "legacy"), (21, "legacy"), (99, "dynamo"), (0, "dynamo"), (-1, "dynamo")):
        argv = ["export", "mobilenetv3_small_075", "--size", "64", "--opset", str(opset),
                "--exporter", exporter, "--output", str(tmp_path / "m.onnx")]
        try:
            rc = cli_main(argv)  # the exporter's own range (legacy: at most 20)
        except SystemExit as e:  # outside every exporter's range: refused while parsing
            rc = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(opset) in err[0] and "7" in err[0], err
    assert not (tmp_path / "m.onnx").exists()


def test_requested_opset_is_the_one_written(tmp_path, monkeypatch):
    import onnx

    from edgevision.export import onnx as ev_onnx

    model = edgevision.create_model("mobilenetv3_small_075").eval()
    path = export_onnx(model, tmp_path / "m17.onnx", (1, 3, 64, 64), opset=17, exporter="legacy")
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [17]
    # An exporter that silently keeps another opset (the dynamo exporter does, when its
    # version conversion fails) is caught, and the file is not written.
    monkeypatch.setattr(ev_onnx, "_export_legacy",
                        lambda m, x, p, opset, axes: torch.onnx.export(m, (x,), str(p), dynamo=False, opset_version=18))
    with pytest.raises(ev_onnx.ExportError, match="wrote opset 18, not the requested 16"):
        export_onnx(model, tmp_path / "m16.onnx", (1, 3, 64, 64), opset=16, exporter="legacy")
    assert not (tmp_path / "m16.onnx").exists()


def test_cli_export_failure_is_one_line(tmp_path, capsys, monkeypatch):
    from edgevision.export import onnx as ev_onnx

    def broken(*args):
        raise RuntimeError("Cannot export op foo\nONNX graph being constructed during exception:\n%1 = ...")

    monkeypatch.setattr(ev_onnx, "_export_legacy", broken)
    monkeypatch.setattr(ev_onnx, "_export_dynamo", broken)
    for extra, which in ((["--exporter", "legacy"], "legacy exporter"), (["--no-fallback"], "dynamo exporter")):
        rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path / "m.onnx"),
                       *extra])
        err = _error_lines(capsys.readouterr().err)
        assert rc == 1 and len(err) == 1 and "Cannot export op foo" in err[0] and which in err[0], err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_output_folder(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(tmp_path)])
    assert rc == 0 and (tmp_path / "mobilenetv3_small_075.onnx").stat().st_size > 0
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--output", str(blocker / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot create the output folder" in err[0]


def test_cli_dynamic_export_is_checked_at_other_shapes(tmp_path, capsys):
    rc = cli_main(["export", "mobilenetv3_small_075", "--size", "64", "--dynamic-batch", "--dynamic-size",
                   "--check", "--output", str(tmp_path / "m.onnx")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(1, 3, 64, 64):" in out and "(1, 3, 32, 32):" in out and "(2, 3, 96, 128):" in out and "-> ok" in out


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
    rc = cli_main(["export", "emo_1m", "--format", fmt, "--size", "8",
                   "--output", str(tmp_path / "m")])
    err = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "at least 32x32" in err[0], err


# ----------------------------------------------------------------------------- dynamic sizes
class SizeBranch(nn.Module):
    """A model whose computation changes with the input size, as tiny-MOAT's does (global
    attention up to 256 px, windows above): here the features are doubled above 128 px, decided
    by a Python branch on the map size, which a tracer freezes at the export size."""

    in_chans = 3
    min_input_size = 32

    def __init__(self, input_multiple=32, size_breakpoints=(128,)):
        super().__init__()
        self.input_multiple = input_multiple
        self.size_breakpoints = size_breakpoints
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[-2] > 64 or y.shape[-1] > 64:  # input side > 128
            y = y * 2
        return self.head(y.mean((2, 3)))


def test_check_shapes_cover_both_sides_of_every_breakpoint():
    from edgevision.export.onnx import check_shapes

    moat = edgevision.create_model("tiny_moat_0")
    assert 256 in moat.size_breakpoints  # declared by the family: global attention up to 256 px
    shapes = check_shapes(moat, (1, 3, 224, 224), dynamic_size=True)
    sides = {(h, w) for _, _, h, w in shapes}
    assert {(224, 224), (256, 256), (288, 288), (224, 288)} <= sides
    assert any(h < 224 for h, _ in sides) and any(w > 256 for _, w in sides)
    assert all(h % 32 == 0 and w % 32 == 0 and min(h, w) >= 32 for h, w in sides)
    # Static exports are checked at their own size only; a dynamic batch adds batch + 1.
    assert check_shapes(moat, (1, 3, 224, 224)) == [(1, 3, 224, 224)]
    assert check_shapes(moat, (1, 3, 224, 224), dynamic_batch=True) == [(1, 3, 224, 224), (2, 3, 224, 224)]
    # Without breakpoints: the export size, a smaller and a larger (non-square) one.
    plain = SizeBranch(input_multiple=1, size_breakpoints=())
    assert check_shapes(plain, (1, 3, 64, 64), True, True) == [(1, 3, 64, 64), (1, 3, 32, 32), (2, 3, 96, 128)]
    # Breakpoints are checked one multiple (here 1 px) either side.
    assert {(127, 127), (128, 128), (129, 129), (127, 129)} <= {
        s[2:] for s in check_shapes(SizeBranch(input_multiple=1), (1, 3, 64, 64), dynamic_size=True)}


def test_dynamic_check_catches_a_frozen_size_branch(tmp_path):
    """The tiny-MOAT defect in small: a legacy (tracer) dynamic export made at 64 px keeps the
    small-input side of the branch; the old check (export size and +32) passed it, the check at
    the declared breakpoint fails it."""
    from edgevision.export.onnx import ExportError, check_shapes, verify_onnx

    model = SizeBranch(size_breakpoints=()).eval()  # undeclared: the legacy export is allowed
    path = export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 64), dynamic_size=True, exporter="legacy")
    old_check = [(1, 3, 64, 64), (1, 3, 96, 96)]
    assert max(d for d, _ in verify_onnx(model, path, old_check).values()) <= 1e-5  # passes wrongly
    verify_onnx(model, path, check_shapes(model, (1, 3, 64, 64), dynamic_size=True))  # so does this
    model.size_breakpoints = (128,)
    with pytest.raises(ExportError, match=r"differs from eager by .* at input \(1, 3, (96|160), 160\)"):
        verify_onnx(model, path, check_shapes(model, (1, 3, 64, 64), dynamic_size=True))


@pytest.mark.parametrize("multiple, reason", [(1, r"torch.export needs 32 <= height and height <= 128"),
                                              (32, r"torch.export keeps only heights \d+\.\.128")])
def test_dynamo_refuses_a_size_branch_it_cannot_keep_dynamic(multiple, reason, tmp_path):
    """torch.export either rejects the dims (multiple 1) or narrows them to one side of the branch
    (Dim * 32): ONNX cannot carry the narrowed range, so both are refused, with no fallback."""
    from edgevision.export.onnx import DynamicShapeError

    model = SizeBranch(input_multiple=multiple, size_breakpoints=()).eval()
    target = tmp_path / "m.onnx"
    with pytest.raises(DynamicShapeError, match=f"cannot be exported with a dynamic .*{reason}.*export at a fixed size"):
        export_onnx(model, target, (1, 3, 64, 64), dynamic_size=True)
    assert not target.exists()
    # A fixed size is fine, and so is a dynamic batch.
    export_onnx(model, target, (1, 3, 64, 64), dynamic_batch=True, fallback=False)
    assert check_onnx(model, target, torch.randn(3, 3, 64, 64)) <= 1e-5


def test_legacy_dynamic_size_is_refused_for_a_model_with_breakpoints(tmp_path):
    from edgevision.export.onnx import DynamicShapeError

    model = edgevision.create_model("tiny_moat_0")
    with pytest.raises(DynamicShapeError, match=r"legacy exporter.*freezes.*\(input sides 256\)"):
        export_onnx(model, tmp_path / "m.onnx", (1, 3, 224, 224), dynamic_size=True, exporter="legacy")
    assert not (tmp_path / "m.onnx").exists()


def test_dynamo_dims_respect_min_size_and_multiple():
    """Height/width are Dim(min=min_input_size / multiple) * multiple; sizes of 1 in the example
    are raised to 2 (torch.export would specialize them)."""
    from edgevision.export.onnx import _dynamic_spec

    model = SizeBranch(input_multiple=32)
    model.min_input_size = 64
    x, (dims,), info = _dynamic_spec(model, torch.randn(1, 3, 32, 64), True, True)
    assert tuple(x.shape) == (2, 3, 64, 64)
    assert info == {0: ("batch", 1, 1), 2: ("height", 32, 64), 3: ("width", 32, 64)}
    assert dims[2].root.min == 2 and dims[2].root.__name__ == "height_blocks"
    plain = SizeBranch(input_multiple=1)
    _, (dims,), _ = _dynamic_spec(plain, torch.randn(1, 3, 64, 64), False, True)
    assert set(dims) == {2, 3} and dims[2].min == 32


def _relative_tolerance(model, side=224):
    with torch.inference_mode():
        return 1e-4 * max(1.0, model(torch.randn(1, 3, side, side)).abs().max().item())


@pytest.mark.slow
def test_tiny_moat_dynamic_export_is_right_at_every_side_of_256_or_refused(tmp_path):
    """issue 11: a dynamic tiny-MOAT export made at 224 px must be correct at 224, 256 and 288 px
    (its attention changes from global to windowed above 256) or fail its check: never pass wrongly."""
    from edgevision.export.onnx import ExportError, check_shapes, verify_onnx

    model = randomize(edgevision.create_model("tiny_moat_0"))
    tol = _relative_tolerance(model)
    shapes = check_shapes(model, (1, 3, 224, 224), dynamic_size=True)
    out = tmp_path / "moat.onnx"
    try:
        export_onnx(model, out, (1, 3, 224, 224), dynamic_size=True,
                    verify=lambda tmp: verify_onnx(model, tmp, shapes, tol))
    except ExportError as e:  # refused, or failed its check: one line, and no file
        assert "\n" not in str(e) and not out.exists()
        return
    session = ort_session(out, threads=1)
    g = torch.Generator().manual_seed(7)  # other inputs than the check's
    for side in (224, 256, 288):
        x = torch.randn(1, 3, side, side, generator=g)
        with torch.inference_mode():
            ref = model(x)
        assert (run_session(session, x) - ref).abs().max() <= tol, f"passed its check but wrong at {side} px"


@pytest.mark.slow
def test_tiny_moat_check_fails_an_export_with_the_global_branch_frozen(tmp_path):
    """Simulates the frozen branch of a tracer export made at <= 256 px: the same weights in
    attn_mode='global' compute global attention at every size, which is what such a file does
    above 256 px. The check of a windowed tiny-MOAT must fail it at a size above 256."""
    from edgevision.export.onnx import ExportError, check_shapes, verify_onnx

    model = randomize(edgevision.create_model("tiny_moat_0"))
    frozen = edgevision.create_model("tiny_moat_0", attn_mode="global").eval()
    frozen.load_state_dict(model.state_dict())
    path = export_onnx(frozen, tmp_path / "frozen.onnx", (1, 3, 224, 224), dynamic_size=True, fallback=False)
    tol = _relative_tolerance(model)
    shapes = check_shapes(model, (1, 3, 224, 224), dynamic_size=True)
    below = [s for s in shapes if max(s[2:]) <= 256]
    verify_onnx(model, path, below, tol)  # identical up to 256 px: the old check passed it
    with pytest.raises(ExportError, match=r"differs from eager by .* at input \(1, 3, (256, 288|288, 288|224, 288)\)"):
        verify_onnx(model, path, shapes, tol)
