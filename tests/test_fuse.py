"""Deploy-time BatchNorm folding: same outputs, BN gone, unsafe patterns left alone."""

import copy

import pytest
import torch
import torch.nn as nn

import edgevision
from edgevision.export.fuse import find_bn_input_pairs, find_bn_pairs, fuse_bn
from edgevision.testing import randomize_norms as randomize_bn


def _bn_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_fusion(name, max_bn_left=None):
    model = randomize_bn(edgevision.create_model(name))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    before = _bn_count(model)
    fused = fuse_bn(model, x[:1], inplace=False)
    with torch.inference_mode():
        out = fused(x)
    assert _bn_count(fused) < before, f"{name}: no BatchNorm was folded"
    if max_bn_left is not None:
        assert _bn_count(fused) <= max_bn_left, f"{name}: {_bn_count(fused)} of {before} BatchNorms left"
    assert _bn_count(model) == before, "inplace=False must leave the original model untouched"
    scale = ref.abs().max().item()
    assert (ref[0] - ref[1]).abs().max() > 0.05 * scale, f"{name}: logits do not depend on the input"
    model64 = copy.deepcopy(model).double()
    with torch.inference_mode():
        ref64 = model64(x.double())
    # fp32: within 1e-5, or within the unfused model's own fp32 rounding where that is larger
    # (fp32 vs fp64 of the unfused model reaches 2.5e-5 at logit scale 4 on semnasnet_100).
    noise = (ref.double() - ref64).abs().max().item()
    diff = (out - ref).abs().max().item()
    assert diff <= max(1e-5, 4 * noise), f"{name}: fused differs by {diff:.2e} (fp32 rounding {noise:.2e})"
    # fp64: the fold itself is exact algebra, so only fp64 rounding remains.
    fused64 = fuse_bn(model64, x[:1].double(), inplace=False)
    assert _bn_count(fused64) == _bn_count(fused)
    with torch.inference_mode():
        torch.testing.assert_close(fused64(x.double()), ref64, atol=1e-10 * max(1.0, scale), rtol=0)


# One per family shape: post-norm CNNs, EfficientFormer, and the pre-norm families
# (EdgeViT's BN -> 1x1 conv blocks, MOAT's pre-norm MBConv, EMO) where BNs fold into the next conv.
# (The BN left in EdgeViT is the final norm, followed by global pooling, not by a layer.)
FAMILY_CASES = [("mobilenetv3_small_075", 0), ("efficientformer_l1", 0), ("edgevit_xxs", 1), ("emo_1m", 0),
                ("mobilenetv2_100", 0), ("semnasnet_100", 0), ("tiny_moat_0", 0)]


@pytest.mark.parametrize("name, max_bn_left", FAMILY_CASES[:4])
def test_fusion_keeps_outputs(name, max_bn_left):
    _check_fusion(name, max_bn_left)


@pytest.mark.slow
@pytest.mark.parametrize("name", edgevision.list_models())
def test_fusion_keeps_outputs_every_model(name):
    _check_fusion(name, dict(FAMILY_CASES).get(name))


def test_sequential_conv_bn_is_folded():
    x = torch.randn(2, 3, 8, 8)
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(8 * 6 * 6, 4), nn.BatchNorm1d(4)), like=x)
    ref = net(x)
    assert find_bn_pairs(net, x) == [("0", "1"), ("4", "5")]
    fuse_bn(net, x)
    assert _bn_count(net) == 0
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


class _ResidualSeesPreBN(nn.Module):
    """conv output feeds both the BN and a residual add: folding would change the add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _BNFirst(nn.Module):
    """BN registered after the conv but applied before it: registration order is not data flow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(self.bn(x))


class _BNAct(nn.BatchNorm2d):
    """A BN subclass that does more than BN (like timm's BatchNormAct2d)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


@pytest.mark.parametrize("make", [_ResidualSeesPreBN, _BNFirst,
                                  lambda: nn.Sequential(nn.Conv2d(4, 4, 1), _BNAct(4))])
def test_unsafe_patterns_are_not_folded(make):
    x = torch.randn(1, 4, 5, 5)
    net = randomize_bn(make(), like=x)
    ref = net(x)
    assert find_bn_pairs(net, x) == []
    fuse_bn(net, x)
    torch.testing.assert_close(net(x), ref)


class _PreNorm(nn.Module):
    """BN as pre-norm of an unpadded (optionally grouped/strided) conv, as in EdgeViT/MOAT blocks."""

    def __init__(self, groups=1, stride=1, kernel=1):
        super().__init__()
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 12, kernel, stride=stride, groups=groups, bias=groups == 1)

    def forward(self, x):
        return self.conv(self.bn(x))


@pytest.mark.parametrize("groups, stride, kernel", [(1, 1, 1), (4, 2, 3), (2, 1, 2)])
def test_pre_norm_bn_folds_into_the_next_unpadded_conv(groups, stride, kernel):
    x = torch.randn(2, 8, 9, 9)
    net = randomize_bn(_PreNorm(groups, stride, kernel), like=x)
    ref = net(x)
    assert find_bn_input_pairs(net, x) == [("bn", "conv")]
    fuse_bn(net, x)
    assert _bn_count(net) == 0
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)
    net64 = randomize_bn(_PreNorm(groups, stride, kernel), like=x).double()
    ref64 = net64(x.double())
    fuse_bn(net64, x.double())
    torch.testing.assert_close(net64(x.double()), ref64, atol=1e-12, rtol=0)


def test_pre_norm_bn1d_folds_into_linear_and_a_conv_can_take_both_sides():
    x = torch.randn(3, 3, 4, 4)
    net = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4),
                                     nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 5)), like=x)
    ref = net(x)
    fuse_bn(net, x)
    assert _bn_count(net) == 0
    torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


class _PaddedAfterBN(nn.Module):
    """BN then a padded conv: the padding zeros would be shifted by a folded BN, so no fold."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.bn(x))


class _BNOutputReused(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.bn(x)
        return self.conv(y) + y


@pytest.mark.parametrize("make", [_PaddedAfterBN, _BNOutputReused,
                                  lambda: nn.Sequential(nn.BatchNorm1d(4), nn.Linear(6, 3))])
def test_unsafe_pre_norm_patterns_are_not_folded(make):
    net = make()
    x = torch.randn(2, 4, 6) if isinstance(net, nn.Sequential) else torch.randn(2, 4, 6, 6)
    net = randomize_bn(net, like=x)
    ref = net(x)
    assert find_bn_input_pairs(net, x) == []
    fuse_bn(net, x)
    assert _bn_count(net) == 1
    torch.testing.assert_close(net(x), ref)
