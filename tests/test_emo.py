"""EMO: parity with the official logits, official-checkpoint conversion, counts vs the
official code, any input size, strided vs contiguous windows, the timm-like surface."""


import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import edgevision as ev
from edgevision.checkpoints import CheckpointMismatchError
from edgevision.layers.attention import window_partition, window_unpartition
from edgevision.models.base import InputShapeError
from edgevision.models.emo import convert_official_checkpoint, emo_1m
from edgevision.profiling import count_macs, count_params
from edgevision.registry import model_info
from edgevision.testing import manifest_state_dict

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


def test_every_emo_parity_fixture_is_tested(reference_dir):
    """A fixture added to reference/parity must not go unchecked."""
    fixtures = {p.name[: -len("_io.safetensors")] for p in (reference_dir / "parity").glob("emo_*_io.safetensors")}
    assert fixtures == set(PARITY)


@pytest.mark.parametrize("wrapper", ["plain", "official_trainer", "state_dict"])
def test_create_model_loads_official_pth(reference_dir, tmp_path, wrapper):
    """An official-format .pth loads through create_model: a bare state dict, in the official
    trainer's {"net", "net_E", ...} container, or in the common {"state_dict": ...} one."""
    sd = _load_official(reference_dir, "emo_1m")
    obj = {"plain": sd, "official_trainer": {"net": sd, "net_E": None, "iter": 0},
           "state_dict": {"state_dict": sd, "epoch": 300}}[wrapper]
    path = tmp_path / "EMO_1M.pth"
    torch.save(obj, path)
    model = ev.create_model("emo_1m", checkpoint=str(path)).eval()
    assert model.checkpoint_format == "official"
    io = load_file(str(reference_dir / "parity" / "emo_1m_io.safetensors"))
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max().item() <= TOL


def test_mismatched_official_checkpoint_fails_with_the_key_diff(reference_dir, tmp_path):
    """Strictness: a missing key, or another variant's checkpoint, is refused with the diff."""
    sd = manifest_state_dict(reference_dir / "manifests" / "emo_5m.json")
    full = tmp_path / "EMO_5M.pth"
    torch.save(sd, full)
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        ev.create_model("emo_6m", checkpoint=str(full))
    del sd[next(k for k in sd if k.startswith("stage3.1.qk."))]
    partial = tmp_path / "EMO_5M_partial.pth"
    torch.save(sd, partial)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys[^\n]*\n\s+stages\.2\.1\.qk\.conv\."):
        ev.create_model("emo_5m", checkpoint=str(partial))


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
        x = torch.randn(1, 3, 128, 128)  # stage 3: 8x8 -> padded 14x14 -> 2x2 windows
        assert (strided(x) - contiguous(x)).abs().max() > 1e-4
        x = torch.randn(1, 3, 96, 64)  # every attention stage fits one window: identical
        assert torch.equal(strided(x), contiguous(x))
    with pytest.raises(ValueError, match="window_mode"):
        emo_1m(window_mode="shifted")


def test_window_mode_reaches_every_attention_block_and_sets_the_grouping():
    """The option goes through create_model to every attention block, and there it decides
    which pixels attend to each other: a change at pixel (0, 0) of a 14x14 map moves the
    attention output only inside its own window (2x2 windows of 7x7)."""
    for mode in ("strided", "contiguous"):
        model = ev.create_model("emo_1m", window_mode=mode).eval()
        attn_blocks = [b for stage in model.stages for b in stage if b.attn]
        assert len(attn_blocks) == 7 + 2 and all(b.window_mode == mode for b in attn_blocks)
        blk = attn_blocks[0]
        x = torch.randn(1, blk.norm.normalized_shape[0], 14, 14)
        x2 = x.clone()
        x2[:, :, 0, 0] += 1.0
        with torch.no_grad():
            moved = (blk.window_attention(x2) - blk.window_attention(x)).abs().amax(1)[0] > 0
        expected = torch.zeros(14, 14, dtype=torch.bool)
        if mode == "strided":
            expected[0::2, 0::2] = True  # window (0, 0) = rows/cols 0, 2, 4, ... (dilated grid)
        else:
            expected[:7, :7] = True  # window (0, 0) = the top-left 7x7 block
        assert torch.equal(moved, expected), mode


_MODELS = {}


def _model(name="emo_1m"):
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = ev.create_model(name, num_classes=10).eval()
    return _MODELS[name]


def _small_model():
    return _model("emo_1m")


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(32, 128), w=st.integers(32, 128))
@example(batch=2, h=128, w=100)  # stage 3: 8x7 -> padded 14x7 -> 2x1 windows, batch 2
def test_any_input_size_gives_finite_logits(name, batch, h, w):
    """Property: every variant runs at any size >= 32 (not only multiples of 7 or 32) and any
    batch, with finite logits, and each sample's logits do not depend on the rest of the batch
    (a window partition that mixed samples would break this)."""
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
    model = _small_model()
    with pytest.raises(InputShapeError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(InputShapeError, match="in_chans=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError, match="4-D"):
        model(torch.randn(3, 64, 64))
    assert issubclass(InputShapeError, ValueError)


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


def test_converter_rejects_foreign_keys():
    with pytest.raises(KeyError):
        convert_official_checkpoint(emo_1m().state_dict())


@pytest.mark.parametrize("name, top1", [("emo_1m", 71.5), ("emo_2m", 75.1), ("emo_5m", 78.4), ("emo_6m", 79.0)])
def test_registry_metadata_points_at_the_official_release(name, top1):
    """The official README's ImageNet table links each checkpoint as resources/EMO_<n>M/net.pth in
    zhangzjn/EMO; the URL pins the reference snapshot commit and downloads the file (/raw/)."""
    info = model_info(name)
    variant = name.split("_")[1].upper()  # "1M"
    assert info.weights_url == (
        f"https://github.com/zhangzjn/EMO/raw/27d9b40fea9c2a12a2fe7acc51032184852a99d8/resources/EMO_{variant}/net.pth")
    assert "official" in info.converters and info.published_top1 == top1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("window_mode", ["strided", "contiguous"])
def test_compile_trace_and_onnx_are_not_blocked(tmp_path, window_mode):
    """No graph break (dynamo fullgraph), a faithful jit.trace, and an ONNX graph exported at
    64x64 (one window per attention map) that still matches eager at 128x100, batch 2, where
    stage 3 is padded from 8x7 to 14x7 and split into 2x1 windows."""
    from edgevision.export.onnx import export_onnx, ort_session, run_session

    torch.manual_seed(0)
    model = emo_1m(num_classes=10, window_mode=window_mode).eval()
    x = torch.randn(2, 3, 128, 100)
    with torch.no_grad():
        ref = model(x)
        torch._dynamo.reset()
        assert (torch.compile(model, fullgraph=True, backend="eager")(x) - ref).abs().max() <= 1e-5
        assert (torch.jit.trace(model, x, check_trace=False)(x) - ref).abs().max() <= 1e-5
    path = export_onnx(model, tmp_path / "emo.onnx", (1, 3, 64, 64), dynamic_batch=True, dynamic_size=True)
    assert (run_session(ort_session(path, threads=1), x) - ref).abs().max() <= 1e-4


def test_grad_checkpointing_checkpoints_each_stage_in_training_only(monkeypatch):
    import edgevision.models.base as base

    calls, real = [], base.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", counting)
    model = emo_1m(num_classes=5)
    model.set_grad_checkpointing(True)
    model.train()(torch.randn(1, 3, 64, 64)).sum().backward()
    assert calls == list(model.stages)
    calls.clear()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert calls == []
