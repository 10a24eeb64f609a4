"""Each bench runtime reproduces eager fp32 on a model whose logits depend on the input,
and leaves the caller's model untouched."""

import importlib.util

import pytest
import torch

import edgevision
from edgevision.profiling.runtimes import RUNTIMES, get_runtime
from edgevision.testing import randomize_norms as randomize

FP32 = ["channels_last", "fused", "torchscript", "onnxruntime"]


@pytest.fixture(scope="module")
def model_and_input():
    # EMO: convs, BN (pre- and post-norm), LayerNorm and windowed attention in one small model.
    torch.manual_seed(0)  # the builders' init uses the global generator; int8 error depends on it
    model = randomize(edgevision.create_model("emo_1m"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model(x)
    assert (ref[0] - ref[1]).abs().max() > 0.05 * ref.abs().max() > 1e-3  # non-trivial logits
    return model, x, ref


def _run(name, model, x, **options):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fn = get_runtime(name, threads=1, **options).prepare(model, x)
    with torch.inference_mode():
        out = fn(x).float()
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state), \
        f"{name}: prepare() changed the caller's model"
    return out


@pytest.mark.parametrize("name", FP32)
def test_fp32_runtimes_match_eager(name, model_and_input):
    model, x, ref = model_and_input
    out = _run(name, model, x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def _photos_and_ref(model):
    from edgevision.export.quantize import calibration_images

    x = calibration_images(None, size=64, n=4)  # int8 is calibrated on (other views of) photos
    with torch.inference_mode():
        return x, model(x)


def _close_but_quantized(out, ref):
    diff = (out - ref).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(out, ref, dim=1).min().item()
    assert diff > 0, "int8 output identical to fp32: nothing was quantized"
    assert cosine > 0.8, f"int8 logits point elsewhere than fp32 (cosine {cosine:.2f})"


def test_onnxruntime_int8_is_close_but_quantized(model_and_input):
    model = model_and_input[0]
    x, ref = _photos_and_ref(model)
    _close_but_quantized(_run("onnxruntime-int8", model, x, calib_count=16), ref)


@pytest.mark.slow  # inductor compiles C++ (~25 s on 2 cores)
def test_compile_runtime_matches_eager(model_and_input):
    model, x, ref = model_and_input
    out = _run("compile", model, x)
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.slow  # export, calibration, then an inductor compile (~1 min on 2 cores)
@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao ([quant] extra) not installed")
def test_pt2e_int8_runtime_keeps_top1_on_pretrained_weights():
    from test_quantize import _pretrained_lite0

    from edgevision.export.quantize import calibration_images, top1_agreement
    from edgevision.profiling.bench import _normalization

    model = _pretrained_lite0()
    norm = _normalization("efficientnet_lite0", model)
    x = calibration_images(None, size=160, n=32, **norm)
    with torch.inference_mode():
        ref = model(x)
    fn = get_runtime("pt2e-int8", threads=1, calib_count=16, **norm).prepare(model, x[:1])
    with torch.inference_mode():
        out = torch.cat([fn(x[i:i + 1]).float() for i in range(len(x))])
    _close_but_quantized(out, ref)
    assert top1_agreement(ref, out) >= 0.65  # 0.81 measured with torchao 0.18


def test_every_runtime_is_covered():
    covered = {"eager", *FP32, "onnxruntime-int8", "compile", "pt2e-int8",
               "optimized",  # optimized: tests/test_optimize.py (its allocator setting is process-wide)
               "openvino",  # tests/test_runtimes_tuned.py
               "sparse"}  # tests/test_sparse_kernels.py (the runtime equals the masked dense model)
    assert covered == set(RUNTIMES)
