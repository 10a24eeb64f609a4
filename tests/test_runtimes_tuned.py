"""The tuned ONNX Runtime session and the OpenVINO runtime: parity with eager, the settings
they promise, thread counts honoured, and one clear line when OpenVINO is missing."""

import importlib.util
import sys

import pytest
import torch

import edgevision
from edgevision.cli import main as cli_main
from edgevision.export._deps import MissingPackageError
from edgevision.profiling.runtimes import RUNTIMES, get_runtime, tuned_ort_session
from edgevision.testing import randomize_norms

HAS_OV = importlib.util.find_spec("openvino") is not None
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino not installed (pip install 'edgevision[openvino]')")


def _model(name, side=64):
    torch.manual_seed(0)
    return randomize_norms(edgevision.create_model(name), side=side).eval()


def _parity(runtime, model, x, **options):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = model(x)
    assert (ref[0] - ref[-1]).abs().max() > 0.05 * ref.abs().max() > 1e-3  # logits depend on x
    fn = get_runtime(runtime, threads=1, **options).prepare(model, x)
    with torch.inference_mode():
        out = fn(x)
        again = fn(x + 0.5)  # a second call must not hand back the first call's buffer
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    assert (again - out).abs().max() > 1e-4
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), f"{runtime}: prepare() changed the model"


def test_runtime_names_kept():
    for name in ("eager", "channels_last", "fused", "optimized", "compile", "torchscript", "onnxruntime",
                 "onnxruntime-int8", "pt2e-int8", "openvino"):
        assert name in RUNTIMES


@pytest.fixture(scope="module", params=["emo_1m", "mobilenetv3_small_075"])
def exported(request, tmp_path_factory):
    """A model, an input and its ONNX export (dynamic batch), shared by the two ONNX runtimes.
    EMO: BN, LayerNorm, windowed attention; MobileNetV3: hard-swish, squeeze-excitation."""
    from edgevision.export.onnx import export_onnx

    model = _model(request.param)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx", (1, 3, 64, 64), dynamic_batch=True)
    return model, x, path


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=needs_ov)])
def test_onnx_runtimes_match_eager(runtime, exported):
    model, x, path = exported  # exported at batch 1, run at batch 2: the runtime fixes the batch
    _parity(runtime, model, x, onnx_file=path)


def test_tuned_ort_session_options(tmp_path):
    import onnxruntime as ort

    from edgevision.export.onnx import export_onnx

    path = export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                       tmp_path / "m.onnx", (1, 3, 16, 16))
    def entry(opts, key):
        try:
            return opts.get_session_config_entry(key)
        except RuntimeError:  # not set
            return None

    for threads, spinning in ((1, None), (2, "0")):
        opts = tuned_ort_session(path, threads).get_session_options()
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert opts.intra_op_num_threads == threads and opts.inter_op_num_threads == 1
        assert entry(opts, "session.intra_op.allow_spinning") == spinning


@needs_ov
def test_openvino_honours_threads_and_hint():
    import edgevision.profiling.runtimes as rt

    seen = []
    real = rt.OpenVINO.prepare

    def spy(self, model, example):
        import openvino as ov

        compile_model = ov.Core.compile_model

        def record(core, m, device, config):
            seen.append(dict(config))
            return compile_model(core, m, device, config)

        ov.Core.compile_model = record
        try:
            return real(self, model, example)
        finally:
            ov.Core.compile_model = compile_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    for batch, threads in ((1, 1), (3, 2)):
        runtime = get_runtime("openvino", threads=threads)
        spy(runtime, model, torch.randn(batch, 3, 16, 16))
    assert seen[0]["PERFORMANCE_HINT"] == "LATENCY" and seen[0]["INFERENCE_NUM_THREADS"] == "1"
    assert seen[1]["PERFORMANCE_HINT"] == "THROUGHPUT" and seen[1]["INFERENCE_NUM_THREADS"] == "2"
    assert all(c["INFERENCE_PRECISION_HINT"] == "f32" for c in seen)


def test_openvino_missing_is_one_clear_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingPackageError, match=r"pip install 'edgevision\[openvino\]'"):
        get_runtime("openvino").check()
    rc = cli_main(["bench", "mobilenetv3_small_075", "--runtime", "eager,openvino", "--size", "32",
                   "--iters", "1", "--warmup", "0", "--no-progress", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "edgevision[openvino]" in err and len(err.strip().splitlines()) == 1


@needs_ov
def test_bench_cli_runs_openvino(tmp_path, capsys):
    rc = cli_main(["bench", "mobilenetv3_small_075", "--runtime", "eager,openvino", "--size", "32",
                   "--iters", "2", "--warmup", "0", "--threads", "1", "--no-progress", "--output", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    import json

    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["runtime"] for r in rows] == ["eager", "openvino"]
    assert rows[1]["error"] is None and rows[1]["median_ms"] > 0 and rows[1]["max_abs_diff"] < 1e-4
