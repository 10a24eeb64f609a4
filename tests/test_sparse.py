"""Pruning: the cubic schedule, magnitude masks and rules, masks through state dicts and resume,
the training hook, and bad input (issue 14). Kernels and runtime: tests/test_sparse_kernels.py."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from edgevision.sparse import (
    add_masks_from_state_dict,
    cubic_sparsity,
    prunable_layers,
    prune,
    sparsity_report,
)
from edgevision.sparse.masks import MASK, masked_modules, strip_masks
from edgevision.sparse.training import PruningHook, make_pruning_hook


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # first conv: kept dense
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: kept dense
        nn.Conv2d(32, 24, 1),
        nn.Conv2d(24, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),  # classifier: kept dense
    )


# --------------------------------------------------------------------------- schedule

def test_cubic_schedule_values():
    s_f, t0, t1 = 0.9, 2.0, 6.0
    assert cubic_sparsity(0.0, s_f, t0, t1) == 0.0
    assert cubic_sparsity(t0, s_f, t0, t1) == 0.0
    assert cubic_sparsity(t1, s_f, t0, t1) == pytest.approx(s_f)
    assert cubic_sparsity(100, s_f, t0, t1) == pytest.approx(s_f)
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    for t in (2.5, 3.0, 4.0, 5.5):
        want = s_f + (0.1 - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3
        assert cubic_sparsity(t, s_f, t0, t1, initial=0.1) == pytest.approx(want)
    vals = [cubic_sparsity(t / 10, s_f, t0, t1) for t in range(0, 80)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    # fast first: half the ramp reaches 7/8 of the final sparsity
    assert cubic_sparsity(4.0, s_f, t0, t1) == pytest.approx(s_f * 7 / 8)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        cubic_sparsity(1.0, bad, 0, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune(small_net(), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PruningHook(bad, 0, 1)


def test_bad_schedule_and_options():
    with pytest.raises(ValueError, match="precedes"):
        cubic_sparsity(1.0, 0.5, 3, 2)
    with pytest.raises(ValueError, match="precedes"):
        PruningHook(0.5, start=3, end=2)
    with pytest.raises(ValueError, match="scope"):
        prune(small_net(), 0.5, scope="net")
    with pytest.raises(ValueError, match="pattern"):
        prune(small_net(), 0.5, pattern="2by2")
    with pytest.raises(TypeError, match="number"):
        prune(small_net(), "0.5")


def test_no_prunable_layers():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="no prunable layers"):
        prune(m, 0.5)
    hook = PruningHook(0.5, 0, 1)
    with pytest.raises(ValueError, match="no prunable layers"):
        hook.on_model_built(None, m)


# --------------------------------------------------------------------------- pruning

def test_rules_keep_first_depthwise_classifier_dense():
    m = small_net()
    names = set(prunable_layers(m))
    assert names == {"2", "4", "5"}
    assert set(prunable_layers(m, keep_first=False, keep_depthwise=False, keep_classifier=False)) == \
        {"0", "2", "3", "4", "5", "8"}
    assert "4" not in prunable_layers(m, exclude=("4",))


@pytest.mark.parametrize("s", [0.3, 0.5, 0.9])
def test_layer_scope_each_layer_at_target(s):
    m = prune(small_net(), s)
    rep = sparsity_report(m)
    assert set(rep["layers"]) == {"2", "4", "5"}
    for name, r in rep["layers"].items():
        n = r["weights"]
        assert abs(r["zeros"] - s * n) <= 1, name
        # the smallest weights went: every kept |w| >= every pruned original |w|
    assert (m[0].weight != 0).all() and (m[3].weight != 0).all() and (m[8].weight != 0).all()


def test_magnitude_order():
    m = small_net()
    w0 = m[2].weight.detach().clone()
    prune(m, 0.6)
    kept = w0[m[2].weight_mask].abs()
    gone = w0[~m[2].weight_mask].abs()
    assert kept.min() >= gone.max()


def test_global_scope_one_threshold():
    m = small_net()
    orig = {n: mod.weight.detach().abs().clone() for n, mod in prunable_layers(m).items()}
    prune(m, 0.7, scope="global")
    rep = sparsity_report(m)
    assert rep["sparsity"] == pytest.approx(0.7, abs=1e-3)
    kept = torch.cat([orig[n][mod.weight_mask] for n, mod in masked_modules(m).items()])
    gone = torch.cat([orig[n][~mod.weight_mask] for n, mod in masked_modules(m).items()])
    assert kept.min() >= gone.max()
    per_layer = [r["sparsity"] for r in rep["layers"].values()]
    assert max(per_layer) - min(per_layer) > 0.01  # not a per-layer cut


@pytest.mark.parametrize("pattern,rows,cols", [("4x1", 4, 1), ("8x1", 8, 1), ("1x4", 1, 4)])
def test_block_patterns(pattern, rows, cols):
    m = prune(small_net(), 0.5, pattern=pattern)
    for name, mod in masked_modules(m).items():
        mk = mod.weight_mask.reshape(mod.out_channels, mod.in_channels, -1)
        assert (mk == mk[:, :, :1]).all(), "a kxk kernel is pruned whole"
        mk = mk[:, :, 0]
        o, i = mk.shape
        blocks = mk[: o - o % rows, : i - i % cols].reshape(o // rows, rows, i // cols, cols)
        assert (blocks.all(3).all(1) | ~blocks.any(3).any(1)).all(), name  # whole blocks only
    assert sparsity_report(m)["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_sparsity_only_grows():
    m = small_net()
    prune(m, 0.5)
    before = {n: mod.weight_mask.clone() for n, mod in masked_modules(m).items()}
    prune(m, 0.8)
    for n, mod in masked_modules(m).items():
        assert not (mod.weight_mask & ~before[n]).any()


# --------------------------------------------------------------------------- masks

def test_masks_in_state_dict_and_training_keeps_zeros():
    m = prune(small_net(), 0.8)
    sd = m.state_dict()
    assert {k for k in sd if k.endswith(MASK)} == {"2.weight_mask", "4.weight_mask", "5.weight_mask"}
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        loss = m(torch.randn(2, 3, 8, 8)).square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m(torch.randn(1, 3, 8, 8))  # the pre-hook re-applies masks before use
    for mod in masked_modules(m).values():
        assert (mod.weight[~mod.weight_mask] == 0).all()
        assert (mod.weight[mod.weight_mask] != 0).any()


def test_pruned_weights_get_no_gradient_so_clipping_sees_only_kept_ones():
    """A pruned weight's gradient is zero: it must not enter clip_grad_norm_'s global norm
    (mid-training pruning with clipping stalled at chance when it did), and a deep copy of the
    model (e.g. an EMA model) masks its gradients too; strip_masks removes the hook."""
    m = prune(small_net(), 0.8)
    x = torch.randn(2, 3, 8, 8)
    m(x).square().sum().backward()
    layers = masked_modules(m)
    for mod in layers.values():
        assert (mod.weight.grad[~mod.weight_mask] == 0).all()
        assert (mod.weight.grad[mod.weight_mask] != 0).any()
    # the same network without masked gradients: the pruned positions do carry gradient
    plain = strip_masks(copy.deepcopy(m))
    plain(x).square().sum().backward()
    assert any((plain.get_submodule(n).weight.grad[~mod.weight_mask] != 0).any() for n, mod in layers.items())
    twin = copy.deepcopy(m)
    twin.zero_grad()
    twin(x).square().sum().backward()
    for n, mod in masked_modules(twin).items():
        assert (mod.weight.grad[~mod.weight_mask] == 0).all(), n


def test_mask_mismatch_is_one_clear_line():
    m = prune(small_net(), 0.5)
    sd = m.state_dict()
    sd["4.weight_mask"] = torch.ones(5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"do not match this model") as e:
        prune(small_net(), 0.5).load_state_dict(sd)
    assert "\n" not in str(e.value)
    sd = m.state_dict()
    del sd["4.weight_mask"]
    with pytest.raises(ValueError, match="no pruning mask"):
        prune(small_net(), 0.5).load_state_dict(sd)
    bad = {**m.state_dict(), "9.weight_mask": torch.ones(1, dtype=torch.bool)}
    with pytest.raises(ValueError, match="do not match this model"):
        add_masks_from_state_dict(small_net(), bad)


def test_pruned_checkpoint_loads_into_fresh_model():
    m = prune(small_net(), 0.7).eval()
    sd = copy.deepcopy(m.state_dict())
    fresh = small_net().eval()
    assert add_masks_from_state_dict(fresh, sd) == ["2", "4", "5"]
    fresh.load_state_dict(sd)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(fresh(x), m(x))
    plain = strip_masks(copy.deepcopy(m))
    assert not any(k.endswith(MASK) for k in plain.state_dict())
    assert not plain[4]._forward_pre_hooks
    torch.testing.assert_close(plain(x), m(x))


# --------------------------------------------------------------------------- training hook

class Cfg:
    def __init__(self, **kw):
        self.sparsity, self.prune_start, self.prune_end, self.epochs = 0.0, 0.0, None, 4
        self.prune_scope, self.prune_pattern = "layer", "unstructured"
        self.__dict__.update(kw)


def _run(hook, model, epochs, steps, start_epoch=0, stop=None):
    for e in range(start_epoch, epochs):
        for s in range(steps):
            if stop is not None and (e, s) == stop:
                return
            hook.on_step_end(None, e, s, steps)


def test_hook_follows_schedule():
    cfg = Cfg(sparsity=0.8, prune_start=1.0, prune_end=3.0, epochs=4)
    hook = make_pruning_hook(cfg)
    m = small_net()
    hook.on_model_built(None, m)
    assert sparsity_report(m)["sparsity"] == 0.0 and len(masked_modules(m)) == 3
    steps = 10
    for e in range(4):
        for s in range(steps):
            hook.on_step_end(None, e, s, steps)
            t = e + (s + 1) / steps
            want = cubic_sparsity(t, 0.8, 1.0, 3.0)
            assert want - 0.01 <= sparsity_report(m)["sparsity"] <= want + 1e-3, (e, s)
    assert sparsity_report(m)["sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_hook_default_end_and_one_shot():
    h = make_pruning_hook(Cfg(sparsity=0.5, prune_start=1.0, epochs=5))
    assert (h.start, h.end) == (1.0, 4.0)
    m = small_net()
    h = make_pruning_hook(Cfg(sparsity=0.5, prune_start=0.0, prune_end=0.0))
    h.on_model_built(None, m)
    assert sparsity_report(m)["sparsity"] == pytest.approx(0.5, abs=1e-2)


def test_hook_resume_continues_schedule():
    cfg = Cfg(sparsity=0.9, prune_start=0.0, prune_end=2.0, epochs=3)
    steps = 8
    # uninterrupted run
    ref_hook, ref = make_pruning_hook(cfg), small_net()
    ref_hook.on_model_built(None, ref)
    _run(ref_hook, ref, 3, steps)
    # interrupted at epoch 1 step 3, saved, rebuilt, restored, continued
    h1, m1 = make_pruning_hook(cfg), small_net()
    h1.on_model_built(None, m1)
    _run(h1, m1, 3, steps, stop=(1, 3))
    ckpt = {"model": copy.deepcopy(m1.state_dict()), "hooks": [h1.state_dict()]}
    mid = sparsity_report(m1)["sparsity"]
    assert 0.3 < mid < 0.9
    h2, m2 = make_pruning_hook(cfg), small_net()
    h2.on_model_built(None, m2)  # engine: hooks see the model before the checkpoint loads
    m2.load_state_dict(ckpt["model"])
    h2.load_state_dict(ckpt["hooks"][0])
    assert sparsity_report(m2)["sparsity"] == pytest.approx(mid)
    assert h2.current == h1.current
    for s in range(3, steps):
        h2.on_step_end(None, 1, s, steps)
    _run(h2, m2, 3, steps, start_epoch=2)
    for n, mod in masked_modules(ref).items():
        assert torch.equal(mod.weight_mask, m2.get_submodule(n).weight_mask), n
    assert math.isclose(sparsity_report(m2)["sparsity"], 0.9, abs_tol=1e-3)


def test_hook_resume_with_other_pattern_refused():
    h = make_pruning_hook(Cfg(sparsity=0.5, prune_end=1.0))
    with pytest.raises(ValueError, match="pattern"):
        h.load_state_dict({"current": 0.2, "pattern": "4x1", "scope": "layer"})


def test_checkpoint_masks_baked_for_a_plain_model(tmp_path):
    """load_checkpoint multiplies a pruned checkpoint's masks into the weights of a model without
    masks; a mask that does not fit its weight stays and the strict load names it."""
    from safetensors.torch import save_file

    from edgevision.checkpoints import CheckpointMismatchError, bake_pruning_masks, load_checkpoint

    m = prune(small_net(), 0.7).eval()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["4.weight"] = torch.randn_like(sd["4.weight"])  # non-zeros where the mask is off: baked away
    baked, n = bake_pruning_masks(sd)
    assert n == 3 and not any(k.endswith(MASK) for k in baked)
    assert (baked["4.weight"][~sd["4.weight_mask"]] == 0).all()
    path = tmp_path / "p.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    plain = small_net().eval()
    load_checkpoint(plain, path)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(plain(x), m(x))
    bad = {k: v.contiguous() for k, v in m.state_dict().items()}
    bad["4.weight_mask"] = torch.ones(3, dtype=torch.bool)
    save_file(bad, str(path))
    with pytest.raises(CheckpointMismatchError, match="4.weight_mask"):
        load_checkpoint(small_net(), path)
