"""tiny-MOAT: params vs published, MACs reported, input sizes, window attention."""

import sys
import types

# registry.py gives timm entries __module__ "edgevision.timm_models", which timm looks up in
# sys.modules; remove this line once registry.py points at a real module.
sys.modules.setdefault("edgevision.timm_models", types.ModuleType("edgevision.timm_models"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import edgevision as ev  # noqa: E402
from edgevision.models import moat  # noqa: E402
from edgevision.models.base import InputShapeError  # noqa: E402
from edgevision.profiling import count_macs, count_params  # noqa: E402

PUBLISHED = {  # params (with relative position embedding), GMACs at 256 px
    "tiny_moat_0": (3.4e6, 1.1e9),
    "tiny_moat_1": (5.1e6, 1.6e9),
    "tiny_moat_2": (9.8e6, 3.0e9),
    "tiny_moat_3": (19.5e6, 6.0e9),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_within_2pct_and_macs_reported(name):
    params, macs_pub = PUBLISHED[name]
    with torch.device("meta"):
        m = getattr(moat, name)(attn_mode="global")
    n = count_params(m)
    macs = count_macs(m, 256)
    print(f"{name}: params {n} ({n / params - 1:+.1%}), MACs@256 global {macs / 1e9:.2f}G "
          f"(published {macs_pub / 1e9:.1f}G)")
    assert abs(n / params - 1) <= 0.02
    assert abs(macs / macs_pub - 1) <= 0.10  # report-level check only


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
