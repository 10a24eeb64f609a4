"""Stage (a) of the attack: split a trace into layers, then layers into blocks, by op patterns.

Only what the observer sees is used: op names, kernel names and durations (see trace.py).

Layers: ``conv -> bn? -> act?`` (ONNX Runtime's ``FusedConv`` is conv+act with BN folded),
squeeze-excitation ``pool -> conv -> act -> conv -> gate -> mul``, residual ``add``, global
``pool``, ``linear``, and attention (``matmul``/``softmax``/``scaled_dot_product_attention``)
with the norms and reshapes around it.

Blocks follow the regularities of compact CNNs: a convolution *without* activation is a linear
bottleneck's projection and ends a block (2 convs: depthwise-separable; 3: inverted residual),
an ``add`` right after it is the block's skip, an SE between the depthwise and the projection
belongs to that block. Convolutions with activation that no projection closes (MobileNet-V1's
``dw -> pw`` pairs, standard ``cn`` blocks, the head conv) are left as a *free run* for
infer.py, which tells depthwise from full convolutions by kernel name and duration.
"""

from __future__ import annotations

_ACT = {"relu", "relu6", "hardswish", "silu", "hardtanh", "gelu", "elu", "leaky_relu", "clamp_min", "mish",
        "clamp", "prelu", "selu", "celu", "softplus", "tanh",
        "Relu", "Clip", "HardSwish", "Gelu", "Elu", "LeakyRelu", "Mish", "Tanh", "Softplus", "QuickGelu"}
_GATE = {"sigmoid", "hardsigmoid", "Sigmoid", "HardSigmoid"}
_CONV = {"conv2d", "convolution", "_convolution", "conv1d", "Conv", "FusedConv", "NhwcConv", "NhwcFusedConv"}
_BN = {"batch_norm", "native_batch_norm", "BatchNormalization"}
_ADD = {"add", "Add", "Sum"}
_MUL = {"mul", "Mul"}
_POOL = {"mean", "adaptive_avg_pool2d", "avg_pool2d", "GlobalAveragePool", "ReduceMean", "AveragePool",
         "max_pool2d", "MaxPool", "GlobalMaxPool"}
_LINEAR = {"linear", "addmm", "Gemm"}
_ATTN = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu", "softmax", "_softmax",
         "Softmax", "matmul", "bmm", "baddbmm", "MatMul", "Attention", "MultiHeadAttention"}
_NORM = {"layer_norm", "group_norm", "LayerNormalization", "GroupNormalization", "SimplifiedLayerNormalization"}


def op_kind(name: str) -> str:
    """Canonical kind of an op name: conv, bn, act, gate, add, mul, pool, linear, attn, norm, other."""
    base = name.split("::")[-1]
    if base.endswith("_") and not base.startswith("_"):
        base = base[:-1]  # in-place variant (relu_ -> relu)
    for kind, names in (("conv", _CONV), ("bn", _BN), ("act", _ACT), ("gate", _GATE), ("add", _ADD),
                        ("mul", _MUL), ("pool", _POOL), ("linear", _LINEAR), ("attn", _ATTN), ("norm", _NORM)):
        if base in names:
            return kind
    return "other"


def act_name(op: str) -> str:
    """The activation's identity as the observer reads it (relu, relu6, hard_swish, swish, gelu)."""
    base = op.split("::")[-1].rstrip("_").lower()
    return {"hardtanh": "relu6", "clip": "relu6", "hardswish": "hard_swish", "silu": "swish",
            "clamp_min": "relu"}.get(base, base)


def layers_of(ops: list[dict], stat: str = "us") -> list[dict]:
    """Group the op sequence into layers (dicts with ``kind`` and the durations they consist of).

    ``stat`` picks the duration statistic: ``us`` (median over the profiled runs) or ``us_p10``
    (near the minimum: least disturbed by other jobs on a shared machine)."""
    if stat != "us":
        ops = [dict(o, us=o.get(stat, o["us"])) for o in ops]
    kinds = [op_kind(o["op"]) for o in ops]
    layers: list[dict] = []
    i, n = 0, len(ops)
    while i < n:
        k = kinds[i]
        if k == "pool" and _is_se(kinds, i):
            j = i + 1
            t = ops[i]["us"]
            while kinds[j] != "mul":
                t += ops[j]["us"]
                j += 1
            gate = next(ops[m]["op"] for m in range(i, j) if kinds[m] == "gate")
            layers.append({"kind": "se", "us": t + ops[j]["us"], "gate": act_name(gate), "span": [i, j]})
            i = j + 1
            continue
        if k == "conv":
            layer = {"kind": "conv", "t_conv": ops[i]["us"], "kernel": ops[i].get("kernel", ops[i]["op"]),
                     "t_bn": None, "t_act": None, "act": None, "span": [i, i]}
            if ops[i]["op"].endswith("FusedConv"):
                layer["act"] = "fused"
            j = i + 1
            if j < n and kinds[j] == "bn":
                layer["t_bn"] = ops[j]["us"]
                j += 1
            if j < n and kinds[j] == "act":
                layer["t_act"], layer["act"] = ops[j]["us"], act_name(ops[j]["op"])
                j += 1
            layer["span"][1] = j - 1
            layers.append(layer)
            i = j
            continue
        if k in ("add", "pool", "linear", "attn", "norm", "mul", "gate", "act", "bn"):
            layers.append({"kind": k, "us": ops[i]["us"], "op": ops[i]["op"], "span": [i, i]})
        i += 1
    return layers


def _is_se(kinds: list[str], i: int) -> bool:
    """pool -> conv -> act -> conv -> gate -> mul (a few ops of slack for reshapes)."""
    window = [k for k in kinds[i + 1:i + 9] if k != "other"]
    return len(window) >= 5 and window[0] == "conv" and window[1] == "act" and window[2] == "conv" \
        and window[3] == "gate" and window[4] == "mul"


def blocks_of(layers: list[dict]) -> dict:
    """Split layers into stem, blocks and head.

    Returns ``{"stem": conv layer, "units": [...], "tail": [...]}``. Each unit is either
    ``{"type": "linear", "convs": [...], "se": bool, "skip": bool}`` (closed by a conv without
    activation), ``{"type": "free", "convs": [...]}`` (convs with activation not closed by a
    projection) or ``{"type": "attn", "layers": [...]}`` (norm/attention ops up to the residual
    add; a following norm-only unit, the token MLP, is merged into it). A linear unit right
    after a mid-network pool is flagged ``pool_mixer`` (EfficientFormer's Meta4D: pool(x) - x).
    ``tail`` holds the layers from the final global pool on (pool, head conv, linear).
    """
    convs = [i for i, L in enumerate(layers) if L["kind"] == "conv"]
    if not convs:
        raise ValueError("the trace has no convolutions: nothing to segment")
    # The global pool of the head: the last pool that is followed only by head ops.
    end = len(layers)
    for i in range(len(layers) - 1, -1, -1):
        if layers[i]["kind"] == "pool":
            end = i
            break
    stem_i = convs[0]
    units: list[dict] = []
    run: list[dict] = []  # convs not yet assigned
    attn: list[dict] | None = None
    pool_seen = False

    def flush_free():
        if run:
            units.append({"type": "free", "convs": list(run)})
            run.clear()

    for L in layers[stem_i + 1:end]:
        kind = L["kind"]
        if kind in ("attn", "norm"):
            flush_free()
            if attn is None:
                attn, pool_seen = [], False
                units.append({"type": "attn", "layers": attn})
            attn.append(L)
            continue
        if attn is not None and kind == "add":
            attn.append(L)
            if not any(x["kind"] == "attn" for x in attn) and len(units) > 1 and units[-2]["type"] == "attn":
                units.pop()  # a norm -> MLP -> add half: the MLP of the attention block before it
                units[-1]["layers"].extend(attn)
            attn = None  # the attention block ends at its residual add
            continue
        if kind == "pool":
            pool_seen = True
            continue
        if kind == "conv":
            attn = None
            run.append(L)
            if L["act"] is None:  # linear projection: closes a block of the last 2-3 convs
                take = _bottleneck_size(run)
                head = run[:-take]
                if head:
                    units.append({"type": "free", "convs": head})
                units.append({"type": "linear", "convs": run[-take:], "skip": False, "pool_mixer": pool_seen})
                pool_seen = False
                run.clear()
        elif kind == "se":
            if run:
                run.append({"kind": "se_marker", "gate": L["gate"]})
        elif kind == "add":
            if units and units[-1]["type"] == "linear" and not run:
                units[-1]["skip"] = True
            elif units and units[-1]["type"] == "attn":
                units[-1]["layers"].append(L)
    flush_free()
    for u in units:
        if u["type"] == "attn" and not any(x["kind"] == "attn" for x in u["layers"]):
            u["type"] = "norm"  # norms without attention ops (e.g. an iRMB's LayerNorm before a conv)
    for u in units:  # turn SE markers into a flag
        if "convs" in u:
            gates = [c["gate"] for c in u["convs"] if c.get("kind") == "se_marker"]
            u["se"], u["se_gate"] = bool(gates), (gates[0] if gates else None)
            u["convs"] = [c for c in u["convs"] if c.get("kind") == "conv"]
    units = [u for u in units if u.get("convs", True)]
    return {"stem": layers[stem_i], "units": units, "tail": layers[end:]}


def _bottleneck_size(run: list[dict]) -> int:
    """How many of the pending entries (convs and SE markers) the projection closes: DS is
    dw [se] pw, IR is pw dw [se] pwl; a run longer than that leaves its head as free convs.
    With an SE the depthwise is the conv just before it, which pins the split."""
    convs = [i for i, c in enumerate(run) if c.get("kind") == "conv"]
    se = [i for i, c in enumerate(run) if c.get("kind") == "se_marker"]
    if se:
        dw = max(i for i in convs if i < se[-1])
        before = [i for i in convs if i < dw]
        start = before[-1] if before and _looks_pointwise(run[before[-1]]) else dw
        return len(run) - start
    n = len(convs)
    if n <= 2:
        return len(run)
    # pw dw pwl: the middle conv is depthwise (kernel name says so on CPU eager) and the one
    # before it is not; otherwise dw pw (DS) after free convs.
    if _looks_pointwise(run[convs[-3]]):
        return len(run) - convs[-3]
    return len(run) - convs[-2]


def _looks_pointwise(conv: dict) -> bool:
    """A cheap structural guess used only for splitting; infer.py classifies convs properly.
    On CPU eager oneDNN takes the depthwise convs (``mkldnn_convolution``) while 1x1 convs go
    to the im2col-free ``_slow_conv2d_forward``; elsewhere, assume pointwise."""
    return "mkldnn" not in conv.get("kernel", "")
