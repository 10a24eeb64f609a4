"""Deploy-time BatchNorm folding: same outputs, BN gone, unsafe patterns left alone."""

import pytest
import torch
import torch.nn as nn

import edgevision
from edgevision.export.fuse import find_bn_pairs, fuse_bn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so folding is tested on non-identity BNs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for p in model.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def _bn_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv3_small_075", "semnasnet_100",
                                  "efficientformer_l1", "tiny_moat_0"])
def test_fusion_keeps_outputs(name):
    if name not in edgevision.list_models():
        pytest.skip(f"{name} is not registered yet")
    model = randomize_bn(edgevision.create_model(name))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    before = _bn_count(model)
    fused = fuse_bn(model, x[:1], inplace=False)
    with torch.inference_mode():
        out = fused(x)
    assert _bn_count(fused) < before, f"{name}: no BatchNorm was folded"
    assert _bn_count(model) == before, "inplace=False must leave the original model untouched"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_sequential_conv_bn_is_folded():
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(8 * 6 * 6, 4), nn.BatchNorm1d(4)))
    x = torch.randn(2, 3, 8, 8)
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
    net = randomize_bn(make())
    x = torch.randn(1, 4, 5, 5)
    ref = net(x)
    assert find_bn_pairs(net, x) == []
    fuse_bn(net, x)
    torch.testing.assert_close(net(x), ref)
