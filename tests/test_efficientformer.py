"""EfficientFormer: equality with timm on the same non-trivial weights, the official-format
converter, params vs the official code, any input size, and no stale attention bias."""

import sys
import types

# registry.py gives timm entries __module__ "edgevision.timm_models", which timm looks up in
# sys.modules; remove this line once registry.py points at a real module.
sys.modules.setdefault("edgevision.timm_models", types.ModuleType("edgevision.timm_models"))

import json  # noqa: E402
from collections import OrderedDict  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models.efficientformer import checkpoint_filter_fn  # noqa: E402

import edgevision as ev  # noqa: E402
from edgevision.models.base import InputShapeError  # noqa: E402
from edgevision.models.efficientformer import (  # noqa: E402
    attention_bias,
    convert_official_checkpoint,
    efficientformer_l1,
    efficientformer_l3,
    efficientformer_l7,
    timm_to_ours,
)
from edgevision.profiling import count_macs, count_params  # noqa: E402

TOL = 2e-6


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN stats/affine, LN affine, attention biases and layer scales ~U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif "attention_biases" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def timm_and_ours():
    torch.manual_seed(0)
    ref = randomize(timm.create_model("efficientformer_l1"))
    ours = efficientformer_l1()
    ours.load_state_dict(timm_to_ours(ref.state_dict()))
    return ref, ours.eval()


def test_equal_to_timm_on_same_weights(timm_and_ours):
    ref, ours = timm_and_ours
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    print(f"max|dlogits| vs timm efficientformer_l1: {diff:.2e}")
    assert diff <= TOL


def test_bias_at_7x7_is_the_fixed_grid_gather_exactly(timm_and_ours):
    ref, ours = timm_and_ours
    attn_ref = ref.stages[3].blocks[4].token_mixer
    attn = ours.stages[3].blocks[4].token_mixer
    fixed = attn_ref.attention_biases[:, attn_ref.attention_bias_idxs]
    assert torch.equal(attention_bias(attn.attention_biases, (7, 7)), fixed)


def official_state_dict(reference_dir, ref_model) -> OrderedDict:
    """Random values under the official key names, shapes and order (manifest)."""
    manifest = json.loads((reference_dir / "manifests" / "efficientformer_l1.json").read_text())
    g = torch.Generator().manual_seed(3)
    idxs = ref_model.stages[3].blocks[4].token_mixer.attention_bias_idxs
    sd = OrderedDict()
    for key, shape, dtype in manifest:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.zeros((), dtype=torch.int64)
        elif key.endswith("attention_bias_idxs"):
            sd[key] = idxs.clone()  # an official checkpoint stores the true 7x7 indices
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("weight") and len(shape) == 1 or "layer_scale" in key:
            sd[key] = torch.rand(shape, generator=g) + 0.5  # norm affine, layer scales ~ 1
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


@pytest.mark.slow
def test_official_format_loads_and_matches_timm_remap(reference_dir, timm_and_ours, tmp_path):
    ref, _ = timm_and_ours
    sd = official_state_dict(reference_dir, ref)
    timm_model = timm.create_model("efficientformer_l1")
    timm_model.load_state_dict(checkpoint_filter_fn(sd, timm_model))  # position-based: manifest order
    ours = efficientformer_l1()
    ours.load_state_dict(convert_official_checkpoint(sd))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (ours.eval()(x) - timm_model.eval()(x)).abs().max().item()
    print(f"official-format dict, ours vs timm remap: {diff:.2e}")
    assert diff <= TOL
    # and through create_model, which detects the format by its keys
    path = tmp_path / "official.safetensors"
    save_file(dict(sd), str(path))
    m = ev.create_model("efficientformer_l1", checkpoint=str(path))
    assert m.checkpoint_format == "official"


@pytest.mark.parametrize("builder", [efficientformer_l1, efficientformer_l3, efficientformer_l7])
def test_params_equal_official(builder, model_stats):
    with torch.device("meta"):
        m = builder()
    assert count_params(m) == model_stats[builder.__name__]["params"]


def test_macs_equal_official_at_224(model_stats):
    with torch.device("meta"):
        m = efficientformer_l1()
    assert count_macs(m, 224) == model_stats["efficientformer_l1"]["flops_torch"] // 2


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (320, 320), (256, 192)])
def test_runs_at_other_sizes(timm_and_ours, size):
    _, ours = timm_and_ours
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = ours(x)
        feats = ours.forward_intermediates(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert [f.shape[1] for f in feats] == [48, 96, 224, 448]
    assert feats[-1].shape[-2:] == (-(-size[0] // 32), -(-size[1] // 32))


@pytest.mark.parametrize("side", [64, 224])  # 224: the grid the official code caches for
def test_no_stale_bias_after_weight_change(side):
    torch.manual_seed(0)
    m = randomize(efficientformer_l1())
    attn = m.stages[3].blocks[4].token_mixer
    with torch.no_grad():  # make the attention branch matter at random init
        attn.qkv.weight.normal_(std=0.2)
        attn.proj.weight.normal_(std=0.2)
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        y0 = m(x)
        attn.attention_biases.add_(3 * torch.randn(8, 49))  # after eval(), in place
        y1 = m(x)
    assert (y1 - y0).abs().max() > 1e-5  # 50x above fp32 run-to-run noise (<2e-7)


def test_train_mode_heads_follow_timm():
    m = efficientformer_l1(num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    assert m(x).shape == (2, 10)  # averaged, like timm's default
    m.set_distilled_training(True)
    y, y_dist = m(x)
    assert y.shape == y_dist.shape == (2, 10)
    m.eval()
    assert m(x).shape == (2, 10)


def test_bad_inputs_raise_clearly():
    m = efficientformer_l1()
    with pytest.raises(InputShapeError, match="at least 32x32"):
        m(torch.randn(1, 3, 16, 64))
    with pytest.raises(InputShapeError, match="in_chans=3"):
        m(torch.randn(1, 1, 64, 64))


def test_features_only_strides():
    f = ev.create_model("efficientformer_l1", features_only=True)
    assert f.feature_info.reduction() == [4, 8, 16, 32]
    outs = f(torch.randn(1, 3, 64, 96))
    assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@settings(max_examples=4, deadline=None)
@given(h=st.integers(32, 160), w=st.integers(32, 160))
def test_property_any_size(timm_and_ours, h, w):
    m = timm_and_ours[1]
    with torch.no_grad():
        y = m(torch.randn(1, 3, h, w))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()

