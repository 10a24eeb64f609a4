"""EfficientFormer: equality with timm on the same non-trivial weights, the official-format
converter, params vs the official code, any input size, and no stale attention bias."""

import json
from collections import OrderedDict

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from timm.models.efficientformer import checkpoint_filter_fn

import edgevision as ev
from edgevision.models import efficientformer as ef
from edgevision.models.base import InputShapeError
from edgevision.models.efficientformer import (
    attention_bias,
    convert_official_checkpoint,
    efficientformer_l1,
    efficientformer_l3,
    efficientformer_l7,
    timm_to_ours,
)
from edgevision.profiling import count_macs, count_params

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


def assert_order_one_layer_scales(model: torch.nn.Module) -> None:
    """Guard against a silent no-op randomize(): at the 1e-5 init the blocks hardly matter."""
    gammas = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "gamma" in n])
    assert gammas.numel() > 0 and gammas.min() >= 0.5 and gammas.max() <= 1.5


def timm_pair(name: str, seed: int = 0):
    """(timm model, ours) with the same randomized weights, both in eval mode."""
    torch.manual_seed(seed)
    ref = randomize(timm.create_model(name))
    assert_order_one_layer_scales(ref)
    ours = getattr(ef, name)()
    ours.load_state_dict(timm_to_ours(ref.state_dict()))
    assert_order_one_layer_scales(ours)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def timm_and_ours():
    return timm_pair("efficientformer_l1")


def _max_diff_vs_timm(ref, ours, batch=2):
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(x) - ref(x)).abs().max().item()


def test_equal_to_timm_on_same_weights(timm_and_ours):
    diff = _max_diff_vs_timm(*timm_and_ours)
    print(f"max|dlogits| vs timm efficientformer_l1: {diff:.2e}")
    assert diff <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientformer_l3", "efficientformer_l7"])
def test_equal_to_timm_on_same_weights_l3_l7(name):
    diff = _max_diff_vs_timm(*timm_pair(name), batch=1)
    print(f"max|dlogits| vs timm {name}: {diff:.2e}")
    assert diff <= TOL


def test_bias_at_7x7_is_the_fixed_grid_gather_exactly(timm_and_ours, monkeypatch):
    ref, ours = timm_and_ours
    attn_ref = ref.stages[3].blocks[4].token_mixer
    attn = ours.stages[3].blocks[4].token_mixer
    fixed = attn_ref.attention_biases[:, attn_ref.attention_bias_idxs]
    assert torch.equal(attention_bias(attn.attention_biases, (7, 7)), fixed)
    # and the whole network at 224: logits identical to a forward that uses the fixed-grid
    # gather (the official/timm indexing) instead of our any-grid path
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    idxs = attn_ref.attention_bias_idxs
    with torch.no_grad():
        y = ours(x)
        calls = []

        def fixed_grid(table, grid):
            calls.append(grid)
            assert grid == (7, 7)
            return table[:, idxs]

        monkeypatch.setattr(ef, "attention_bias", fixed_grid)
        y_fixed = ours(x)
    assert calls and torch.equal(y, y_fixed)


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


def official_keys(manifest, depths, num_vit) -> list[str]:
    """Official key names for any variant, in official order, built from the L1 manifest.

    The manifest gives the key suffixes of the stem (patch_embed.*), a downsample
    (network.1.*), a Meta4D block (network.0.0.*), a Meta3D block (network.6.4.*) and the
    head; the official ``network`` alternates stage, downsample, ... and puts one
    parameterless Flat module before the last stage's ``num_vit`` Meta3D blocks.
    """
    keys = [k for k, _, _ in manifest]

    def suffixes(prefix):
        return [k[len(prefix):] for k in keys if k.startswith(prefix)]

    meta4d, meta3d, down = suffixes("network.0.0."), suffixes("network.6.4."), suffixes("network.1.")
    out = [k for k in keys if k.startswith("patch_embed.")]
    for i, d in enumerate(depths):
        if i:
            out += [f"network.{2 * i - 1}.{x}" for x in down]
        for j in range(d):
            if i == len(depths) - 1 and j >= d - num_vit:
                out += [f"network.{2 * i}.{j + 1}.{x}" for x in meta3d]  # +1: the Flat module
            else:
                out += [f"network.{2 * i}.{j}.{x}" for x in meta4d]
    return out + [k for k in keys if k.split(".")[0] in ("norm", "head", "dist_head")]


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7"])
def test_official_key_names_convert_for_every_variant(reference_dir, name):
    manifest = json.loads((reference_dir / "manifests" / "efficientformer_l1.json").read_text())
    cfg = ef.CFGS[name]
    keys = official_keys(manifest, cfg["depths"], cfg["num_vit"])
    if name == "efficientformer_l1":  # the generator reproduces the real manifest, in order
        assert keys == [k for k, _, _ in manifest]
    with torch.device("meta"):
        ours = getattr(ef, name)().state_dict()
    converted = convert_official_checkpoint({k: torch.empty(0) for k in keys})
    assert sorted(converted) == sorted(ours)


@pytest.mark.parametrize("builder", [efficientformer_l1, efficientformer_l3, efficientformer_l7])
def test_params_equal_official(builder, model_stats):
    with torch.device("meta"):
        m = builder()
    assert count_params(m) == model_stats[builder.__name__]["params"]


@pytest.mark.parametrize("name", ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7"])
def test_macs_equal_official_at_224(name, model_stats):
    with torch.device("meta"):
        m = getattr(ef, name)()
    assert count_macs(m, 224) == model_stats[name]["flops_torch"] // 2


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (320, 320), (256, 192)])
def test_runs_at_other_sizes(timm_and_ours, size):
    _, ours = timm_and_ours
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = ours(x)
        feats = ours.forward_intermediates(x, intermediates_only=True)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert [f.shape[1] for f in feats] == [48, 96, 224, 448]
    assert feats[-1].shape[-2:] == (-(-size[0] // 32), -(-size[1] // 32))


def test_no_stale_bias_after_loading_new_weights_in_eval():
    """The official attention (and timm's) caches the gathered bias once in eval(); a
    checkpoint loaded afterwards is then served with the old bias. Ours must follow the
    new weights: after load_state_dict on an eval-mode model that has already run, its
    output equals a fresh model built with the new weights, at 224 and at another grid."""
    torch.manual_seed(5)
    m = randomize(efficientformer_l1(), seed=5)  # ends in eval()
    assert_order_one_layer_scales(m)
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(1, 3, *hw, generator=g) for hw in [(224, 224), (96, 64)]]
    with torch.no_grad():
        y_old = [m(x) for x in xs]
    # new checkpoint: only the attention-bias tables change (the part the official code caches)
    new_sd = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    for k in new_sd:
        if k.endswith("attention_biases"):
            new_sd[k] = 3 * torch.randn(new_sd[k].shape, generator=g)
    m.load_state_dict(new_sd)  # after eval() and after forwards
    fresh = efficientformer_l1()
    fresh.load_state_dict(new_sd)
    fresh.eval()
    with torch.no_grad():
        for x, y0 in zip(xs, y_old):
            y, y_fresh = m(x), fresh(x)
            assert torch.equal(y, y_fresh)
            assert (y - y0).abs().max() > 1e-4  # the new biases do change the logits
    # (timm 1.0.31 and the official code, in this same sequence, keep returning y_old at 224:
    # their bias cache is filled by the first eval forward; a cached variant of ours fails here)


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



@pytest.mark.parametrize("grid", [(7, 7), (1, 1), (1, 5), (2, 3), (4, 5), (10, 13)])
def test_attention_bias_resize_is_torch_bicubic(grid):
    """The resize is written from its bicubic taps (no branch on the grid, for torch.export);
    it must be F.interpolate(bicubic, align_corners=True): equal in float64, exact at 7x7."""
    h, w = grid
    table = torch.randn(8, 49, generator=torch.Generator().manual_seed(h * 100 + w), dtype=torch.float64)
    ref = torch.nn.functional.interpolate(table.reshape(1, 8, 7, 7), size=grid, mode="bicubic",
                                          align_corners=True).reshape(8, h * w)
    bias = attention_bias(table, grid)
    assert bias.shape == (8, h * w, h * w)
    assert (bias[:, 0, :] - ref).abs().max() <= 1e-12  # query (0, 0): the bias is t[|dy|, |dx|]
    if grid == (7, 7):
        assert torch.equal(bias[:, 0, :], table)
    # the bias depends only on |dy|, |dx|: query (y, x) to key (y', x') is t[|y - y'|, |x - x'|]
    y, x, y2, x2 = h - 1, 0, 0, w - 1
    assert bias[:, y * w + x, y2 * w + x2].equal(ref[:, abs(y - y2) * w + abs(x - x2)])


def test_timm_api_two_heads_no_decay_on_bias_tables_and_unpooled_tokens():
    m = efficientformer_l1(num_classes=10)
    assert m.get_classifier() == (m.head, m.head_dist)
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters() if n.endswith("attention_biases")} != set()
    m.reset_classifier(5)
    assert m.head.out_features == m.head_dist.out_features == 5
    m.reset_classifier(0, global_pool="")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tokens = m.eval()(x)
        assert tokens.shape == (1, 2 * 3, 448)  # normalised (B, N, C) tokens, as timm's
        assert torch.equal(tokens, m.forward_features(x))


def test_grad_checkpointing_checkpoints_each_stage(monkeypatch):
    import edgevision.models.base as base

    calls, real = [], base.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", counting)
    model = efficientformer_l1(num_classes=5)
    model.set_grad_checkpointing(True)
    model.train()(torch.randn(1, 3, 64, 64)).sum().backward()
    assert calls == list(model.stages)
