"""MobileNetV1/V2/V3, MnasNet A1/B1, EfficientNet-Lite0: equal to timm and torchvision.

Faithfulness: the reference is built with random weights and randomized BN statistics and
affine parameters (so normalization and its eps matter), its state dict is converted and
loaded strictly into ours, and eval-mode logits must agree within 1e-5 (64-96 px inputs).
"""

import pytest
import torch
import torch.nn as nn

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError, load_state_dict_strict
from edgevision.models.base import InputShapeError
from edgevision.profiling import count_macs, count_params

MODELS = [
    "mobilenetv1_100",
    "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "mobilenetv3_small_075", "mobilenetv3_small_100",
    "semnasnet_100", "mnasnet_100",
    "efficientnet_lite0",
]
# ours -> torchvision builder name
TORCHVISION = {
    "mobilenetv2_100": "mobilenet_v2",
    "mobilenetv3_large_100": "mobilenet_v3_large",
    "mobilenetv3_small_100": "mobilenet_v3_small",
    "mnasnet_100": "mnasnet1_0",
}
TOL = 1e-5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Realistic-but-random BN statistics and affine parameters, then eval().

    Running stats are first set from one train-mode batch (so activations neither vanish
    nor explode through depth), then perturbed per channel so normalization and its eps
    matter; the classifier gets weights large enough for logits of order 1.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0  # running stats := this batch's stats
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5 / m.in_features**0.5)
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_var.mul_(torch.rand(n, generator=g) * 0.2 + 0.9).add_(0.01)  # no dead channels
                m.running_mean.add_(torch.randn(n, generator=g) * 0.05 * m.running_var.sqrt())
    return model.eval()


def max_diff(ours, ref, size=64) -> float:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert a.shape == b.shape == (2, 1000)
    assert 0.05 < b.abs().max() < 100  # logits of a scale where 1e-5 means something
    assert (b[0] - b[1]).abs().max() > 1e-4  # and they depend on the input
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.mark.parametrize("name", MODELS)
def test_params_and_logits_equal_timm(name, timm):
    ref = randomize(timm.create_model(name))
    ours = ev.create_model(name).eval()
    assert count_params(ours) == count_params(ref)
    load_state_dict_strict(ours, ev.model_info(name).converters["timm"](ref.state_dict()))
    assert max_diff(ours, ref) <= TOL


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_checkpoint_loads_and_matches(name, tmp_path):
    import torchvision

    ref = randomize(getattr(torchvision.models, TORCHVISION[name])())
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    ours = ev.create_model(name, checkpoint=str(path)).eval()  # format detected by keys
    assert ours.checkpoint_format == "torchvision"
    assert count_params(ours) == count_params(ref)
    assert max_diff(ours, ref, 96) <= TOL


def test_torchvision_mobilenetv3_bn_eps_is_folded():
    """torchvision's MobileNetV3 uses BN eps 1e-3: without folding it, logits differ."""
    import torchvision

    from edgevision.models.mobilenetv3 import convert_torchvision, shift_bn_eps

    ref = randomize(torchvision.models.mobilenet_v3_small())
    ours = ev.create_model("mobilenetv3_small_100").eval()
    sd = convert_torchvision(ref.state_dict())
    load_state_dict_strict(ours, shift_bn_eps(sd, 1e-5, 1e-3))  # undo the fold
    assert max_diff(ours, ref) > 10 * TOL
    built_like_tv = ev.create_model("mobilenetv3_small_100", bn_eps=1e-3).eval()
    load_state_dict_strict(built_like_tv, shift_bn_eps(sd, 1e-5, 1e-3))
    assert max_diff(built_like_tv, ref) <= TOL


@pytest.mark.parametrize("name,stats_keys", [
    ("mobilenetv2_100", ["timm_mobilenetv2_100", "torchvision_mobilenet_v2"]),
    ("mobilenetv3_large_100", ["timm_mobilenetv3_large_100", "torchvision_mobilenet_v3_large"]),
    ("mobilenetv3_small_100", ["timm_mobilenetv3_small_100", "torchvision_mobilenet_v3_small"]),
    ("mnasnet_100", ["timm_mnasnet_100", "torchvision_mnasnet1_0"]),
])
def test_macs_match_reference_stats(name, stats_keys, model_stats):
    with torch.device("meta"):
        model = ev.create_model(name)
    macs = count_macs(model, (1, 3, 224, 224))
    for key in stats_keys:
        assert macs == model_stats[key]["flops_torch"] // 2, key
        assert count_params(model) == model_stats[key]["params"], key


@pytest.mark.parametrize("name", MODELS)
def test_features_only_shapes(name):
    model = ev.create_model(name, features_only=True).eval()
    info = model.feature_info
    assert info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == info.channels()
    for f, r in zip(feats, info.reduction()):
        assert f.shape[2:] == (64 // r, 96 // r)


def test_feature_info_matches_timm_channels(timm):
    for name in ("mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv2_100", "semnasnet_100"):
        ref = timm.create_model(name, features_only=True)
        ours = ev.create_model(name, features_only=True)
        assert ours.feature_info.channels() == ref.feature_info.channels()
        assert ours.feature_info.reduction() == ref.feature_info.reduction()


def test_out_indices_and_head_options():
    feats = ev.create_model("mobilenetv3_small_100", features_only=True, out_indices=(2, 4))
    assert feats.feature_info.reduction() == [8, 32]
    m = ev.create_model("mobilenetv2_100", num_classes=10, in_chans=1, drop_rate=0.3, drop_path_rate=0.1)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert m.drop.p == 0.3 and m.num_features == 1280
    assert max(b.drop_path.drop_prob for b in m.blocks if hasattr(b, "drop_path")
               and hasattr(b.drop_path, "drop_prob")) == pytest.approx(0.1 * 15 / 17)
    m.reset_classifier(0)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 1280)
    v3 = ev.create_model("mobilenetv3_large_100")
    assert v3.num_features == 1280 and v3.forward_head(torch.randn(1, 960, 2, 2), pre_logits=True).shape == (1, 1280)
    with pytest.raises(TypeError, match="unexpected arguments"):
        ev.create_model("mnasnet_100", widht=2)


def test_wrong_channels_and_too_small_input_are_clear():
    m = ev.create_model("mobilenetv3_small_100").eval()
    with pytest.raises(InputShapeError, match="in_chans=3 but the input has 1 channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError, match="at least 32x32 pixels; got 16x40"):
        m(torch.randn(1, 3, 16, 40))
    feats = ev.create_model("mnasnet_100", features_only=True)
    with pytest.raises(InputShapeError, match="got 31x64"):
        feats(torch.randn(1, 3, 31, 64))


def test_checkpoint_of_another_model_lists_keys(tmp_path):
    path = tmp_path / "v2.safetensors"
    ev.save_model(ev.create_model("mobilenetv2_100"), path, model_name="mobilenetv2_100")
    with pytest.raises(CheckpointMismatchError) as err:
        ev.create_model("mobilenetv3_small_100", checkpoint=str(path))
    msg = str(err.value)
    assert "saved from model 'mobilenetv2_100'" in msg
    assert "missing keys" in msg and "mis-shaped keys" in msg and "blocks." in msg
    # ours round-trips exactly
    m = ev.create_model("mobilenetv2_100", checkpoint=str(path))
    assert m.checkpoint_format == "edgevision"
