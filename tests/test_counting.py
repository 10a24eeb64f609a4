"""The MAC counter against hand counts: conv, linear and a bare attention layer."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgevision.profiling import count_macs, count_params, module_summary


class Attn(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):  # x: (B, N, C) passed in as a 4-D image below
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_matmuls_are_counted_like_the_hand_count():
    b, c, h, w, heads = 1, 32, 8, 8, 4
    n = h * w
    hand = n * c * 3 * c  # qkv projection
    hand += 2 * heads * n * n * (c // heads)  # q@k^T and attn@v
    assert count_macs(Attn(c, heads), (b, c, h, w)) == hand


def test_conv_and_linear_hand_counts():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 32, 32)) == 16 * 16 * 8 * 3 * 9
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(dw, (1, 8, 10, 10)) == 10 * 10 * 8 * 9


def test_module_summary_rows_add_up():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    rows = module_summary(model, (1, 3, 16, 16))
    assert [r["output_shape"] for r in rows] == [[1, 8, 16, 16], [1, 8, 16, 16], [1, 4, 16, 16]]
    assert sum(r["params"] for r in rows) == count_params(model)
    assert sum(r["macs"] for r in rows) == count_macs(model, (1, 3, 16, 16))


class CrossAttn(nn.Module):
    """Queries from every pixel, keys/values from a pooled grid, additive bias mask
    (the shapes of EdgeViT's subsampled attention and MOAT's relative-position bias)."""

    def __init__(self, dim=16, heads=2, pool=2):
        super().__init__()
        self.heads, self.pool = heads, pool
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(x.flatten(2).transpose(1, 2)).reshape(b, h * w, self.heads, d).transpose(1, 2)
        s = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)
        k, v = self.kv(s).reshape(b, s.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(1, self.heads, h * w, s.shape[1])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def test_attention_with_fewer_keys_and_a_bias_mask():
    b, c, h, w, heads, pool = 2, 16, 8, 8, 2, 2
    n, m, d = h * w, (h // pool) * (w // pool), c // heads
    hand = b * n * c * c  # q projection
    hand += b * m * c * 2 * c  # k, v projections on the pooled tokens
    hand += 2 * b * heads * n * m * d  # q@k^T and attn@v (mask add, softmax: not MACs)
    assert count_macs(CrossAttn(c, heads, pool), (b, c, h, w)) == hand
