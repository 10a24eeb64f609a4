"""NASNet-A Mobile: exact pretrainedmodels-port state-dict layout, params, MACs, any size >= 32."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import edgevision as ev
from edgevision.models.base import InputShapeError
from edgevision.models.nasnet import nasnet_a_mobile
from edgevision.profiling import count_macs, count_params


@pytest.fixture(scope="module")
def manifest(reference_dir):
    return json.loads((reference_dir / "manifests" / "nasnet_a_mobile.json").read_text())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nasnet_a_mobile().eval()


def test_state_dict_matches_port_manifest(model, manifest):
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {k: tuple(shape) for k, shape, _ in manifest}
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in model.state_dict().items()}
    assert {k: d for k, _, d in manifest if dtypes[k] != d} == {}


@pytest.mark.slow
def test_equal_to_the_pretrainedmodels_port_on_the_same_weights():
    """The port itself (pretrainedmodels 0.7.4, a dev dependency), randomized norms, 224 px:
    mathematically identical (fp64 <= 1e-10); fp32 differs only by summation order."""
    pretrainedmodels = pytest.importorskip("pretrainedmodels")
    from edgevision.testing import randomize_norms

    ref = randomize_norms(pretrainedmodels.nasnetamobile(num_classes=1000, pretrained=None), side=224)
    ours = ev.create_model("nasnet_a_mobile").eval()
    ours.load_state_dict(ref.state_dict())  # same keys and shapes: no converter
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        b32 = ref(x)
        assert (b32[0] - b32[1]).abs().max() > 1e-2  # logits depend on the input
        assert (ours(x) - b32).abs().max() <= 1e-5
        d64 = (ours.double()(x.double()) - ref.double()(x.double())).abs().max().item()
    assert d64 <= 1e-10, d64


def test_params_exact(model, model_stats):
    assert count_params(model) == model_stats["nasnet_a_mobile"]["params"] == 5_289_978


def test_macs_equal_port_at_224(model_stats):
    with torch.device("meta"):  # shapes only: counts without computing
        macs = count_macs(nasnet_a_mobile(), 224)
    ref = model_stats["nasnet_a_mobile"]["flops_torch"] // 2
    print(f"nasnet_a_mobile MACs at 224: {macs} (port {ref}, paper 564M)")
    assert macs == ref


def test_port_checkpoint_loads_through_create_model(manifest, tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape, _ in manifest:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    path = tmp_path / "port.safetensors"
    save_file(sd, str(path))
    m = ev.create_model("nasnet_a_mobile", checkpoint=str(path)).eval()
    assert torch.equal(m.state_dict()["last_linear.weight"], sd["last_linear.weight"])
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 64, 64))).all()


@pytest.mark.parametrize("size", [(32, 32), (33, 33), (45, 45), (61, 100)])
def test_any_size_from_32(model, size):
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_invalid_inputs_raise_clearly(model):
    with pytest.raises(InputShapeError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(InputShapeError, match="in_chans=3"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(InputShapeError, match="4-D"):
        model(torch.randn(3, 64, 64))


def test_features_only():
    f = ev.create_model("nasnet_a_mobile", features_only=True)
    assert f.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert f.feature_info.channels() == [32, 44, 264, 528, 1056]
    outs = f(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 44, 264, 528, 1056]
    assert [o.shape[-1] for o in outs] == [31, 16, 8, 4, 2]


@settings(max_examples=4, deadline=None)
@given(h=st.integers(32, 96), w=st.integers(32, 96))
def test_property_any_size(model, h, w):
    with torch.no_grad():
        y = model(torch.randn(1, 3, h, w))
        feats = model.forward_intermediates(torch.randn(1, 3, h, w), intermediates_only=True)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert [f.shape[1] for f in feats] == [32, 44, 264, 528, 1056]
    assert all(torch.isfinite(f).all() for f in feats)


def test_grad_checkpointing_checkpoints_every_cell_with_the_same_gradients(monkeypatch):
    import copy

    import edgevision.models.base as base

    calls, real = [], base.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(base, "checkpoint", counting)
    torch.manual_seed(0)
    plain = nasnet_a_mobile(num_classes=5, drop_rate=0.0)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 64, 64)
    for m in (plain, ckpt):
        m.train()(x).square().sum().backward()
    cells = [ckpt.cell_stem_0, ckpt.cell_stem_1] + [getattr(ckpt, n) for n in ckpt.cell_names]
    assert [c.func for c in calls] == cells
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_classifier_and_parameter_groups_follow_the_port_names():
    from timm.models import group_parameters

    m = nasnet_a_mobile()
    assert m.get_classifier() is m.last_linear
    m.reset_classifier(7)
    assert m.last_linear.out_features == 7 and m.num_classes == 7
    m.reset_classifier(0, global_pool="")
    with torch.no_grad():
        y = m.eval()(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 1056, 2, 2) and (y >= 0).all()  # the ReLU'd final map
    # groups in execution order: the reduction cells sit between cell_3 and cell_6, cell_9 and cell_12
    m = nasnet_a_mobile()
    order = list(group_parameters(m, m.group_matcher()).values())
    first_group = {n.split(".")[0]: i for i, g in enumerate(order) for n in g}
    assert first_group["conv0"] == first_group["cell_stem_1"] == 0
    assert first_group["cell_3"] < first_group["reduction_cell_0"] < first_group["cell_6"]
    assert first_group["cell_9"] < first_group["reduction_cell_1"] < first_group["cell_12"]
    coarse = group_parameters(m, m.group_matcher(coarse=True))
    assert len(coarse) == 5  # stem, three stacks, classifier
    assert m.no_weight_decay() == set()
