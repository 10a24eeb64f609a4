"""EMO: parity with the official logits, official-checkpoint conversion, counts vs the
official code, any input size, strided vs contiguous windows, the timm-like surface."""

import sys
import types

# registry.py gives timm entries __module__ "edgevision.timm_models", which timm looks up in
# sys.modules; remove this line once registry.py points at a real module.
sys.modules.setdefault("edgevision.timm_models", types.ModuleType("edgevision.timm_models"))

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import edgevision as ev  # noqa: E402
from edgevision.checkpoints import state_dict_diff  # noqa: E402
from edgevision.layers.attention import window_partition, window_unpartition  # noqa: E402
from edgevision.models.base import InputShapeError  # noqa: E402
from edgevision.models.emo import convert_official_checkpoint, emo_1m  # noqa: E402
from edgevision.profiling import count_macs, count_params  # noqa: E402
from edgevision.registry import model_info  # noqa: E402

TOL = 2e-6
VARIANTS = ["emo_1m", "emo_2m", "emo_5m", "emo_6m"]
PARITY = ["emo_1m", "emo_2m"]  # fixtures shipped in reference/parity


def _load_official(reference_dir, name):
    return load_file(str(reference_dir / "parity" / f"{name}.safetensors"))


@pytest.mark.parametrize("name", PARITY)
def test_parity_with_official_logits(reference_dir, name):
    model = ev.create_model(name).eval()
    ev.checkpoints.load_state_dict_strict(model, convert_official_checkpoint(_load_official(reference_dir, name)))
    io = load_file(str(reference_dir / "parity" / f"{name}_io.safetensors"))
    sizes = [k[len("input"):] for k in io if k.startswith("input")]
    assert "" in sizes and "_256x192" in sizes  # both sizes exist for EMO
    with torch.no_grad():
        for s in sizes:
            diff = (model(io["input" + s]) - io["logits" + s]).abs().max().item()
            print(f"{name}{s or '_224'}: max|dlogits| = {diff:.2e}")
            assert diff <= TOL, f"{name}{s}: {diff:.2e}"


def test_create_model_loads_wrapped_official_pth(reference_dir, tmp_path):
    """An official-format .pth wrapped in {"state_dict": ...} loads through create_model."""
    path = tmp_path / "EMO_1M.pth"
    torch.save({"state_dict": _load_official(reference_dir, "emo_1m"), "epoch": 300}, path)
    model = ev.create_model("emo_1m", checkpoint=str(path)).eval()
    assert model.checkpoint_format == "official"
    io = load_file(str(reference_dir / "parity" / "emo_1m_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= TOL


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_keys_and_shapes_convert_exactly(reference_dir, name):
    """A manifest-shaped official state dict converts to exactly our keys and shapes."""
    manifest = json.loads((reference_dir / "manifests" / f"{name}.json").read_text())
    sd = {k: torch.zeros(shape, dtype=getattr(torch, dt)) for k, shape, dt in manifest}
    model = ev.create_model(name)
    converted = convert_official_checkpoint(sd)
    assert len(converted) == len(sd)  # a rename, nothing dropped or merged
    missing, unexpected, mismatched = state_dict_diff(model, converted)
    assert (missing, unexpected, mismatched) == ([], [], [])
    assert set(converted) == set(model.state_dict())  # num_batches_tracked included


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_match_official_code(model_stats, name):
    ref = model_stats[name]
    model = ev.create_model(name)
    assert count_params(model) == ref["params"]
    macs = count_macs(model, (1, 3, 224, 224))
    info = model_info(name)
    print(f"{name}: macs {macs / 1e6:.1f}M, flops_torch/2 {ref['flops_torch'] / 2e6:.1f}M, "
          f"fvcore {ref['macs_fvcore'] / 1e6:.1f}M, paper {info.published_macs / 1e6:.0f}M")
    assert abs(macs - ref["flops_torch"] / 2) <= 0.01 * ref["flops_torch"] / 2


def test_window_partition_strided_and_contiguous_roundtrip():
    x = torch.arange(14 * 21, dtype=torch.float32).reshape(1, 1, 14, 21)
    for mode in ("strided", "contiguous"):
        tokens = window_partition(x, 7, mode)
        assert tokens.shape == (6, 49, 1)
        assert torch.equal(window_unpartition(tokens, 7, 14, 21, mode), x)
    # strided: window (a_h, a_w) holds pixels (i * 2 + a_h, j * 3 + a_w); window 1 = (0, 1)
    tok = window_partition(x, 7, "strided")[1, :, 0].reshape(7, 7)
    assert torch.equal(tok, x[0, 0, 0::2, 1::3])
    tok = window_partition(x, 7, "contiguous")[1, :, 0].reshape(7, 7)
    assert torch.equal(tok, x[0, 0, 0:7, 7:14])


def test_contiguous_windows_differ_only_with_several_windows():
    torch.manual_seed(0)
    strided = emo_1m().eval()
    contiguous = emo_1m(window_mode="contiguous").eval()
    contiguous.load_state_dict(strided.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 160, 160)  # stage 3: 10x10 -> padded 14x14 -> 2x2 windows
        assert (strided(x) - contiguous(x)).abs().max() > 1e-4
        x = torch.randn(1, 3, 96, 96)  # every attention stage fits one window: identical
        assert torch.equal(strided(x), contiguous(x))
    with pytest.raises(ValueError, match="window_mode"):
        emo_1m(window_mode="shifted")


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(32, 160), w=st.integers(32, 160))
def test_any_input_size_gives_finite_logits(batch, h, w):
    model = _small_model()
    with torch.no_grad():
        y = model(torch.randn(batch, 3, h, w))
    assert y.shape == (batch, 10) and torch.isfinite(y).all()


_MODEL = {}


def _small_model():
    if "m" not in _MODEL:
        torch.manual_seed(0)
        _MODEL["m"] = emo_1m(num_classes=10).eval()
    return _MODEL["m"]


def test_invalid_inputs_raise_clear_errors():
    model = _small_model()
    with pytest.raises(InputShapeError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(InputShapeError, match="in_chans=3"):
        model(torch.randn(1, 1, 64, 64))


def test_features_only_intermediates_and_classifier():
    feats_model = ev.create_model("emo_1m", features_only=True).eval()
    assert feats_model.feature_info.reduction() == [4, 8, 16, 32]
    assert feats_model.feature_info.channels() == [32, 48, 80, 168]
    with torch.no_grad():
        feats = feats_model(torch.randn(1, 3, 96, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 24, 16), (48, 12, 8), (80, 6, 4), (168, 3, 2)]
    model = _small_model()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 168)
    m = emo_1m(num_classes=10)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 168)
    m.reset_classifier(7)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_drop_path_rate_and_training_step():
    model = ev.create_model("emo_1m", num_classes=5, drop_path_rate=0.1, drop_rate=0.1)
    rates = [blk.drop_path.drop_prob for stage in model.stages for blk in stage if hasattr(blk.drop_path, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.1)
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_converter_rejects_foreign_keys_and_registry_metadata():
    with pytest.raises(KeyError):
        convert_official_checkpoint(emo_1m().state_dict())
    info = model_info("emo_1m")
    assert info.weights_url.endswith("resources/EMO_1M/net.pth")
    assert "official" in info.converters and info.published_top1 == 71.5
