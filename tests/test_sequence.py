"""1-D blocks, the sequence models, FusionActNet's fusion/routing and staged losses, bad input."""

import pytest
import torch
import torch.nn as nn

import edgevision as ev
from edgevision.layers.conv1d import BasicBlock1d, ConvBnAct1d, InvertedResidual1d
from edgevision.models.base import InputShapeError
from edgevision.tasks.sequence.fusion import FusionActNet, check_static_classes

SEQ_MODELS = ("resnet1d", "residual_mobilenet1d", "fusionactnet")


def test_registered_as_sequence_models():
    names = ev.list_models(task="sequence")
    assert set(SEQ_MODELS) <= set(names)
    assert not set(SEQ_MODELS) & set(ev.list_models())  # default listing: classifiers only
    for n in SEQ_MODELS:
        assert ev.model_info(n).task == "sequence"


@pytest.mark.parametrize("stride,in_chs,out_chs", [(1, 8, 8), (2, 8, 16), (1, 8, 16)])
def test_basic_block_shapes_and_shortcut(stride, in_chs, out_chs):
    b = BasicBlock1d(in_chs, out_chs, kernel_size=5, stride=stride)
    y = b(torch.randn(2, in_chs, 33))
    assert y.shape == (2, out_chs, (33 + stride - 1) // stride)
    assert isinstance(b.shortcut, nn.Identity) == (stride == 1 and in_chs == out_chs)
    assert (y >= 0).all()  # ReLU after the addition


def test_basic_block_is_residual():
    b = BasicBlock1d(4, 4).eval()
    for p in b.conv2.parameters():  # zero residual branch -> relu(x)
        nn.init.zeros_(p)
    x = torch.randn(1, 4, 10)
    assert torch.allclose(b(x), torch.relu(x))


def test_inverted_residual_depthwise_and_residual():
    b = InvertedResidual1d(8, 8, kernel_size=5, stride=1, expand_ratio=4).eval()
    assert b.use_residual
    dw = b.dw[0]
    assert dw.groups == dw.in_channels == 32 and dw.weight.shape == (32, 1, 5)
    for p in b.project.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 8, 16)
    assert torch.allclose(b(x), x)  # projection zeroed: identity through the shortcut
    down = InvertedResidual1d(8, 16, stride=2)
    assert not down.use_residual and down(x).shape == (2, 16, 8)


def test_even_kernel_refused():
    with pytest.raises(ValueError, match="odd"):
        ConvBnAct1d(3, 4, kernel_size=4)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_models_shapes_and_training_step(name):
    m = ev.create_model(name, num_classes=6, in_chans=9)
    x = torch.randn(4, 9, 128)
    y = m(x)
    assert y.shape == (4, 6)
    y.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    assert m(x[:1]).shape == (1, 6)


@pytest.mark.parametrize("name", ["resnet1d", "residual_mobilenet1d"])
def test_timm_api_on_1d_nets(name):
    m = ev.create_model(name, num_classes=4, in_chans=6, window=100).eval()
    x = torch.randn(2, 6, 100)
    feats = m.forward_features(x)
    assert feats.shape[:2] == (2, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    final, inter = m.forward_intermediates(x)
    assert len(inter) == len(m.feature_info) and inter[-1].dim() == 3
    m.reset_classifier(3)
    assert m(x).shape == (2, 3)


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_bad_input_one_line(name):
    m = ev.create_model(name, num_classes=6, in_chans=9)
    cases = [(torch.randn(2, 6, 128), "9 sensor channels"), (torch.randn(2, 9, 100), "windows of 128 steps"),
             (torch.randn(9, 128), "3-D batch"), (torch.zeros(2, 9, 128, dtype=torch.long), "float")]
    for x, msg in cases:
        with pytest.raises((InputShapeError, TypeError), match=msg) as e:
            m(x)
        assert "\n" not in str(e.value)
    m2 = ev.create_model(name, num_classes=6, in_chans=9, window=None)
    assert m2.eval()(torch.randn(1, 9, 64)).shape == (1, 6)  # window=None: any length


def test_bad_window_argument():
    with pytest.raises(ValueError, match="window"):
        ev.create_model("resnet1d", num_classes=3, in_chans=3, window=0)
    with pytest.raises(ValueError, match="drop_path_rate"):
        ev.create_model("resnet1d", num_classes=3, in_chans=3, drop_path_rate=0.1)


def test_static_classes_checked():
    assert check_static_classes(None, 6) == (3, 4, 5)  # UCI HAR default
    with pytest.raises(ValueError, match="static_classes"):
        check_static_classes(None, 4)
    with pytest.raises(ValueError, match="out of range"):
        check_static_classes([0, 7], 4)
    with pytest.raises(ValueError, match="one static and one dynamic"):
        check_static_classes([0, 1, 2, 3], 4)
    with pytest.raises(ValueError, match="repeated"):
        check_static_classes([1, 1], 4)


def _fusion(static=(0, 2), k=5, chans=3, window=32):
    torch.manual_seed(0)
    small = dict(expert_kwargs=dict(widths=(8, 16, 16)), guidance_kwargs=dict(head_width=32))  # fast
    return FusionActNet(in_chans=chans, num_classes=k, window=window, static_classes=static, **small).eval()


def test_fusion_is_the_weighted_ensemble():
    """y_pred = g * y_s + (1 - g) * y_d with the experts' softmaxes placed on their classes."""
    m = _fusion()
    x = torch.randn(4, 3, 32)
    s, d, z = m.forward_parts(x)
    assert s.shape == (4, 2) and d.shape == (4, 3) and z.shape == (4,)
    g = torch.sigmoid(z)[:, None]
    expect = torch.zeros(4, 5)
    expect[:, [0, 2]] = g * s.softmax(1)
    expect[:, [1, 3, 4]] = (1 - g) * d.softmax(1)
    got = m(x).exp()
    assert torch.allclose(got, expect, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(4), atol=1e-6)


def test_fusion_routing_follows_the_guidance():
    """A confident guidance module picks the static expert's top class or the dynamic one's."""
    m = _fusion()
    x = torch.randn(6, 3, 32)
    s, d, _ = m.forward_parts(x)
    for z, expect in ((torch.full((6,), 30.0), torch.tensor([0, 2])[s.argmax(1)]),
                      (torch.full((6,), -30.0), torch.tensor([1, 3, 4])[d.argmax(1)])):
        assert torch.equal(m.fuse(s, d, z).argmax(1), expect)


def test_staged_losses_are_decoupled():
    """Expert losses reach only their expert and only from their superclass's samples; the
    guidance loss reaches only the guidance module."""
    m = _fusion().train()
    x = torch.randn(8, 3, 32)
    y = torch.tensor([1, 3, 4, 1, 3, 4, 1, 3])  # dynamic samples only
    losses = m.losses(m(x, parts=True), y)
    assert losses["loss_static"].item() == 0.0
    m.zero_grad()
    losses["loss_guidance"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in m.static_net.parameters())
    assert all(p.grad is None or not p.grad.any() for p in m.dynamic_net.parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.guidance.parameters())
    m.zero_grad()
    losses["loss_dynamic"].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.guidance.parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.dynamic_net.parameters())
    with pytest.raises(ValueError, match="stage"):
        m.losses(m(x, parts=True), y, stage="both")


def test_guidance_loss_is_superclass_bce():
    """With disjoint supports, the fused NLL = BCE(g, static?) - log(expert prob of y)."""
    m = _fusion()
    x = torch.randn(5, 3, 32)
    y = torch.tensor([0, 1, 2, 3, 4])
    s, d, z = m.forward_parts(x)
    nll = m.losses((s, d, z), y, stage="guidance")["loss_guidance"]
    sup = m.is_static[y].float()
    bce = nn.functional.binary_cross_entropy_with_logits(z, sup, reduction="none")
    expert = torch.where(m.is_static[y], s.log_softmax(1).gather(1, m.local_index[y, None].clamp(max=1))[:, 0],
                         d.log_softmax(1).gather(1, m.local_index[y, None])[:, 0])
    assert torch.allclose(nll, (bce - expert).mean(), atol=1e-5)


def test_single_class_expert():
    m = FusionActNet(in_chans=6, num_classes=4, window=20, static_classes=[0])
    x = torch.randn(4, 6, 20)
    parts = m(x, parts=True)
    assert parts[0].shape == (4, 1)
    loss = m.losses(parts, torch.tensor([0, 0, 1, 2]))
    assert loss["loss_static"].item() == 0.0 and torch.isfinite(loss["loss"])
    with pytest.raises(ValueError, match="static_classes"):
        m.reset_classifier(3)
