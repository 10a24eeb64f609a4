"""Ground truth and scoring: how much of the architecture the attack recovered.

Ground truth of a timm-built compact CNN (every registry CNN, every net-config network) is
read from ``model.blocks``: block class -> type, ``conv_dw``/``conv`` kernel and stride,
expansion = expand conv out/in channels, output width. Hybrids (EMO, EdgeViT, EfficientFormer,
MOAT) get a coarser truth: the number of convolutions and of attention modules.

Scores (per model): block-type accuracy (type and SE flag must both match, after aligning
the recovered and true block sequences), kernel-size accuracy, stride accuracy, expansion
accuracy (inverted residuals; correct within 10% of the true ratio) and mean relative width
error, each over the true blocks (a missed or extra block counts as wrong).
"""

from __future__ import annotations

from collections import Counter

import torch.nn as nn

_TYPE = {"DepthwiseSeparableConv": "ds", "InvertedResidual": "ir", "ConvBnAct": "cn", "EdgeResidual": "er",
         "UniversalInvertedResidual": "uir", "CondConvResidual": "ir"}


def true_blocks(model: nn.Module) -> list[dict] | None:
    """The true block list of a timm MobileNetV3/EfficientNet-style model; None for other models."""
    stages = getattr(model, "blocks", None)
    if stages is None or not hasattr(model, "conv_stem"):
        return None
    out = []
    for stage in stages:
        for b in stage:
            t = _TYPE.get(type(b).__name__)
            if t is None:
                return None
            se = hasattr(b, "se") and not isinstance(b.se, nn.Identity)
            if t in ("ds", "ir"):
                conv = b.conv_dw
            elif t == "cn":
                conv = b.conv
            else:
                conv = getattr(b, "conv_exp", None) or next(m for m in b.modules() if isinstance(m, nn.Conv2d))
            if t == "ir":
                e = b.conv_pw.out_channels / b.conv_pw.in_channels
                c = b.conv_pwl.out_channels
            elif t == "ds":
                e, c = 1.0, b.conv_pw.out_channels
            else:
                convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
                e, c = 1.0, convs[-1].out_channels
            out.append({"type": t, "se": se, "k": conv.kernel_size[0], "s": conv.stride[0], "e": round(e, 4), "c": c})
    return out


_ATTN_BLOCKS = {"LGLBlock": "lgl", "Meta3D": "global", "MOATBlock": "attention"}
_CONV_BLOCKS = {"Meta4D": "meta4d", "MBConv": "ir", "ConvBlock": "conv"}


def hybrid_truth(model: nn.Module) -> dict:
    """Coarse truth for hybrids: attention blocks and conv blocks by class (EMO's iRMB counts as
    attention when its ``attn`` flag is set), and the number of Conv2d modules."""
    attn, conv = Counter(), Counter()
    for m in model.modules():
        name = type(m).__name__
        if name == "IRMB":
            (attn if getattr(m, "attn", False) else conv)["window" if getattr(m, "attn", False) else "irmb"] += 1
        elif name in _ATTN_BLOCKS:
            attn[_ATTN_BLOCKS[name]] += 1
        elif name in _CONV_BLOCKS:
            conv[_CONV_BLOCKS[name]] += 1
    return {"convs": sum(isinstance(m, nn.Conv2d) for m in model.modules()),
            "attention_blocks": dict(attn), "conv_blocks": dict(conv)}


def label(b: dict) -> str:
    t = "ds" if b["type"] in ("ds", "dsa") else b["type"]
    return t + ("+se" if b.get("se") else "")


def align(true: list[dict], pred: list[dict]) -> list[tuple[int | None, int | None]]:
    """Global alignment of the two block sequences on their labels (edit distance)."""
    a, b = [label(x) for x in true], [label(x) for x in pred]
    n, m = len(a), len(b)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]), cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    pairs, i, j = [], n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]


def score_blocks(true: list[dict], pred: list[dict]) -> dict:
    pred = [p for p in pred if p["type"] != "attn"]
    pairs = align(true, pred)
    matched = [(true[i], pred[j]) for i, j in pairs if i is not None and j is not None]
    denom = max(len(true), len(pred), 1)
    irs = [(t, p) for t, p in matched if t["type"] == "ir"]
    n_ir = sum(t["type"] == "ir" for t in true)
    return {
        "n_true": len(true), "n_pred": len(pred),
        "block_type_acc": sum(label(t) == label(p) for t, p in matched) / denom,
        "kernel_acc": sum(t["k"] == p["k"] for t, p in matched) / max(len(true), 1),
        "stride_acc": sum(t["s"] == p["s"] for t, p in matched) / max(len(true), 1),
        "expansion_acc": (sum(p["type"] == "ir" and abs((p["e"] or 0) - t["e"]) <= 0.1 * t["e"] for t, p in irs)
                          / n_ir) if n_ir else None,
        "width_rel_err": (sum(abs(p["c"] - t["c"]) / t["c"] for t, p in matched) / len(matched)) if matched else None,
    }


def score(model: nn.Module, result: dict) -> dict:
    """Scores of an attack result against ``model``'s truth (CNN blocks, else hybrid counts)."""
    true = true_blocks(model)
    if true is not None:
        return {"kind": "cnn", **score_blocks(true, result["blocks"]), "truth": true}
    t = hybrid_truth(model)
    n_attn = sum(b["type"] == "attn" for b in result["blocks"])
    return {"kind": "hybrid", "true_attention_blocks": sum(t["attention_blocks"].values()),
            "true_blocks_by_kind": {**t["attention_blocks"], **t["conv_blocks"]}, "pred_attention_blocks": n_attn,
            "true_convs": t["convs"], "pred_conv_layers": result.get("n_conv_layers"),
            "pred_variants": dict(Counter(b.get("variant") or b["type"] for b in result["blocks"])),
            "pred_blocks": len(result["blocks"])}
