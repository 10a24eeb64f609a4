"""EdgeViT: parity with the official logits, official-checkpoint conversion, counts vs the
official code (EdgeViT-S at 13.1M), any input size >= 32, the timm-like surface."""

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
from edgevision.checkpoints import load_state_dict_strict, state_dict_diff  # noqa: E402
from edgevision.models.base import InputShapeError  # noqa: E402
from edgevision.models.edgevit import GlobalSparseAttn, convert_official_checkpoint, edgevit_xxs  # noqa: E402
from edgevision.profiling import count_macs, count_params  # noqa: E402
from edgevision.registry import model_info  # noqa: E402

TOL = 2e-6
VARIANTS = ["edgevit_xxs", "edgevit_xs", "edgevit_s"]


def test_parity_with_official_logits(reference_dir):
    model = ev.create_model("edgevit_xxs").eval()
    sd = load_file(str(reference_dir / "parity" / "edgevit_xxs.safetensors"))
    load_state_dict_strict(model, convert_official_checkpoint(sd))
    io = load_file(str(reference_dir / "parity" / "edgevit_xxs_io.safetensors"))
    sizes = [k[len("input"):] for k in io if k.startswith("input")]
    assert sizes == [""]  # the official EdgeViT only runs at its build size
    with torch.no_grad():
        diff = (model(io["input"]) - io["logits"]).abs().max().item()
    print(f"edgevit_xxs_224: max|dlogits| = {diff:.2e}")
    assert diff <= TOL


def test_create_model_loads_official_checkpoint_file(reference_dir, tmp_path):
    path = tmp_path / "edgevit_xxs.pth"
    torch.save({"model": load_file(str(reference_dir / "parity" / "edgevit_xxs.safetensors"))}, path)
    model = ev.create_model("edgevit_xxs", checkpoint=str(path))
    assert model.checkpoint_format == "official"


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_keys_and_shapes_convert_exactly(reference_dir, name):
    manifest = json.loads((reference_dir / "manifests" / f"{name}.json").read_text())
    sd = {k: torch.zeros(shape, dtype=getattr(torch, dt)) for k, shape, dt in manifest}
    model = ev.create_model(name)
    converted = convert_official_checkpoint(sd)
    assert len(converted) == len(sd)
    assert state_dict_diff(model, converted) == ([], [], [])
    assert set(converted) == set(model.state_dict())


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_match_official_code(model_stats, name):
    ref = model_stats[name]
    model = ev.create_model(name)
    assert count_params(model) == ref["params"]  # edgevit_s: 13,108,168 (paper: 11.1M)
    macs = count_macs(model, (1, 3, 224, 224))
    info = model_info(name)
    print(f"{name}: macs {macs / 1e6:.1f}M, flops_torch/2 {ref['flops_torch'] / 2e6:.1f}M, "
          f"fvcore {ref['macs_fvcore'] / 1e6:.1f}M, paper {info.published_macs / 1e6:.0f}M")
    assert abs(macs - ref["flops_torch"] / 2) <= 0.01 * ref["flops_torch"] / 2


def test_edgevit_s_documents_param_mismatch():
    info = model_info("edgevit_s")
    assert info.published_params == 11.1e6 and "13.1M" in info.notes


def test_strided_sampler_is_the_official_avgpool_k1():
    x = torch.randn(2, 8, 12, 16)
    for r in (2, 4):
        assert torch.equal(x[:, :, ::r, ::r], torch.nn.AvgPool2d(1, r)(x))


def test_sparse_attention_crops_back_on_non_divisible_maps():
    attn = GlobalSparseAttn(8, 2, 4).eval()
    for h, w in [(7, 9), (8, 8), (1, 5)]:
        y = attn(torch.randn(1, h * w, 8), h, w)
        assert y.shape == (1, h * w, 8) and torch.isfinite(y).all()


_MODEL = {}


def _small_model():
    if "m" not in _MODEL:
        torch.manual_seed(0)
        _MODEL["m"] = edgevit_xxs(num_classes=10).eval()
    return _MODEL["m"]


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(32, 160), w=st.integers(32, 160))
def test_any_input_size_gives_finite_logits(batch, h, w):
    with torch.no_grad():
        y = _small_model()(torch.randn(batch, 3, h, w))
    assert y.shape == (batch, 10) and torch.isfinite(y).all()


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(InputShapeError, match="at least 32x32"):
        _small_model()(torch.randn(1, 3, 64, 20))
    with pytest.raises(InputShapeError, match="4-D"):
        _small_model()(torch.randn(3, 64, 64))


def test_features_only_intermediates_and_classifier():
    feats_model = ev.create_model("edgevit_xxs", features_only=True).eval()
    assert feats_model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = feats_model(torch.randn(1, 3, 96, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(36, 24, 16), (72, 12, 8), (144, 6, 4), (288, 3, 2)]
    m = edgevit_xxs(num_classes=10)
    m.reset_classifier(0)
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 288)


def test_drop_path_rate_and_training_step():
    model = ev.create_model("edgevit_xxs", num_classes=5, drop_path_rate=0.1)
    rates = [m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.1)
    model.train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_converter_rejects_foreign_keys():
    with pytest.raises(KeyError):
        convert_official_checkpoint(edgevit_xxs().state_dict())
