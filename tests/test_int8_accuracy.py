"""Int8 that keeps accuracy: CLE, bias correction, calibration methods, mixed precision,
the held-out protocol and the int8-or-fp32 choice rule (small models, fast)."""

import pytest
import torch
import torch.nn as nn

import edgevision
from edgevision.export.bias_correction import correct_bias, fake_quantize_weight
from edgevision.export.choice import choose_precision, int8_verdict, verdict_line
from edgevision.export.equalize import equalize, find_cle_pairs
from edgevision.export.fuse import fuse_bn
from edgevision.export.heldout import check_disjoint

pytest.importorskip("onnxruntime")


def _toy(act=nn.ReLU, seed=0) -> nn.Module:
    """conv-BN-act, depthwise conv-BN-act, pointwise conv, pool, linear: a mobile block."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), act(),
        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    for bn in (m[1], m[4]):  # trained-looking, very unequal per-channel statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data = torch.logspace(-1.5, 1.5, 8)[torch.randperm(8)]
    return m.eval()


def test_cle_equalizes_ranges_and_keeps_outputs():
    model = fuse_bn(_toy(), torch.randn(1, 3, 16, 16), inplace=False)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        eq, pairs = equalize(model)
        got = eq(x)
    assert [(a, b) for a, _, b in pairs] == [("0", "3"), ("3", "6")]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # conv "3" (depthwise) output ranges now match conv "6" input ranges channel by channel
    r1 = eq[3].weight.abs().flatten(1).amax(1)
    r2 = eq[6].weight.abs().amax((0, 2, 3))
    torch.testing.assert_close(r1, r2, rtol=1e-3, atol=0)
    before = model[3].weight.abs().flatten(1).amax(1)
    assert before.max() / before.min() > 4 * r1.max() / r1.min()  # the spread shrank


def test_cle_on_a_registry_model_keeps_outputs():
    model = edgevision.create_model("mnasnet_100", num_classes=10).eval()  # ReLU network
    x = torch.randn(2, 3, 32, 32)
    fused = fuse_bn(model, x[:1], inplace=False)
    with torch.no_grad():
        ref = fused(x)
        eq, pairs = equalize(fused, iterations=2)
        got = eq(x)
    assert len(pairs) >= 20
    assert not torch.equal(eq.blocks[1][0].conv_dw.weight, fused.blocks[1][0].conv_dw.weight)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_cle_relu6_skip_is_exact_and_replace_swaps_the_activation():
    model = fuse_bn(_toy(nn.ReLU6), torch.randn(1, 3, 16, 16), inplace=False)
    assert len(find_cle_pairs(model)) == 2
    skipped, pairs = equalize(model, relu6="skip")
    assert [(a, b) for a, _, b in pairs] == []  # both pairs pass through ReLU6
    replaced, pairs = equalize(model, relu6="replace")
    assert len(pairs) == 2 and type(replaced[2]) is nn.ReLU and type(model[2]) is nn.ReLU6
    with pytest.raises(ValueError, match="relu6"):
        equalize(model, relu6="clip")


def test_bias_correction_reduces_quantized_output_error():
    model = fuse_bn(_toy(), torch.randn(1, 3, 16, 16), inplace=False)
    calib = torch.randn(64, 3, 16, 16) + 1.5  # inputs with a mean: where rounding error biases outputs
    held_out = torch.randn(64, 3, 16, 16) + 1.5

    def quantized(m):  # weights rounded as ORT rounds them (per-tensor, 7-bit: coarse on purpose)
        q = fuse_bn(m, calib[:1], inplace=False)
        with torch.no_grad():
            for layer in (q[0], q[3], q[6], q[9]):
                layer.weight.copy_(fake_quantize_weight(layer.weight, per_channel=False, reduce_range=True))
        return q

    corrected, done = correct_bias(model, calib, per_channel=False, reduce_range=True)
    assert set(done) == {"0", "3", "6", "9"} and max(done.values()) > 0
    with torch.no_grad():
        ref = model(held_out)
        err_plain = (quantized(model)(held_out) - ref).mean(0).abs().mean()
        err_corrected = (quantized(corrected)(held_out) - ref).mean(0).abs().mean()
    assert err_corrected < 0.5 * err_plain
    with pytest.raises(ValueError, match="calibration images"):
        correct_bias(model, torch.randn(3, 16, 16))


def test_fake_quantize_matches_ort_weight_grid():
    w = torch.randn(4, 3, 3, 3)
    q = fake_quantize_weight(w, per_channel=True)
    steps = q.flatten(1) / (w.abs().flatten(1).amax(1, keepdim=True) / 127)
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)  # on the int8 grid
    assert (q - w).abs().max() <= w.abs().max() / 127 / 2 + 1e-6


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_fake_quantize_equals_the_weights_ort_writes(tmp_path, weight_type, reduce_range):
    """Bias correction and sensitivity round weights as ORT will: compare with the dequantized
    initializers of a real quantized file, per channel, for both weight types."""
    import onnx
    from onnx import numpy_helper

    from edgevision.export.onnx import export_onnx
    from edgevision.export.quantize import quantize_onnx_static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.linspace(0.1, 3, 5).view(-1, 1, 1, 1)).add_(0.05)  # skewed: zero point != 0
    fp32 = export_onnx(model, tmp_path / "m.onnx", (1, 3, 8, 8))
    int8 = quantize_onnx_static(fp32, tmp_path / "q.onnx", torch.randn(4, 3, 8, 8), batch=1,
                                reduce_range=reduce_range, weight_type=weight_type)
    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer}
    dq = next(n for n in onnx.load(str(int8)).graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in init and init[n.input[0]].ndim == 4)
    q, scale, zero = (torch.from_numpy(init[i].astype("float64")) for i in dq.input)
    ort_w = ((q - zero.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)).float()
    ours = fake_quantize_weight(model[0].weight.detach(), per_channel=True, reduce_range=reduce_range,
                                weight_type=weight_type)
    torch.testing.assert_close(ours, ort_w, atol=1e-6, rtol=0)
    assert init[dq.input[0]].dtype.name == weight_type
    with pytest.raises(ValueError, match="weight_type"):
        quantize_onnx_static(fp32, tmp_path / "x.onnx", torch.randn(1, 3, 8, 8), weight_type="int4")


def test_overlapping_sets_are_refused(tmp_path):
    from PIL import Image

    x = torch.randn(6, 3, 8, 8)
    with pytest.raises(ValueError, match="identical"):
        check_disjoint(x, x.clone())
    with pytest.raises(ValueError, match="overlapping: 1 evaluation"):
        check_disjoint(x[:4], x[3:])
    assert check_disjoint(x[:3], x[3:]) == 3
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(files[-1])
    (tmp_path / "copy.png").write_bytes(files[0].read_bytes())
    with pytest.raises(ValueError, match="overlap: 1 of 2 evaluation files"):
        check_disjoint(files[:2], files[1:3])
    with pytest.raises(ValueError, match="overlapping"):
        check_disjoint(files[:2], [tmp_path / "copy.png", files[3]])  # same image, another name
    assert check_disjoint(files[:2], files[2:]) == 2
    with pytest.raises(TypeError):
        check_disjoint(files, x)


def test_quantize_model_refuses_in_sample_evaluation(tmp_path):
    from edgevision.export.int8 import quantize_model

    x = torch.randn(8, 3, 16, 16)
    with pytest.raises(ValueError, match="identical"):
        quantize_model(_toy(), x, x, workdir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any export


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory):
    from edgevision.export.onnx import export_onnx
    from edgevision.export.quantize import preprocess_onnx

    d = tmp_path_factory.mktemp("toy")
    fp32 = export_onnx(_toy(), d / "toy.onnx", (1, 3, 16, 16), dynamic_batch=True)
    return preprocess_onnx(fp32, d / "toy.pre.onnx")


def _weights_quantized(path):
    """{conv/gemm node name: whether its weight arrives through a DequantizeLinear}."""
    import onnx

    g = onnx.load(str(path)).graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    return {n.name: n.input[1] in dq_out for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_calibration_methods_run(method, toy_onnx, tmp_path):
    from edgevision.export.int8 import run_onnx
    from edgevision.export.quantize import quantize_onnx_static

    calib, held_out = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    out = quantize_onnx_static(toy_onnx, tmp_path / "q.onnx", calib, batch=8, method=method, preprocess=False)
    assert all(_weights_quantized(out).values())
    ref, got = run_onnx(toy_onnx, held_out), run_onnx(out, held_out)
    assert 0 < (got - ref).abs().max() < 0.2 * ref.abs().max()
    with pytest.raises(ValueError, match="calibration method"):
        quantize_onnx_static(toy_onnx, tmp_path / "q.onnx", calib, method="mse")


def test_mixed_precision_excludes_the_named_nodes(toy_onnx, tmp_path):
    from edgevision.export.quantize import quantizable_nodes, quantize_onnx_static

    nodes = quantizable_nodes(toy_onnx)
    assert len(nodes) == 4
    out = quantize_onnx_static(toy_onnx, tmp_path / "q.onnx", torch.randn(8, 3, 16, 16), batch=8,
                               nodes_to_exclude=nodes[1:3], preprocess=False)
    quantized = _weights_quantized(out)
    assert [quantized[n] for n in nodes] == [True, False, False, True]
    # ORT keeps the fp32 conv's ReLU in float: no QDQ pair on the wide pre-activation output (the
    # activation is quantized after it, over the activated range)
    import onnx

    g = onnx.load(str(out)).graph
    producer = {o: n for n in g.node for o in n.output}
    acts = [n for n in g.node if n.op_type in ("Relu", "Clip")]
    assert any(producer[a.input[0]].name == nodes[1] for a in acts), \
        [(a.name, producer[a.input[0]].op_type) for a in acts]


def test_a_layer_kept_fp32_stays_fp32_in_our_sessions(toy_onnx, tmp_path):
    """ORT's WeightBiasQuantization transformer would quantize a float conv between quantized
    neighbours (per tensor), undoing mixed precision: our sessions must run it as the file says,
    i.e. give what the session with every graph optimization off gives."""
    import onnxruntime as ort

    from edgevision.export.int8 import run_onnx
    from edgevision.export.quantize import quantizable_nodes, quantize_onnx_static

    calib = torch.randn(16, 3, 16, 16)
    dw = quantizable_nodes(toy_onnx)[1]  # the depthwise conv: very unequal per-channel scales
    out = quantize_onnx_static(toy_onnx, tmp_path / "q.onnx", calib, batch=8, nodes_to_exclude=[dw],
                               preprocess=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(8, 3, 16, 16)
    as_written = torch.from_numpy(plain.run(None, {plain.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(run_onnx(out, x), as_written, atol=1e-4, rtol=1e-4)


def test_quantize_model_with_sensitivity_and_every_technique(tmp_path):
    from edgevision.export.int8 import Int8Config, quantize_model

    config = Int8Config("all", method="percentile", cle=True, bias_correction=True, exclude_top_k=1,
                        calib_batch=8)
    result = quantize_model(_toy(), torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16), config, tmp_path)
    assert len(result.excluded) == 1 and result.info["cle_pairs"] == 2
    assert len(result.info["fp32_layers"]) == 1
    assert result.info["bias_corrected_layers"] == 3  # the layer kept fp32 is not rounded: no correction
    assert set(_weights_quantized(result.int8_path).values()) == {True, False}
    scores = result.info["sensitivity_top"]
    assert len(scores) == 4 and scores[0][1] >= scores[-1][1]  # every node scored, most sensitive first
    assert result.int8_logits.shape == result.fp32_logits.shape == (8, 4)
    assert 0.0 <= result.agreement <= 1.0
    with pytest.raises(ValueError, match="method"):
        Int8Config(method="kl")


def test_choice_rule_never_picks_a_slower_int8(toy_onnx):
    assert choose_precision(fp32_ms=2.0, int8_ms=2.5) == "fp32"
    assert choose_precision(fp32_ms=2.0, int8_ms=1.99) == "fp32"  # within the noise margin
    assert choose_precision(fp32_ms=2.0, int8_ms=1.5) == "int8"
    with pytest.raises(ValueError):
        choose_precision(0.0, 1.0)

    def fake(int8_ms):
        def timer(fns):
            assert set(fns) == {"fp32", "int8"}
            fns["fp32"]()  # the sessions run
            fns["int8"]()
            return {"fp32": [3.0, 3.1, 2.9], "int8": [int8_ms] * 3}
        return timer

    slow = int8_verdict(toy_onnx, toy_onnx, (1, 3, 16, 16), timer=fake(4.0))
    assert slow["choice"] == "fp32" and slow["speedup"] < 1
    assert "use fp32 (int8 is slower here)" in verdict_line(slow)
    fast = int8_verdict(toy_onnx, toy_onnx, (1, 3, 16, 16), timer=fake(1.5))
    assert fast["choice"] == "int8" and "use int8" in verdict_line(fast)
