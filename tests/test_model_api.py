"""timm's model-API checklist, run on every registered model.

Each check compares with the behaviour of a timm-native model: the attributes and methods
timm's own scripts and the libraries built on timm rely on (pretrained_cfg and
resolve_data_config, get/reset_classifier, global_pool, forward_head(pre_logits),
forward_intermediates, set_grad_checkpointing, no_weight_decay, group_matcher, img_size).
"""

import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.models import group_parameters

import edgevision as ev

NAMES = ev.list_models()
# One variant per family for the checks that run the network (the rest only build).
SMALLEST = ["edgevit_xxs", "efficientformer_l1", "efficientnet_lite0", "emo_1m", "mnasnet_100",
            "mobilenetv1_100", "mobilenetv2_035", "mobilenetv3_small_075", "nasnet_a_mobile",
            "semnasnet_100", "tiny_moat_0", "secure_mobilenetv1_100", "searched_mnasnet_t1"]
SIZE = 64


def _x(model, n=2, size=SIZE):
    torch.manual_seed(0)
    return torch.randn(n, getattr(model, "in_chans", 3), size, size)


def _modules(model, names: str):
    return [model.get_submodule(n) for n in names.split(",")]


def test_smallest_covers_every_family():
    families = {ev.model_info(n).family for n in NAMES}
    assert {ev.model_info(n).family for n in SMALLEST} == families


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_describes_the_model(name):
    model = ev.create_model(name)
    cfg = model.pretrained_cfg
    for key in ("input_size", "crop_pct", "mean", "std", "interpolation", "num_classes",
                "first_conv", "classifier", "url", "license", "paper_name", "architecture"):
        assert key in cfg, (name, key)
    assert cfg["architecture"] == name
    conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == 3, name
    for head in _modules(model, cfg["classifier"]):
        assert isinstance(head, nn.Linear | nn.Conv2d), name
        assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 1000
    assert model.default_cfg is model.pretrained_cfg
    # timm's own data pipeline resolves this model's preprocessing, not generic defaults
    data = resolve_data_config({}, model=model)
    assert data["input_size"] == tuple(cfg["input_size"])
    assert data["mean"] == tuple(cfg["mean"]) and data["std"] == tuple(cfg["std"])


def test_resolve_data_config_is_per_model():
    moat = resolve_data_config({}, model=ev.create_model("tiny_moat_0"))
    assert moat["input_size"] == (3, 256, 256)  # built for 256, not timm's generic 224
    nasnet = resolve_data_config({}, model=ev.create_model("nasnet_a_mobile"))
    assert nasnet["mean"] == (0.5, 0.5, 0.5) and nasnet["std"] == (0.5, 0.5, 0.5)
    emo = resolve_data_config({}, model=ev.create_model("emo_1m"))
    assert emo["mean"] == (0.485, 0.456, 0.406)


# Names timm also has, where edgevision keeps its own implementation because it does more
# (EfficientFormer at any input size with a bias that never goes stale); their equality with
# timm's on the same weights is tested in tests/test_efficientformer.py.
OWN_OVER_TIMM = {"efficientformer"}


@pytest.mark.parametrize("name", NAMES)
def test_same_class_through_timm(name):
    if ev.model_info(name).family in OWN_OVER_TIMM:
        pytest.skip("edgevision's own implementation by design; logits equal to timm's in its family tests")
    ours = ev.create_model(name)
    theirs = timm.create_model(name)
    assert type(ours) is type(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("name", SMALLEST)
def test_classifier_api(name):
    model = ev.create_model(name).eval()
    x = _x(model)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    assert all(h.out_features == 1000 for h in heads)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        # timm: pre-logits width is head_hidden_size where a head layer follows pooling
        hidden = getattr(model, "head_hidden_size", None) or model.num_features
        assert pre.shape == (2, hidden)
        model.reset_classifier(7)
        assert model.num_classes == 7 and model(x).shape == (2, 7)
        model.reset_classifier(0)
        assert model(x).shape == (2, hidden)
        assert torch.allclose(model(x), pre, atol=1e-5)


@pytest.mark.parametrize("name", SMALLEST)
def test_global_pool_empty_returns_unpooled_features(name):
    model = ev.create_model(name, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        y = model(_x(model))
    assert y.dim() in (3, 4) and y.shape[0] == 2  # NCHW maps; token models: (B, N, C)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    assert width in (y.shape[1], y.shape[-1])
    if hasattr(model, "set_global_pool") or not isinstance(model, timm.models.EfficientNet):
        with pytest.raises((ValueError, AssertionError)):
            ev.create_model(name, num_classes=10, global_pool="max_or_anything")


@pytest.mark.parametrize("name", SMALLEST)
def test_forward_intermediates(name):
    model = ev.create_model(name).eval()
    x = _x(model)
    info = model.feature_info
    chans = [d["num_chs"] for d in info]
    reductions = [d["reduction"] for d in info]
    n = len(chans)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert len(maps) == n
        for m, c, r in zip(maps, chans, reductions):
            assert m.shape[1] == c, (name, m.shape, c)
            assert abs(m.shape[-1] - SIZE / r) <= 1, (name, m.shape, r)  # NASNet's stem is unpadded
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last2] == [t.shape for t in maps[-2:]]
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.allclose(first[0], maps[0], atol=1e-6)
    with pytest.raises((ValueError, AssertionError, IndexError)):
        model.forward_intermediates(x, indices=[n + 3])


@pytest.mark.parametrize("name", SMALLEST)
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    a = ev.create_model(name, num_classes=5, drop_rate=0.0)  # no dropout: same random draws
    b = copy.deepcopy(a)
    b.set_grad_checkpointing(True)
    x = _x(a)
    for m in (a, b):
        m.train()
        torch.manual_seed(1)
        m(x).square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is None:
            assert pb.grad is None, n
            continue
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), (name, n)


@pytest.mark.parametrize("name", NAMES)
def test_no_weight_decay_and_group_matcher(name):
    model = ev.create_model(name)
    params = dict(model.named_parameters())
    # optional in timm (its optimizer factory checks hasattr); EfficientNet has none
    nwd = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    assert nwd <= set(params), nwd - set(params)
    groups = group_parameters(model, model.group_matcher())
    grouped = [p for g in groups.values() for p in g]
    assert sorted(grouped) == sorted(params)  # every parameter in exactly one group
    assert len(groups) > 2  # stem, several block groups, head


def test_no_weight_decay_covers_tables():
    ef = ev.create_model("efficientformer_l1")
    tables = {n for n, p in ef.named_parameters() if n.endswith("attention_biases")}
    assert tables and tables <= ef.no_weight_decay()
    moat = ev.create_model("tiny_moat_0")
    rel = {n for n, p in moat.named_parameters() if p.dim() >= 2 and "rel" in n}
    assert rel and rel <= moat.no_weight_decay()


@pytest.mark.parametrize("name", ["emo_1m", "tiny_moat_0", "mobilenetv2_100"])
def test_img_size_sets_the_config(name):
    model = ev.create_model(name, img_size=(192, 160))
    assert model.pretrained_cfg["input_size"] == (3, 192, 160)
    assert resolve_data_config({}, model=model)["input_size"] == (3, 192, 160)


def test_img_size_too_small_is_refused():
    with pytest.raises(ValueError, match="img_size"):
        ev.create_model("emo_1m", img_size=8)
    with pytest.raises(TypeError, match="img_size"):
        ev.create_model("emo_1m", img_size="big")


def test_pretrained_overlay_file_through_timm(reference_dir):
    path = reference_dir / "parity" / "emo_1m.safetensors"
    model = timm.create_model("emo_1m", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.checkpoint_format == "official"
    assert model.pretrained_cfg["file"] == str(path)


def test_wrong_argument_types_name_the_argument():
    with pytest.raises(TypeError, match="num_classes"):
        ev.create_model("emo_1m", num_classes="10")
    with pytest.raises(ValueError, match="drop_path_rate"):
        ev.create_model("emo_1m", drop_path_rate=1.5)
    with pytest.raises(TypeError, match="checkpoint"):
        ev.create_model("emo_1m", checkpoint=3)
