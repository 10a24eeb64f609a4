"""Channel rearrangement (SparseByteNN): the function is unchanged, blocks get denser."""

import copy

import numpy as np
import pytest
import torch

import edgevision as ev
from edgevision.sparse import prune
from edgevision.sparse.groups import (
    find_chains,
    permute_chain,
    rearrange_channels,
    stored_block_fraction,
)


def test_rearrangement_keeps_function_and_helps_blocks():
    torch.manual_seed(0)
    m = ev.create_model("mobilenetv2_100", num_classes=10)
    prune(m, 0.8)
    # non-trivial BN statistics, so a wrong permutation of them would show
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    m.eval()
    before = copy.deepcopy(m)
    x = torch.randn(2, 3, 64, 64)
    assert rearrange_channels(m) == len(find_chains(m)) > 10
    with torch.no_grad():
        torch.testing.assert_close(m(x), before(x), atol=1e-5, rtol=1e-5)
    frac = lambda model: np.mean([stored_block_fraction(p.weight.detach().flatten(1).numpy())  # noqa: E731
                                  for p, _, _ in find_chains(model)])
    assert frac(m) < frac(before)
    # the masks moved with the weights
    for p, _, c in find_chains(m):
        assert torch.equal(p.weight != 0, p.weight_mask) and torch.equal(c.weight != 0, c.weight_mask)


def test_bad_permutation():
    m = ev.create_model("mobilenetv2_100", num_classes=10)
    p, carriers, c = find_chains(m)[0]
    with pytest.raises(ValueError, match="not a permutation"):
        permute_chain(p, carriers, c, [0] * p.out_channels)
