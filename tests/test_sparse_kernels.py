"""Sparse kernels equal dense matmul / conv (hypothesis), and the sparse runtime equals the
masked dense model on five families (issue 14)."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("numba")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import edgevision as ev  # noqa: E402
from edgevision.sparse import compile as sparse_compile  # noqa: E402
from edgevision.sparse import kernels as K  # noqa: E402
from edgevision.sparse import prune  # noqa: E402
from edgevision.sparse.runtime import SparseConv1x1, SparseRuntimeWarning  # noqa: E402

ACTS = {K.ACT_NONE: lambda a: a, K.ACT_RELU: lambda a: np.maximum(a, 0), K.ACT_RELU6: lambda a: np.clip(a, 0, 6)}


def _sparse(rng, o, i, s, rows=1, cols=1):
    w = rng.standard_normal((o, i)).astype(np.float32)
    keep = rng.random((o // rows, i // cols)) >= s
    return w * np.repeat(np.repeat(keep, rows, 0), cols, 1)


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 70), i=st.integers(1, 70), p=st.integers(1, 90), s=st.floats(0.0, 0.99),
       act=st.sampled_from([0, 1, 2]), seed=st.integers(0, 2**31 - 1))
def test_csr_equals_dense(o, i, p, s, act, seed):
    rng = np.random.default_rng(seed)
    w = _sparse(rng, o, i, s)
    x = rng.standard_normal((i, p)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    y = np.full((o, p), np.nan, np.float32)
    K.csr_spmm(*K.to_csr(w), b, x, y, act)
    np.testing.assert_allclose(y, ACTS[act](w @ x + b[:, None]), rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(pattern=st.sampled_from([(4, 1), (8, 1), (1, 4)]), ob=st.integers(1, 12), ib=st.integers(1, 24),
       p=st.integers(1, 70), s=st.floats(0.0, 0.99), act=st.sampled_from([0, 1, 2]),
       seed=st.integers(0, 2**31 - 1))
def test_block_csr_equals_dense(pattern, ob, ib, p, s, act, seed):
    rows, cols = pattern
    rng = np.random.default_rng(seed)
    w = _sparse(rng, ob * rows, ib * cols, s, rows, cols)
    x = rng.standard_normal((ib * cols, p)).astype(np.float32)
    b = rng.standard_normal(ob * rows).astype(np.float32)
    y = np.full((ob * rows, p), np.nan, np.float32)
    K.BLOCK_KERNELS[pattern](*K.to_bcsr(w, rows, cols), b, x, y, act)
    np.testing.assert_allclose(y, ACTS[act](w @ x + b[:, None]), rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 12), h=st.integers(1, 20), w=st.integers(1, 20), k=st.sampled_from([1, 3, 5, 7]),
       stride=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1), act=st.sampled_from([0, 2]),
       same=st.booleans(), threads=st.sampled_from([1, 2]))
def test_depthwise_equals_torch(c, h, w, k, stride, seed, act, same, threads):
    """Every path of kernels.depthwise (flattened planes at stride 1 and 2, per-tap passes,
    the zero-padded fallback) equals torch's conv, borders included."""
    pad = k // 2 if same else max(0, k // 2 - 1)
    if (h + 2 * pad - k) < 0 or (w + 2 * pad - k) < 0:
        return
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, c, k, stride, pad, groups=c)
    x = torch.randn(1, c, h, w)
    with torch.no_grad():
        ref = conv(x)[0].numpy()
    y = np.full(ref.shape, np.nan, np.float32)
    K.depthwise(x[0].numpy(), conv.weight.detach()[:, 0].numpy().copy(), conv.bias.detach().numpy().copy(),
                stride, (pad, pad), y, act, threads)
    np.testing.assert_allclose(y, ACTS[act](ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h,w,k,stride,path", [(14, 14, 3, 1, "3x3/s1"), (2, 9, 3, 1, "taps/s1"),
                                               (14, 14, 5, 1, "taps/s1"), (14, 14, 3, 2, "3x3/s2"),
                                               (2, 6, 3, 2, "taps/s2"), (14, 14, 5, 2, "taps/s2"),
                                               (7, 7, 3, 2, "padded")])
def test_depthwise_path_choice(h, w, k, stride, path):
    """The hypothesis test above covers all of these paths only if they are chosen as meant."""
    assert K.depthwise_path(h, w, k, stride, k // 2) == path
    assert K.depthwise_path(h, w, 3, stride, 0) == "padded"


def test_bcsr_needs_whole_blocks():
    with pytest.raises(ValueError, match="does not tile"):
        K.to_bcsr(np.ones((6, 4), np.float32), 4, 1)


FAMILIES = ["mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_lite0", "mnasnet_100"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("fuse_flatten", [True, False])
def test_runtime_equals_masked_dense(name, fuse_flatten):
    torch.manual_seed(0)
    m = ev.create_model(name, num_classes=10).eval()
    prune(m, 0.8)
    x = torch.randn(2, 3, 64, 64)
    # every candidate replaced (all kernels run); with fuse_flatten every fusable block fused too
    sm = sparse_compile(m, x[:1], autotune=False, fuse=fuse_flatten, flatten=fuse_flatten)
    assert sm.sparse_info["sparse"] and sm.sparse_info["depthwise"]
    assert bool(sm.sparse_info["fused_blocks"]) == fuse_flatten
    assert sm.sparse_info["graph"] == ("fx" if fuse_flatten else "module")
    assert any(isinstance(mod, SparseConv1x1) for mod in sm.modules())
    with torch.no_grad():
        ref = m(x)
    out = sm(x)
    assert (out - ref).abs().max().item() <= 1e-4
    for mod in sm.modules():  # the other 1x1 backend: torch's sparse CSR matmul
        if isinstance(mod, SparseConv1x1):
            mod.backend = "torch"
    assert (sm(x) - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind,stride,skip", [("ir", 1, True), ("ir", 1, False), ("ir", 2, False),
                                              ("ds", 1, True), ("ds", 2, False)])
def test_fused_block_equals_block(kind, stride, skip):
    """FusedBlock (one channel-streaming kernel) equals the BN-folded timm block: inverted
    residual and depthwise-separable, strides 1 and 2, with and without the skip (the
    depthwise-separable one with an activation after its 1x1, then the skip); sizes the kernel
    does not take run the fallback."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    from edgevision.export.fuse import fuse_bn
    from edgevision.sparse.runtime import FusedBlock, _fusable

    torch.manual_seed(0)
    cin, cout = 8, (8 if skip else 12)
    if kind == "ir":
        block = InvertedResidual(cin, cout, stride=stride, exp_ratio=4.0, act_layer=nn.ReLU6, noskip=not skip)
    else:
        block = DepthwiseSeparableConv(cin, cout, stride=stride, act_layer=nn.ReLU, pw_act=True, noskip=not skip)
    with torch.no_grad():
        for p in block.parameters():
            p.mul_((torch.rand_like(p) > 0.6).float()) if p.dim() == 4 and p.shape[1] > 1 else None
        for mod in block.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    block.eval()
    fuse_bn(block, torch.randn(1, cin, 12, 12))
    assert block.has_skip == skip
    fb = _fusable(block)
    assert isinstance(fb, FusedBlock)
    fb.set_fallback(block)
    for budget in (FusedBlock.L2_BUDGET, 1):  # one band per image; bands of two output rows
        fb.L2_BUDGET = budget
        for h, w in ((12, 12), (16, 10), (14, 6), (7, 9), (2, 2)):  # the last two: fallback at stride 2 / tiny maps
            x = torch.randn(2, cin, h, w)
            with torch.no_grad():
                ref = block(x)
            assert fb.fits(h, w) == ((h % 2 == 0 and w % 2 == 0 and h >= 4) if stride == 2 else h >= 3)
            torch.testing.assert_close(fb(x), ref, rtol=1e-5, atol=1e-5)


def test_runtime_block_pattern_and_autotune():
    torch.manual_seed(0)
    m = ev.create_model("mobilenetv2_100", num_classes=10).eval()
    prune(m, 0.7, pattern="4x1")
    x = torch.randn(1, 3, 64, 64)
    sm = sparse_compile(m, x)  # autotuned: some layers may stay dense, outputs still equal
    assert any(isinstance(mod, SparseConv1x1) and mod.pattern in ((4, 1), (8, 1)) for mod in sm.modules()) \
        or sm.sparse_info["kept_dense"]
    with torch.no_grad():
        assert (sm(x) - m(x)).abs().max().item() <= 1e-4
    with pytest.raises(RuntimeError, match="inference only"):
        sm.train()


def test_runtime_on_unpruned_model_warns_and_runs_dense():
    m = ev.create_model("mobilenetv2_100", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sm = sparse_compile(m, x)
    msgs = [str(r.message) for r in rec if issubclass(r.category, SparseRuntimeWarning)]
    assert len(msgs) == 1 and "was it pruned" in msgs[0] and "\n" not in msgs[0]
    assert not sm.sparse_info["sparse"]
    with torch.no_grad():
        assert (sm(x) - m(x)).abs().max().item() <= 1e-4


def test_compiled_model_copies_and_pickles():
    """deepcopy and torch.save/load of a compiled model (torch-CSR layers included) give the same
    outputs; copies run the layers with module calls (the flat graph is not pickled)."""
    import copy
    import io

    torch.manual_seed(0)
    m = ev.create_model("mobilenetv2_100", num_classes=10).eval()
    prune(m, 0.9)
    x = torch.randn(1, 3, 64, 64)
    sm = sparse_compile(m, x, autotune=False)
    for mod in sm.modules():
        if isinstance(mod, SparseConv1x1):
            mod.backend = "torch"
    buf = io.BytesIO()
    torch.save(sm, buf)
    buf.seek(0)
    with torch.no_grad():
        ref = m(x)
        for other in (copy.deepcopy(sm), torch.load(buf, weights_only=False)):
            assert (other(x) - ref).abs().max().item() <= 1e-4


def test_pruned_checkpoint_benches_on_the_sparse_runtime(tmp_path):
    """End to end as a user: a pruned checkpoint (masks beside the weights, as `edgevision train
    --sparsity` writes) loads into a plain model with the masks baked in, and `edgevision bench
    --runtime sparse` runs it with outputs equal to the dense runtime's."""
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = prune(ev.create_model("mobilenetv2_050").eval(), 0.9)
    path = tmp_path / "pruned.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    plain = ev.create_model("mobilenetv2_050", checkpoint=str(path)).eval()
    assert not any(k.endswith("weight_mask") for k in plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), m(x))
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "edgevision", "bench", "mobilenetv2_050", "--checkpoint", str(path),
                        "--runtime", "eager,sparse", "--size", "64", "--threads", "1", "--warmup", "1", "--iters", "3",
                        "--rounds", "1", "--output", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "was it pruned" not in r.stderr
    rows = json.loads((out / "bench.json").read_text())
    rows = rows["results"]
    sparse = [row for row in rows if row.get("runtime") == "sparse"]
    assert sparse and sparse[0]["error"] is None and sparse[0]["max_abs_diff"] <= 1e-4
