"""tiny-MOAT: params vs published, MACs reported, input sizes, window attention, the model
contract (levels, pooling, weight decay, breakpoints), fx tracing and dynamic-size export."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edgevision as ev
from edgevision.models import moat
from edgevision.models.base import InputShapeError
from edgevision.profiling import count_macs, count_params

PUBLISHED = {  # params with / without relative position embedding, GMACs at 256 px (paper)
    "tiny_moat_0": (3.4e6, 3.3e6, 1.1e9),
    "tiny_moat_1": (5.1e6, 5.1e6, 1.6e9),
    "tiny_moat_2": (9.8e6, 9.7e6, 3.0e9),
    "tiny_moat_3": (19.5e6, 19.5e6, 6.0e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_within_2pct_and_macs_reported(name):
    params, params_no_pe, macs_pub = PUBLISHED[name]
    with torch.device("meta"):
        m = getattr(moat, name)(attn_mode="global")
        w = getattr(moat, name)()  # the default: global attention up to 256 px
        w14 = getattr(moat, name)(window_size=(14, 7))  # deeplab2's downstream windows
    n = count_params(m)
    n_pe = sum(p.numel() for k, p in m.named_parameters() if k.endswith("attn.rel_pos"))
    macs = count_macs(m, 256)
    macs_default = count_macs(w, 256)
    macs_window14 = count_macs(w14, 256)
    print(f"{name}: params {n} ({n / params - 1:+.2%} vs {params / 1e6:.1f}M with rel-pos); "
          f"without the {n_pe} rel-pos params {n - n_pe} ({(n - n_pe) / params_no_pe - 1:+.2%} vs "
          f"{params_no_pe / 1e6:.1f}M); MACs@256 global {macs / 1e9:.3f}G "
          f"({macs / macs_pub - 1:+.1%} vs published {macs_pub / 1e9:.1f}G), "
          f"14/7 windows (padded) {macs_window14 / 1e9:.3f}G")
    assert n_pe > 0  # the built variant carries the relative position embedding
    assert abs(n / params - 1) <= 0.02
    assert abs((n - n_pe) / params_no_pe - 1) <= 0.02
    assert abs(macs / macs_pub - 1) <= 0.10  # report-level check only
    assert macs_default == macs  # the registered model at 256 px is the published one
    assert macs_window14 > 1.3 * macs  # padded 2x2 windows cost more and are another network
    assert count_params(w) == count_params(w14) == n


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return moat.tiny_moat_0().eval()


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 160)])
def test_sizes_multiple_of_32(model, size):
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert [f.shape[-1] for f in feats] == [size[1] // r for r in (2, 4, 8, 16, 32)]


@pytest.mark.parametrize("size", [(100, 96), (64, 48), (16, 32)])
def test_other_sizes_raise_clearly(model, size):
    with pytest.raises(InputShapeError):
        model(torch.randn(1, 3, *size))


def test_window_mode_pads_and_masks():
    """A 16x16 map with 14x14 windows: the unpadded top-left window equals attention on it alone."""
    torch.manual_seed(0)
    blk = moat.MOATBlock(64, 64, 1, pos_size=14, attn_mode="window").eval()
    x = torch.randn(1, 16, 16, 64)
    with torch.no_grad():
        out = blk._attend(x)
        alone = blk.attn(x[:, :14, :14])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out[:, :14, :14] - alone).abs().max() < 1e-5


def test_window_and_global_agree_up_to_224_maps():
    torch.manual_seed(0)
    w = moat.tiny_moat_0(attn_mode="window").eval()
    g = moat.tiny_moat_0(attn_mode="global").eval()
    g.load_state_dict(w.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(w(x), g(x))


def test_features_only():
    f = ev.create_model("tiny_moat_0", features_only=True)
    assert f.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [o.shape[1] for o in f(torch.randn(1, 3, 64, 64))] == [32, 32, 64, 128, 256]


@settings(max_examples=5, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5), off=st.integers(1, 31))
def test_property_sizes(model, h, w, off):
    with torch.no_grad():
        y = model(torch.randn(1, 3, 32 * h, 32 * w))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    with pytest.raises(InputShapeError, match="multiples of 32"):
        model(torch.randn(1, 3, 32 * h + off, 32 * w))


def _block(pos_size=14, attn_mode="window", dim=64):
    torch.manual_seed(0)
    blk = moat.MOATBlock(dim, dim, 1, pos_size=pos_size, attn_mode=attn_mode).eval()
    with torch.no_grad():  # a bias that matters
        blk.attn.rel_pos.normal_()
    return blk


def test_window_equals_global_where_the_map_fits_the_window():
    """14x14 at stride 16 (a 224 px input): window mode is global attention, bias as stored."""
    w, g = _block(attn_mode="window"), _block(attn_mode="global")
    x = torch.randn(1, 14, 14, 64)
    with torch.no_grad():
        assert torch.equal(w._attend(x), g._attend(x))


def test_window_attention_on_larger_maps_is_local():
    """28x28 map, 14x14 windows (divisible: deeplab2's own window partition, no padding):
    each window equals attention over that window alone, windows do not see each other,
    and the result differs from global attention."""
    blk = _block()
    x = torch.randn(1, 28, 28, 64)
    with torch.no_grad():
        out = blk._attend(x)
        for i in (0, 14):
            for j in (0, 14):
                alone = blk.attn(x[:, i:i + 14, j:j + 14])
                assert (out[:, i:i + 14, j:j + 14] - alone).abs().max() < 1e-5
        x2 = x.clone()
        x2[:, 3, 3] += 1.0  # a token in the top-left window
        out2 = blk._attend(x2)
        assert torch.equal(out2[:, 14:], out[:, 14:]) and torch.equal(out2[:, :, 14:], out[:, :, 14:])
        assert not torch.equal(out2[:, :14, :14], out[:, :14, :14])
        glob = _block(attn_mode="global")._attend(x)
        assert (glob - out).abs().max() > 1e-3


def _attention_calls(name, side, **kw):
    """Shapes (windows, h, w) each attention layer sees, on a meta-device model (no compute)."""
    with torch.device("meta"):
        m = getattr(moat, name)(**kw)
        shapes = []
        # attention input: (B, windows, h, w, C)
        hooks = [mod.register_forward_hook(lambda mod, args, out: shapes.append(args[0].shape[1:4]))
                 for mod in m.modules() if isinstance(mod, moat.RelPosAttention)]
        m(torch.empty(1, 3, side, side))
    for h in hooks:
        h.remove()
    return [tuple(s) for s in shapes]


def test_global_up_to_256_windows_beyond():
    at224 = _attention_calls("tiny_moat_0", 224)
    assert at224 == [(1, 14, 14)] * 7 + [(1, 7, 7)] * 2  # global: one window per image
    at256 = _attention_calls("tiny_moat_0", 256)
    assert at256 == [(1, 16, 16)] * 7 + [(1, 8, 8)] * 2  # published setting: whole map
    at512 = _attention_calls("tiny_moat_0", 512)
    assert at512 == [(4, 16, 16)] * 7 + [(4, 8, 8)] * 2  # 32x32 / 16x16 maps -> 2x2 windows
    at448 = _attention_calls("tiny_moat_0", 448)
    assert at448 == [(4, 16, 16)] * 7 + [(4, 8, 8)] * 2  # 28x28 / 14x14: padded 2x2 windows
    d448 = _attention_calls("tiny_moat_0", 448, window_size=(14, 7))
    assert d448 == [(4, 14, 14)] * 7 + [(4, 7, 7)] * 2  # deeplab2's windows tile 448 exactly
    g512 = _attention_calls("tiny_moat_0", 512, attn_mode="global")
    assert g512 == [(1, 32, 32)] * 7 + [(1, 16, 16)] * 2
    # per side: a side that fits is not padded (14 rows fit 16, 32 columns make 2 windows)
    with torch.device("meta"):
        m = moat.tiny_moat_0()
        shapes = []
        hooks = [mod.register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape[1:4])))
                 for mod in m.modules() if isinstance(mod, moat.RelPosAttention)]
        m(torch.empty(1, 3, 224, 512))
    for h in hooks:
        h.remove()
    assert shapes == [(2, 14, 16)] * 7 + [(2, 7, 8)] * 2


# ----------------------------------------------------------------------------- the model contract
def test_breakpoints_follow_the_windows():
    with torch.device("meta"):
        assert moat.tiny_moat_0().size_breakpoints == (256,)  # global up to 256 px
        assert moat.tiny_moat_0(window_size=(14, 7)).size_breakpoints == (224,)
        assert moat.tiny_moat_0(window_size=(4, 4)).size_breakpoints == (64, 128)
        assert moat.tiny_moat_0(attn_mode="global").size_breakpoints == ()


@pytest.mark.parametrize("side,windows", [(256, 1), (288, 4)])
def test_breakpoint_is_where_attention_turns_windowed(side, windows):
    calls = _attention_calls("tiny_moat_0", side)
    assert {c[0] for c in calls} == {windows}


@pytest.mark.parametrize("kwargs,match", [
    ({"pool_size": 4}, "pool_size"), ({"pool_size": True}, "pool_size"),
    ({"window_size": (16,)}, "window_size"), ({"window_size": (16, 0)}, "window_size"),
    ({"window_size": 16}, "window_size"), ({"attn_mode": "local"}, "attn_mode"),
])
def test_bad_options_raise_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moat.tiny_moat_0(**kwargs)


def test_no_weight_decay_covers_the_position_tables(model):
    names = model.no_weight_decay()
    tables = {n for n, _ in model.named_parameters() if n.endswith("attn.rel_pos")}
    assert len(tables) == 9 and names == tables


def test_levels_pooling_and_unpooled_head(model):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps, last = model._forward_levels(x, 2)
        assert [m.shape[1:] for m in maps] == [(32, 32, 48), (32, 16, 24), (64, 8, 12)]
        assert last is maps[-1]
        final, inter = model.forward_intermediates(x, indices=[1, 4])
        assert [f.shape[1] for f in inter] == [32, 256] and torch.equal(final, inter[-1])
        feats = model.forward_features(x)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (1, 256)
    unpooled = ev.create_model("tiny_moat_0", num_classes=0, global_pool="").eval()
    unpooled.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    with torch.no_grad():
        fmap = unpooled(x)
    assert fmap.shape == (1, 256, 2, 3)
    # the head's channel norm per position; its mean-then-norm is the pooled model's pre-logits
    with torch.no_grad():
        ref = model.norm(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(fmap, ref, atol=1e-6)


def _small_window_model():
    """tiny-MOAT-0 with 4 / 2 windows: global attention up to 64 px, windows beyond."""
    torch.manual_seed(0)
    m = moat.tiny_moat_0(window_size=(4, 2)).eval()
    with torch.no_grad():  # position tables and BN statistics that matter
        for mod in m.modules():
            if isinstance(mod, moat.RelPosAttention):
                mod.rel_pos.normal_()
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def test_fx_symbolic_trace_matches_eager():
    m = _small_window_model()
    gm = torch.fx.symbolic_trace(m)
    called = {n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"
              and hasattr(n.target, "__name__")}
    assert {"window_partition", "window_merge", "rel_pos_attention", "tf_same_pad"} <= called
    with torch.no_grad():
        for side in (64, 96):  # global / windowed: the size logic runs at call time
            x = torch.randn(1, 3, side, side)
            assert torch.equal(gm(x), m(x))


def test_create_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    m = _small_window_model()
    fe = create_feature_extractor(m, return_nodes={"stem": "s2", "stages.1": "s8", "stages.3": "s32"})
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        out = fe(x)
        ref = m.forward_intermediates(x, indices=[0, 2, 4], intermediates_only=True)
    assert list(out) == ["s2", "s8", "s32"]
    for got, want in zip(out.values(), ref):
        assert torch.equal(got, want)


def test_block_mask_equals_window_partition():
    """The branch-free path used under symbolic sizes (the whole map, attention confined to the
    tiles by a -inf block mask) gives the windowed attention, padded windows included."""
    blk = _block(pos_size=4, dim=64)
    for hw in ((6, 6), (8, 8), (4, 10)):
        x = torch.randn(2, *hw, 64)
        with torch.no_grad():
            windowed = blk._attend(x)
            masked = blk.attn(x[:, None], None, 4)[:, 0]
        assert (windowed - masked).abs().max() < 1e-5


def test_dynamic_export_of_a_block_crosses_the_switch():
    """Exported with a map that fits the window (global), the program is right on larger maps
    (windows, with and without padding) and smaller ones: the switch is not frozen."""
    blk = _block(pos_size=4, dim=64)
    h, w = torch.export.Dim("h", min=1, max=32), torch.export.Dim("w", min=1, max=32)
    ep = torch.export.export(blk, (torch.randn(1, 64, 4, 4),), dynamic_shapes={"x": {2: 2 * h, 3: 2 * w}})
    with torch.no_grad():
        for hw in ((2, 2), (6, 6), (8, 12), (12, 4)):
            x = torch.randn(1, 64, *hw)
            assert (ep.module()(x) - blk(x)).abs().max() < 1e-4, hw


@pytest.mark.slow
def test_dynamic_export_of_the_model_on_both_sides_of_the_breakpoint():
    """Whole model, windows 4 / 2 (breakpoint 64 px): exported at 64 (global attention), the
    program matches eager at unseen sizes above the breakpoint (96: padded windows, 128 x 160)."""
    m = _small_window_model()
    assert m.size_breakpoints == (64,)
    h, w = torch.export.Dim("h", min=2, max=16), torch.export.Dim("w", min=2, max=16)
    ep = torch.export.export(m, (torch.randn(1, 3, 64, 64),), dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}})
    with torch.no_grad():
        for hw in ((96, 96), (128, 160)):
            x = torch.randn(1, 3, *hw)
            assert (ep.module()(x) - m(x)).abs().max() < 1e-4, hw
