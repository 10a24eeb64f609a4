"""tiny-MOAT: params vs published, MACs reported, input sizes, window attention."""

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
        feats = model.forward_intermediates(torch.randn(1, 3, *size))
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
        hooks = [mod.register_forward_hook(lambda mod, args, out: shapes.append(args[0].shape[:3]))
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
