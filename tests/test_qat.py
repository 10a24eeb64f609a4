"""Quantization-aware training of the weights: the rounding is ORT's, the gradient goes straight
through, BN folding commutes with it, and the engine trains and saves plain float weights."""

import copy
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from edgevision.export.bias_correction import fake_quantize_weight
from edgevision.training.qat import prepare_qat, strip_qat


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
def test_forward_uses_rounded_weights_and_gradient_goes_straight_through(weight_type):
    model, ref = _net(), _net()
    keys = list(model.state_dict())
    assert len(prepare_qat(model, weight_type, reduce_range=False)) == 3
    assert list(model.state_dict()) == keys  # checkpoints keep their keys
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(fake_quantize_weight(m.weight, True, False, weight_type))
    x = torch.randn(2, 3, 8, 8)
    out, want = model(x), ref(x)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    out.square().sum().backward()
    want.square().sum().backward()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)  # STE: d/dw of f(q(w)) = f'(q(w))
    assert not torch.equal(model[0].weight, ref[0].weight)  # the float master weights are kept
    strip_qat(model)
    assert type(model[0]) is nn.Conv2d and not hasattr(model[0], "_qat_spec")
    assert not torch.equal(model(x), want)


def test_rounding_commutes_with_bn_folding():
    """What QAT trains (rounded unfolded weights, then BN) is what the exporter runs (BN folded,
    then rounded per channel), negative BN scales included."""
    from edgevision.export.fuse import fuse_bn

    model = _net().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-2, 2, 8))
        model[1].running_var.uniform_(0.1, 3)
        model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    trained = copy.deepcopy(model)
    prepare_qat(trained, "int8", reduce_range=False)
    folded = fuse_bn(model, x[:1], inplace=False)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(fake_quantize_weight(m.weight, True, False))
        torch.testing.assert_close(folded(x), trained(x), atol=1e-5, rtol=1e-4)


def test_bad_qat_option():
    with pytest.raises(ValueError, match="--qat must be one of"):
        prepare_qat(_net(), "int4")
    from edgevision.training import make_config
    from edgevision.training.config import check_config

    with pytest.raises(ValueError, match="--qat must be int8 or uint8"):
        check_config(make_config("mobilenetv3_small_075", qat="fp8", output="x"))


def test_engine_trains_through_rounding_and_saves_plain_weights(tmp_path, capsys):
    from edgevision.training import prepare_sample_dataset, train

    data = prepare_sample_dataset(tmp_path / "d", train_per_class=2, val_per_class=1)
    cfg = dict(model="mobilenetv3_small_075", data=str(data), output=str(tmp_path / "run"), img_size=32,
               batch_size=10, epochs=1, workers=0, threads=1, progress=False, qat="int8")
    summary = train(cfg)
    assert "qat: " in capsys.readouterr().out
    plain = train(dict(cfg, output=str(tmp_path / "plain"), qat=None))
    assert sorted(load_file(summary["weights"])) == sorted(load_file(plain["weights"]))
    assert math.isfinite(summary["final_train_loss"])
