"""GPTQ weight rounding: on ORT's int8 grid, lower layer/output error than nearest rounding
(measured on inputs it was not fitted on), and exactly the weights ORT writes."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.export.bias_correction import fake_quantize_weight
from edgevision.export.fuse import fuse_bn
from edgevision.export.gptq import gptq_quantize, gptq_round


def _smooth_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Spatially correlated images (as photos are): what makes compensating rounding pay."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 4, size // 4, generator=g)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) + 0.1 * torch.randn(
        n, 3, size, size, generator=g)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))
    for bn in (m[1], m[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    return fuse_bn(m.eval(), torch.randn(1, 3, 16, 16), inplace=False).eval()


def _on_grid(w: torch.Tensor, reduce_range: bool = False, per_channel: bool = True) -> bool:
    return bool((fake_quantize_weight(w, per_channel=per_channel, reduce_range=reduce_range) - w).abs().max() <= 1e-6
                * max(1.0, float(w.abs().max())))


def test_gptq_quantize_lowers_the_layer_output_error_on_held_out_inputs():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 32, generator=g)
    x_fit, x_test = (torch.randn(n, 32, generator=g) @ mix for n in (2000, 1000))  # correlated inputs
    x_fit[:, 5] = 0  # an input that is always zero in calibration: no NaN, any value will do
    w = torch.randn(8, 32, generator=g)
    scale = w.abs().amax(1) / 127
    q = gptq_quantize(w.unsqueeze(0), (x_fit.t() @ x_fit).unsqueeze(0), scale.unsqueeze(0), 127.0)[0]
    assert torch.isfinite(q).all()
    steps = q / scale[:, None]
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
    assert steps.abs().max() <= 127 + 1e-4
    nearest = fake_quantize_weight(w, per_channel=True)
    err_gptq = ((q - w) @ x_test.t()).pow(2).mean()
    err_near = ((nearest - w) @ x_test.t()).pow(2).mean()
    assert err_gptq < 0.7 * err_near, (float(err_gptq), float(err_near))


@pytest.mark.parametrize("reduce_range", [False, True])
def test_gptq_round_puts_weights_on_ort_grid_and_beats_nearest(reduce_range):
    model = _net()
    calib, held_out = _smooth_images(128, seed=1), _smooth_images(64, seed=2)
    with torch.no_grad():
        ref = model(held_out)
        near = _net()
        for m in near.modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                m.weight.copy_(fake_quantize_weight(m.weight, per_channel=True, reduce_range=reduce_range))
        done = gptq_round(model, calib, reduce_range=reduce_range, skip={"8"}, batch=32)
        layers = {n: m for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
        assert done == [n for n in layers if n != "8"]
        assert all(_on_grid(layers[n].weight, reduce_range) for n in done)
        torch.testing.assert_close(layers["8"].weight, _net()[8].weight)  # skipped: left in float
        near[8].weight.copy_(_net()[8].weight)
        err_gptq = (model(held_out) - ref).pow(2).mean()
        err_near = (near(held_out) - ref).pow(2).mean()
    assert err_gptq < err_near, (float(err_gptq), float(err_near))


def test_gptq_keeps_ort_scales_so_the_int8_file_holds_exactly_these_weights(tmp_path):
    """ORT derives each channel's scale from the weights it is given: the rounded weights must
    come back unchanged from the quantized file (scale preserved, no second rounding)."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from edgevision.export.int8 import Int8Config, quantize_model

    calib, held_out = _smooth_images(32, seed=3), _smooth_images(16, seed=4)
    config = Int8Config("gptq", weight_rounding="gptq", reduce_range=False, calib_batch=8)
    res = quantize_model(_net(), calib, held_out, config, tmp_path)
    assert res.info["gptq_layers"] == 5
    prepared = onnx.load(str(tmp_path / "gptq.float.onnx"))
    float_w = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer if i.dims and len(i.dims) >= 2}
    q = onnx.load(str(res.int8_path))
    init = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    checked = 0
    for node in q.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in init or init[node.input[0]].ndim < 2:
            continue
        vals, scale = init[node.input[0]].astype("float64"), init[node.input[1]].astype("float64")
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * vals.ndim
        shape[axis] = -1
        deq = torch.from_numpy(vals * scale.reshape(shape)).float()
        match = [n for n, w in float_w.items() if w.shape == deq.shape and abs(w - deq.numpy()).max() <= 1e-6]
        assert match, f"{node.input[0]}: no prepared weight equals the dequantized int8 weight"
        checked += 1
    assert checked == 5
    # mixed precision with GPTQ: layers are scored on the float weights, the kept one stays float
    mixed = quantize_model(_net(), calib, held_out, Int8Config("gptq mixed", weight_rounding="gptq", reduce_range=False,
                                                              exclude_top_k=1, calib_batch=8), tmp_path)
    assert len(mixed.info["fp32_layers"]) == 1 and mixed.info["gptq_layers"] == 4


def test_config_refuses_unknown_rounding_and_gptq_with_uint8():
    from edgevision.export.int8 import Int8Config

    with pytest.raises(ValueError, match="weight_rounding"):
        Int8Config(weight_rounding="adaround")
    with pytest.raises(ValueError, match="int8"):
        Int8Config(weight_rounding="gptq", weight_type="uint8")


def test_cli_export_int8_with_gptq_rounding(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from edgevision.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", "mobilenetv3_small_075", "--size", "32", "--output", str(out), "--int8",
                 "--int8-rounding", "gptq"]) == 0
    text = capsys.readouterr().out
    assert "GPTQ-rounded weights" in text and "use " in text
    assert (tmp_path / "m.int8.onnx").is_file() and not (tmp_path / "m.gptq.onnx").exists()
    with pytest.raises(SystemExit):
        main(["export", "mobilenetv3_small_075", "--int8", "--int8-rounding", "adaround"])
