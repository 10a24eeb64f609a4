"""MobileNetV1/V2/V3, MnasNet A1/B1, EfficientNet-Lite0: timm's models, torchvision's weights convert.

Each registered name builds timm's own network (same class, same state-dict keys). The
torchvision converters are checked for faithfulness: torchvision's model with random weights
and randomized BN statistics (so normalization and its eps matter) is saved, loaded through
``create_model(checkpoint=...)`` (format detected by keys) and eval-mode logits must agree
within 1e-5, computed in float64 so that only a conversion mistake can exceed it.
"""

import pytest
import timm
import torch
import torchvision

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError, load_state_dict_strict
from edgevision.models._mobile_cnn import shift_bn_eps
from edgevision.models.base import InputShapeError
from edgevision.profiling import count_macs, count_params
from edgevision.testing import randomize_norms

MODELS = [
    "mobilenetv1_100",
    "mobilenetv2_035", "mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_large_075", "mobilenetv3_large_100", "mobilenetv3_small_075", "mobilenetv3_small_100",
    "semnasnet_100", "mnasnet_100",
    "efficientnet_lite0",
]
# ours -> (torchvision builder, its kwargs)
TORCHVISION = {
    "mobilenetv2_100": ("mobilenet_v2", {}),
    "mobilenetv2_050": ("mobilenet_v2", {"width_mult": 0.5}),
    "mobilenetv3_large_100": ("mobilenet_v3_large", {}),
    "mobilenetv3_small_100": ("mobilenet_v3_small", {}),
    "mnasnet_100": ("mnasnet1_0", {}),
}
TOL = 1e-5


def test_every_mobile_cnn_is_registered():
    families = ("mobilenetv1", "mobilenetv2", "mobilenetv3", "mnasnet", "efficientnet_lite")
    assert sorted(n for f in families for n in ev.list_models(family=f)) == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_builds_timms_own_model(name):
    with torch.device("meta"):
        ours, ref = ev.create_model(name), timm.create_model(name)
    assert type(ours) is type(ref) and type(ours).__module__.startswith("timm.")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_build_options_pass_through_to_timm():
    m = ev.create_model("mobilenetv2_100", num_classes=10, in_chans=1, drop_rate=0.3, drop_path_rate=0.1)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert m.drop_rate == 0.3 and m.num_features == 1280 and m.conv_stem.in_channels == 1
    dprs = [b.drop_path.drop_prob for stage in m.blocks for b in stage if hasattr(b.drop_path, "drop_prob")]
    assert max(dprs) == pytest.approx(0.1 * 16 / 17)  # timm's linear schedule over 17 blocks
    m.reset_classifier(0)
    assert m.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 1280)
    v3 = ev.create_model("mobilenetv3_large_100", bn_eps=1e-3)  # torchvision's eps, timm's option
    bns = [b for b in v3.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns and all(b.eps == 1e-3 for b in bns)
    assert v3.forward_head(torch.randn(1, 960, 2, 2), pre_logits=True).shape == (1, 1280)
    with pytest.raises(TypeError, match="widht"):
        ev.create_model("mnasnet_100", widht=2)


def _max_diff(ours, ref, size=96) -> float:
    """Max |logit difference| in float64 on random input, after checking the logits mean something."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        a, b = ours.double()(x), ref.double()(x)
    assert a.shape == b.shape == (2, 1000)
    assert 0.05 < b.abs().max() < 1e4  # logits of a scale where 1e-5 means something
    assert (b[0] - b[1]).abs().max() > 1e-3  # and they depend on the input
    # Relative to the logit scale: converters that fold a BN eps difference write
    # running_var + 9.9e-4 in float32, a rounding of ~3e-7 of the logits (seen up to 1.1e-5
    # absolute with large random logits, depending on the RNG state other tests leave).
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item() / 10)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_checkpoint_loads_and_matches(name, tmp_path):
    builder, kwargs = TORCHVISION[name]
    ref = randomize_norms(getattr(torchvision.models, builder)(**kwargs), side=64)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    ours = ev.create_model(name, checkpoint=str(path)).eval()  # format detected by keys
    assert ours.checkpoint_format == "torchvision"
    assert count_params(ours) == count_params(ref)
    assert _max_diff(ours, ref) <= TOL


def test_torchvision_order_does_not_depend_on_the_file(tmp_path):
    """Pairing follows module structure, not the file's key order (safetensors sorts keys)."""
    ref = randomize_norms(torchvision.models.mnasnet1_0(), side=64)
    shuffled = dict(sorted(ref.state_dict().items(), key=lambda kv: kv[0][::-1]))
    ours = ev.create_model("mnasnet_100").eval()
    load_state_dict_strict(ours, ev.model_info("mnasnet_100").converters["torchvision"](shuffled))
    assert _max_diff(ours, ref) <= TOL


def test_torchvision_mobilenetv3_bn_eps_is_folded():
    """torchvision's MobileNetV3 uses BN eps 1e-3: without folding it, logits differ."""
    ref = randomize_norms(torchvision.models.mobilenet_v3_small(), side=64)
    sd = ev.model_info("mobilenetv3_small_100").converters["torchvision"](ref.state_dict())
    unfolded = shift_bn_eps(sd, 1e-5, 1e-3)
    ours = ev.create_model("mobilenetv3_small_100").eval()
    load_state_dict_strict(ours, unfolded)
    assert _max_diff(ours, ref) > 100 * TOL
    built_like_tv = ev.create_model("mobilenetv3_small_100", bn_eps=1e-3).eval()
    load_state_dict_strict(built_like_tv, unfolded)
    assert _max_diff(built_like_tv, ref) <= TOL


def test_converter_of_another_structure_lists_the_pairs():
    """A torchvision MobileNetV3-Large checkpoint into the Small model: a clear, listed mismatch."""
    sd = torchvision.models.mobilenet_v3_large().state_dict()
    with pytest.raises(CheckpointMismatchError) as err:
        ev.model_info("mobilenetv3_small_100").converters["torchvision"](sd)
    msg = str(err.value)
    assert "torchvision MobileNetV3 -> timm mobilenetv3_small_100" in msg
    # the first pair that differs: Large has no SE in its first block, Small has
    assert "features.1.block.1.0.weight -> blocks.0.0.se.conv_reduce.weight" in msg
    with pytest.raises(KeyError, match="not a torchvision MNASNet"):
        ev.model_info("mnasnet_100").converters["torchvision"](sd)


def test_wrong_torchvision_checkpoint_names_the_closest_format(tmp_path):
    path = tmp_path / "large.pth"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="closest: torchvision") as err:
        ev.create_model("mobilenetv3_small_100", checkpoint=str(path))
    assert "-> blocks." in str(err.value)


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
def test_params_and_macs_near_the_published_figures(name):
    """Within 4% of the published parameters and 6% of the published MACs (EfficientNet-Lite0's
    README counts 407M where the network has 385M multiply-adds; the rest are within 1.5%)."""
    info = ev.model_info(name)
    with torch.device("meta"):
        model = ev.create_model(name)
    assert abs(count_params(model) / info.published_params - 1) < 0.04
    assert abs(count_macs(model, (1, 3, 224, 224)) / info.published_macs - 1) < 0.06


@pytest.mark.parametrize("name", MODELS)
def test_features_only_shapes(name):
    model = ev.create_model(name, features_only=True).eval()
    info = model.feature_info
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.channels() == timm.create_model(name, features_only=True).feature_info.channels()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == info.channels()
    for f, r in zip(feats, info.reduction()):
        assert f.shape[2:] == (64 // r, 96 // r)


def test_out_indices():
    feats = ev.create_model("mobilenetv3_small_100", features_only=True, out_indices=(2, 4))
    assert feats.feature_info.reduction() == [8, 32]


def test_wrong_channels_are_clear():
    m = ev.create_model("mobilenetv3_small_100").eval()
    with pytest.raises(InputShapeError, match="in_chans=3 but the input has 1 channels"):
        m(torch.randn(1, 1, 64, 64))
    feats = ev.create_model("mnasnet_100", features_only=True)
    with pytest.raises(InputShapeError, match="in_chans=3 but the input has 4 channels"):
        feats(torch.randn(1, 4, 64, 64))


def test_checkpoint_of_another_model_lists_keys(tmp_path):
    path = tmp_path / "v2.safetensors"
    ev.save_model(ev.create_model("mobilenetv2_100"), path, model_name="mobilenetv2_100")
    with pytest.raises(CheckpointMismatchError) as err:
        ev.create_model("mobilenetv3_small_100", checkpoint=str(path))
    msg = str(err.value)
    assert "saved from model 'mobilenetv2_100'" in msg
    assert "missing keys" in msg and "mis-shaped keys" in msg and "blocks." in msg
    # ours (timm's layout) round-trips exactly, and so do timm's own weights
    m = ev.create_model("mobilenetv2_100", checkpoint=str(path))
    assert m.checkpoint_format == "edgevision"
    ref = timm.create_model("mobilenetv2_100")
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    m = ev.create_model("mobilenetv2_100", checkpoint=str(tmp_path / "timm.pth"))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))
