"""Shared mobile-CNN layers: rounding, conv-BN-act, squeeze-excite, DS / inverted residual blocks."""

import pytest
import torch
import torch.nn as nn

from edgevision.layers import (
    ConvNormAct,
    DepthwiseSeparable,
    DropPath,
    InvertedResidual,
    SqueezeExcite,
    get_act,
    make_divisible,
)


@pytest.mark.parametrize("value,expected", [(32 * 0.35, 16), (16 * 0.35, 8), (24 * 3.67, 88),
                                            (80 * 2.3, 184), (1280 * 1.4, 1792), (10, 16), (4, 8)])
def test_make_divisible(value, expected):
    assert make_divisible(value, 8) == expected


def test_make_divisible_never_drops_more_than_10_percent():
    for v in range(8, 400):
        assert make_divisible(v, 8) >= 0.9 * v


def test_get_act_unknown_name_is_clear():
    with pytest.raises(ValueError, match="unknown activation 'swishh'"):
        get_act("swishh")
    assert isinstance(get_act(None), nn.Identity)


def test_conv_norm_act_shapes_and_names():
    m = ConvNormAct(8, 16, 3, stride=2, act="hswish")
    assert set(m.state_dict()) >= {"conv.weight", "bn.weight", "bn.running_var"}
    assert m(torch.randn(1, 8, 15, 15)).shape == (1, 16, 8, 8)
    assert m.conv.bias is None and m.bn.eps == 1e-5
    assert ConvNormAct(4, 4, bn_eps=1e-3).bn.eps == 1e-3


def test_squeeze_excite_gates_per_channel():
    se = SqueezeExcite(8, 2, act="relu", gate="sigmoid")
    nn.init.zeros_(se.expand.weight)
    with torch.no_grad():
        se.expand.bias.copy_(torch.arange(8.0) - 4)
    x = torch.randn(2, 8, 5, 5)
    expected = x * torch.sigmoid(torch.arange(8.0) - 4).view(1, 8, 1, 1)
    torch.testing.assert_close(se(x), expected)


def test_depthwise_separable_residual_rules():
    assert DepthwiseSeparable(16, 16, stride=1).has_skip
    assert not DepthwiseSeparable(16, 16, stride=2).has_skip
    assert not DepthwiseSeparable(16, 24).has_skip
    assert not DepthwiseSeparable(16, 16, skip=False, pw_act=True).has_skip  # MobileNetV1
    m = DepthwiseSeparable(16, 24, 5, stride=2, se_chs=8, act="relu6", pw_act=True)
    assert m.dw.conv.groups == 16 and m.dw.conv.kernel_size == (5, 5)
    assert isinstance(m.pw.act, nn.ReLU6) and isinstance(m.se, SqueezeExcite)
    assert m(torch.randn(1, 16, 16, 16)).shape == (1, 24, 8, 8)


def test_inverted_residual_structure_and_residual():
    m = InvertedResidual(24, 24, 144, 3, 1, act="relu6").eval()
    assert m.has_skip and m.expand.conv.out_channels == 144 and m.dw.conv.groups == 144
    assert isinstance(m.project.act, nn.Identity)  # linear bottleneck
    x = torch.randn(1, 24, 8, 8)
    nn.init.zeros_(m.project.bn.weight)  # branch output 0 -> block is the identity
    nn.init.zeros_(m.project.bn.bias)
    torch.testing.assert_close(m(x), x)
    assert not InvertedResidual(24, 32, 144, stride=1).has_skip


def test_drop_path_is_identity_in_eval_and_random_in_train():
    m = InvertedResidual(8, 8, 32, drop_path=0.5)
    assert isinstance(m.drop_path, DropPath)
    x = torch.randn(64, 8, 4, 4)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    y = m.drop_path(torch.ones(64, 1, 1, 1))
    assert set(y.flatten().tolist()) <= {0.0, 2.0} and 0 < (y == 0).sum() < 64
