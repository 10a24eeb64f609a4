"""EdgeViT: parity with the official logits, official-checkpoint conversion, counts vs the
official code (EdgeViT-S at 13.1M), any input size >= 32 (padded), the timm-like surface."""


import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError, load_state_dict_strict
from edgevision.models.base import InputShapeError
from edgevision.models.edgevit import (
    GlobalSparseAttn,
    PatchEmbed,
    convert_official_checkpoint,
    edgevit_xxs,
)
from edgevision.profiling import count_macs, count_params
from edgevision.registry import model_info
from edgevision.testing import manifest_state_dict

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


def test_every_edgevit_parity_fixture_is_tested(reference_dir):
    """A fixture added to reference/parity must not go unchecked."""
    parity = reference_dir / "parity"
    assert {p.name for p in parity.glob("edgevit_*_io.safetensors")} == {"edgevit_xxs_io.safetensors"}


def test_create_model_loads_official_checkpoint_file(reference_dir, tmp_path):
    path = tmp_path / "edgevit_xxs.pth"
    torch.save({"model": load_file(str(reference_dir / "parity" / "edgevit_xxs.safetensors"))}, path)
    model = ev.create_model("edgevit_xxs", checkpoint=str(path)).eval()
    assert model.checkpoint_format == "official"
    io = load_file(str(reference_dir / "parity" / "edgevit_xxs_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= TOL


def test_other_variants_checkpoint_is_refused_with_the_key_diff(reference_dir, tmp_path):
    """Strictness: XS and S share widths, S has more blocks: XS weights into S list the missing keys."""
    path = tmp_path / "edgevit_xs.pth"
    torch.save(manifest_state_dict(reference_dir / "manifests" / "edgevit_xs.json"), path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys[^\n]*\n\s+stages\.1\.blocks\.1\."):
        ev.create_model("edgevit_s", checkpoint=str(path))


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


_MODELS = {}


def _model(name="edgevit_xxs"):
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = ev.create_model(name, num_classes=10).eval()
    return _MODELS[name]


def _small_model():
    return _model("edgevit_xxs")


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(32, 128), w=st.integers(32, 128))
@example(batch=2, h=100, w=70)  # padded in every patch embedding, batch 2
def test_any_input_size_gives_finite_logits(name, batch, h, w):
    """Property: every variant runs at any size >= 32, square or not, multiple of 32 or not, and
    any batch, with finite logits; each sample's logits do not depend on the rest of the batch."""
    model = _model(name)
    x = torch.randn(batch, 3, h, w)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (batch, 10) and torch.isfinite(y).all()
        assert (model(x[-1:]) - y[-1:]).abs().max() <= 1e-5


@settings(max_examples=10, deadline=None)
@given(small=st.integers(1, 31), other=st.integers(1, 64), swap=st.booleans())
def test_too_small_inputs_raise_input_shape_error(small, other, swap):
    """Property: a side below 32 raises InputShapeError (a ValueError) naming expected and got."""
    h, w = (other, small) if swap else (small, other)
    with pytest.raises(InputShapeError, match=rf"at least 32x32 pixels; got {h}x{w}$"):
        _small_model()(torch.randn(1, 3, h, w))


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(InputShapeError, match="at least 32x32"):
        _small_model()(torch.randn(1, 3, 64, 20))
    with pytest.raises(InputShapeError, match="4-D"):
        _small_model()(torch.randn(3, 64, 64))
    with pytest.raises(InputShapeError, match="in_chans=3"):
        _small_model()(torch.randn(1, 4, 64, 64))


def test_patch_embedding_zero_pads_bottom_right():
    """As documented: each patch embedding zero-pads bottom/right to its patch multiple."""
    torch.manual_seed(0)
    embed = PatchEmbed(3, 8, 4).eval()
    x = torch.randn(1, 3, 50, 45)
    with torch.no_grad():
        y = embed(x)
        assert y.shape == (1, 8, 13, 12)
        assert torch.equal(y, embed(F.pad(x, (0, 3, 0, 2))))
        x64 = torch.randn(1, 3, 64, 64)
        assert torch.equal(embed(x64), embed.norm(embed.proj(x64).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_no_pixel_is_dropped_at_sizes_that_are_not_multiples_of_32():
    """A 100x70 image keeps every pixel (maps are ceil(side / stride)): changing only the last
    row, or only the last column, changes the logits. Flooring strided convs would drop them."""
    model = _small_model()
    x = torch.randn(1, 3, 100, 70)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(f.shape[2:]) for f in feats] == [(25, 18), (13, 9), (7, 5), (4, 3)]
        y = model(x)
        for edit in ((slice(None), slice(None), -1, slice(None)), (slice(None), slice(None), slice(None), -1)):
            x2 = x.clone()
            x2[edit] += 1.0
            assert (model(x2) - y).abs().max() > 1e-6


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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_compile_trace_and_onnx_are_not_blocked(tmp_path):
    """No graph break (dynamo fullgraph), a faithful jit.trace, and an ONNX graph exported at
    64x64 that still matches eager at a size needing padding (100x70, batch 2)."""
    from edgevision.export.onnx import export_onnx, ort_session, run_session

    model = _small_model()
    x = torch.randn(2, 3, 100, 70)
    with torch.no_grad():
        ref = model(x)
        torch._dynamo.reset()
        assert (torch.compile(model, fullgraph=True, backend="eager")(x) - ref).abs().max() <= 1e-5
        assert (torch.jit.trace(model, x, check_trace=False)(x) - ref).abs().max() <= 1e-5
    path = export_onnx(model, tmp_path / "edgevit.onnx", (1, 3, 64, 64), dynamic_batch=True, dynamic_size=True)
    assert (run_session(ort_session(path, threads=1), x) - ref).abs().max() <= 1e-4


def test_grad_checkpointing_checkpoints_each_stage_and_groups_start_at_the_patch_embedding(monkeypatch):
    from timm.models import group_parameters

    import edgevision.models.base as base

    calls, real = [], base.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", counting)
    model = edgevit_xxs(num_classes=5)
    model.set_grad_checkpointing(True)
    model.train()(torch.randn(1, 3, 64, 64)).sum().backward()
    assert calls == list(model.stages)
    assert model.no_weight_decay() == set()  # no bias or position tables (pos_embed is a conv)
    groups = group_parameters(model, model.group_matcher())
    first = next(iter(groups.values()))
    assert sorted(first) == sorted(n for n, _ in model.named_parameters() if n.startswith("stages.0.downsample."))
    assert sorted(n for g in groups.values() for n in g) == sorted(n for n, _ in model.named_parameters())
