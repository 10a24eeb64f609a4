"""Stage (b) of the attack: from a segmented trace to an architecture (a buildable net config).

What is inferred, and from what (the observer sees op/kernel names and durations only):

- element counts: a BatchNorm's and an activation's duration grow with the number of
  elements they touch; the *latency model* maps duration -> elements, per op, fitted on the
  attacker's own random networks (randnets.py). With the public input size, elements give
  the channel count once the resolution is tracked.
- stride: a depthwise conv whose output has ~1/4 of its input's elements halved the
  resolution (ratio < 0.5).
- widths: channels = elements / (H*W), rounded to a multiple of 8 (every compact CNN here
  rounds channels with make_divisible(8)); expansion = mid channels / input channels.
- depthwise-vs-full: k-nearest-neighbours on duration features (conv time relative to the BN
  that follows it, elements, resolution change, kernel name), trained on the random networks'
  convs, whose true shapes the attacker knows.
- kernel size: the same k-nearest-neighbours per role (default), or per-kernel-size regressions
  of the conv's log duration on its estimated elements and resolution change (KernelRegressor);
  benchmarks/bench_leak_kernel_form.py compares them on held-out random nets.
- block type: the segmentation's pattern (2 convs + projection: depthwise-separable; 3:
  inverted residual; SE pattern; attention ops), activation by name (relu/hardswish/... are
  distinct ops), family by where the head conv sits (after the pool: MobileNetV3 style).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from edgevision.leak.segment import blocks_of, layers_of, op_kind

MODEL_FORMAT = "edgevision-leak-latency-model"
MODEL_VERSION = 3
_KNN_FEATURES = np.array([True, True, True, False, False])  # ratio, log n, resolution change (not name/raw t)
_GRID = np.linspace(math.log(64), math.log(3e8), 2000)  # log elements searched when inverting
_ACT_CODE = {"relu": "re", "relu6": "r6", "hard_swish": "hs", "swish": "sw", "gelu": "ge", "mish": "mi"}


# ----------------------------------------------------------------------------- the latency model
class _Classifier:
    """What the attack asks of a conv classifier: ``proba(features) -> {class: p}``; the most
    probable class follows from it."""

    def proba(self, f) -> dict:
        raise NotImplementedError

    def predict(self, f):
        p = self.proba(f)
        return max(p, key=p.get) if p else None


class KNN(_Classifier):
    """Distance-weighted k-nearest-neighbour classifier on standardized features (JSON-able)."""

    def __init__(self, x, y, k: int = 5):
        self.x = np.asarray(x, dtype=float)
        self.y = list(y)
        self.k = k
        self.mu = self.x.mean(0) if len(self.x) else np.zeros(self.x.shape[1:])
        self.sd = self.x.std(0) + 1e-6 if len(self.x) else np.ones(self.x.shape[1:])

    def proba(self, f) -> dict:
        """Class -> share of the distance-weighted votes of the k nearest training points."""
        if not len(self.x):
            return {}
        f = np.asarray(f, dtype=float)
        if self.x.shape[1] > 3:
            # The kernel-name feature (index 3) is categorical and, where it decides, decisive:
            # only neighbours dispatched to the same kernel vote.
            same = self.x[:, 3] == f[3]
            if same.any() and not same.all():
                sub = KNN.__new__(KNN)
                sub.x, sub.y, sub.k, sub.mu, sub.sd = self.x[same], [y for y, m in zip(self.y, same) if m], \
                    self.k, self.mu, self.sd
                return sub.proba(f)
        d = np.sqrt((((self.x - f) / self.sd) ** 2)[:, _KNN_FEATURES[: self.x.shape[1]]].sum(1))
        idx = np.argsort(d)[: self.k]
        votes: dict = {}
        for i in idx:
            votes[self.y[i]] = votes.get(self.y[i], 0.0) + 1.0 / (d[i] + 1e-3)
        total = sum(votes.values())
        return {c: v / total for c, v in votes.items()}

    def to_json(self):
        return {"x": self.x.round(5).tolist(), "y": self.y, "k": self.k}

    @classmethod
    def from_json(cls, d):
        return cls(np.asarray(d["x"], dtype=float).reshape(-1, len(d["x"][0]) if d["x"] else 0), d["y"], d["k"])


# Kernel-size classifiers, compared in benchmarks/bench_leak_kernel_form.py. k-NN is the default:
# it scored best on random nets held out from the fit (the registry is never used to choose).
REGRESSION_FORMS = ("quadratic", "linear")
KERNEL_FORMS = ("knn", *REGRESSION_FORMS)


class KernelRegressor(_Classifier):
    """Kernel size from a conv's duration: per class k, least squares of log t on
    [1, log n, log n^2, log(n_in/n_out), log n * log(n_in/n_out)] (form "quadratic"; "linear":
    [1, log n, log(n_in/n_out)]), n the output elements, features of conv_features; the class
    probabilities from each fit's Gaussian residual, equal priors (JSON-able)."""

    def __init__(self, w: dict, sd: dict, form: str = "quadratic"):
        if form not in REGRESSION_FORMS:
            raise ValueError(f"unknown kernel regression form {form!r}; choose {' or '.join(REGRESSION_FORMS)}")
        self.w = {int(k): np.asarray(v, dtype=float) for k, v in w.items()}
        self.sd = {int(k): float(v) for k, v in sd.items()}
        self.form = form

    def design(self, f) -> np.ndarray:
        f = np.atleast_2d(np.asarray(f, dtype=float))
        n, st = f[:, 1], f[:, 2]
        if self.form == "linear":
            return np.stack([np.ones(len(f)), n, st], 1)
        return np.stack([np.ones(len(f)), n, n * n, st, st * n], 1)

    @classmethod
    def fit(cls, x, y, min_rows: int = 8, form: str = "quadratic") -> "KernelRegressor":
        x, y = np.asarray(x, dtype=float).reshape(len(y), -1), np.asarray(y)
        out = cls({}, {}, form)
        for k in sorted(set(y.tolist())):
            m = y == k
            if m.sum() < min_rows:
                continue  # too few convs of this size to fit the coefficients
            a = out.design(x[m])
            coef, *_ = np.linalg.lstsq(a, x[m, 4], rcond=None)
            out.w[k], out.sd[k] = coef, float(np.std(x[m, 4] - a @ coef)) + 0.02
        return out

    def proba(self, f) -> dict:
        if not self.w:
            return {}
        f = np.asarray(f, dtype=float)
        a = self.design(f)
        ll = {k: -0.5 * (float(f[4] - (a @ w)[0]) / self.sd[k]) ** 2 - math.log(self.sd[k]) for k, w in self.w.items()}
        top = max(ll.values())
        p = {k: math.exp(v - top) for k, v in ll.items()}
        total = sum(p.values())
        return {k: v / total for k, v in p.items()}

    def to_json(self):
        return {"w": {str(k): v.round(6).tolist() for k, v in self.w.items()},
                "sd": {str(k): v for k, v in self.sd.items()}, "form": self.form}

    @classmethod
    def from_json(cls, d):
        return cls(d["w"], d["sd"], d.get("form", "quadratic"))


def _kernel_classifier_from_json(d: dict):
    return KNN.from_json(d) if "x" in d else KernelRegressor.from_json(d)


class LatencyModel:
    """The machine's latency model: duration -> elements per elementwise op, and the conv
    classifiers (role: depthwise/full; kernel size per role). Fitted on random networks only."""

    def __init__(self, elem: dict, role: KNN, k_dw: _Classifier, k_full: _Classifier, meta: dict):
        self.elem, self.role, self.k_dw, self.k_full, self.meta = elem, role, k_dw, k_full, meta

    @property
    def runtime(self) -> str:
        return self.meta["runtime"]

    def elements(self, op: str, us: float | None) -> float | None:
        return self.joint_elements([(op, us)])

    def joint_elements(self, observed: list[tuple[str, float | None]]) -> float | None:
        """Elements that best explain the observed durations of ops on one tensor: the forward
        models log t = p_op(log n) (fitted with the noise where it is, in t) inverted jointly,
        each op weighted by its residual spread."""
        terms = [(self.elem[op], math.log(us)) for op, us in observed if us and us > 0 and op in self.elem]
        if not terms:
            return None
        err = sum(((np.interp(_GRID, m["x"], m["y"]) - lt) / m["sd"]) ** 2 for m, lt in terms)
        return float(math.exp(_GRID[int(np.argmin(err))]))

    def save(self, path) -> Path:
        from edgevision.io import atomic_write_text

        data = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "meta": self.meta, "elem": self.elem,
                "role": self.role.to_json(), "k_dw": self.k_dw.to_json(), "k_full": self.k_full.to_json()}
        atomic_write_text(Path(path), json.dumps(data))
        return Path(path)

    @classmethod
    def load(cls, path) -> "LatencyModel":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the latency model ({e}); fit one with "
                             "benchmarks/bench_leakage.py or `edgevision leak audit`") from None
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT or d.get("version") != MODEL_VERSION:
            raise ValueError(f"{path}: not a version-{MODEL_VERSION} edgevision leak latency model; fit it again")
        return cls(d["elem"], KNN.from_json(d["role"]), _kernel_classifier_from_json(d["k_dw"]),
                   _kernel_classifier_from_json(d["k_full"]), d["meta"])


def _elem_op(layer: dict) -> list[tuple[str, float]]:
    out = []
    if layer.get("t_bn"):
        out.append(("bn", layer["t_bn"]))
    if layer.get("t_act") and layer.get("act"):
        out.append(("act:" + layer["act"], layer["t_act"]))
    return out


def layer_elements(lm: LatencyModel, layer: dict) -> float | None:
    """Elements of a conv layer's output, from its BN and activation durations jointly."""
    return lm.joint_elements(_elem_op(layer))


def conv_features(layer: dict, n_out: float | None, n_in: float | None) -> list[float]:
    """Duration features of one conv (the same function for fitting and attacking)."""
    t = max(layer["t_conv"], 1e-3)
    ref = layer.get("t_bn") or layer.get("t_act") or t
    n_out = n_out or 1.0
    n_in = n_in or n_out
    return [math.log(t / ref), math.log(n_out), math.log(n_in / n_out),
            1.0 if "mkldnn" in layer.get("kernel", "") else 0.0, math.log(t)]


def _calib_key(c: dict) -> str:
    return f"{c['op']}:{c['n']}"


def speed_factor(trace: dict, ref: dict | None) -> float:
    """How much slower than the lab's average this trace's machine state was, from the
    attacker's own reference ops recorded with it (1.0 when either side has none)."""
    logs = [math.log(c["us"] / ref[_calib_key(c)]) for c in trace.get("calibration") or []
            if ref and _calib_key(c) in ref and c["us"] > 0]
    return float(math.exp(np.median(logs))) if logs else 1.0


def normalised_ops(trace: dict, ref: dict | None) -> list[dict]:
    f = speed_factor(trace, ref)
    if f == 1.0:
        return trace["ops"]
    return [dict(o, **{k: o[k] / f for k in ("us", "us_p10", "us_p90") if k in o}) for o in trace["ops"]]


def fit_latency_model(samples: list[dict], runtime: str, meta: dict | None = None,
                      stat: str = "us_p10", calibrate: bool = True, kernel_form: str = "knn") -> LatencyModel:
    """Fit from lab traces: each sample ``{"trace": trace-with-lab}`` of a random network.
    ``stat``: the duration statistic used here and by the attack (see segment.layers_of);
    ``calibrate``: divide every trace by its speed factor (the attacker's reference ops);
    ``kernel_form``: the kernel-size classifier, one of KERNEL_FORMS."""
    if kernel_form not in KERNEL_FORMS:
        raise ValueError(f"unknown kernel_form {kernel_form!r}; choose from {', '.join(KERNEL_FORMS)}")
    pairs: dict[str, list] = {}
    conv_rows = []  # (layer, truth) for every conv followed by BN
    calib: dict[str, list] = {}
    for s in samples:
        for c in s["trace"].get("calibration") or []:
            calib.setdefault(_calib_key(c), []).append(math.log(c["us"]))
    ref = ({k: float(math.exp(np.mean(v))) for k, v in calib.items()} or None) if calibrate else None
    for s in samples:
        tr = s["trace"]
        convs = [L for L in layers_of(normalised_ops(tr, ref), stat=stat) if L["kind"] == "conv"]
        truth = tr["lab"]["convs"]
        se_convs = _se_conv_positions(tr["ops"])
        truth = [c for i, c in enumerate(truth) if i not in se_convs]
        if len(truth) != len(convs):
            continue  # the op grouping disagrees with the hooks (unusual op): skip this net
        prev = None
        for L, c in zip(convs, truth):
            for op, t in _elem_op(L):
                pairs.setdefault(op, []).append((t, c["numel"]))
            conv_rows.append((L, c, prev))
            prev = c
    elem = {}
    for op, ps in pairs.items():
        if len(ps) >= 8:
            t = np.log([p[0] for p in ps])
            n = np.log([p[1] for p in ps])
            # log t as a function of log n: medians in bins of log n (n is exact here, the noise
            # is in t), made non-decreasing; inverted later by search. Regressing n on t
            # instead would shrink every estimate toward the mean (noise in the regressor).
            edges = np.quantile(n, np.linspace(0, 1, min(12, len(ps) // 6) + 1))
            xs, ys = [], []
            for lo, hi in zip(edges[:-1], edges[1:]):
                m = (n >= lo) & (n <= hi)
                if m.sum():
                    xs.append(float(np.median(n[m])))
                    ys.append(float(np.median(t[m])))
            ys = np.maximum.accumulate(ys).tolist()
            sd = float(np.std(t - np.interp(n, xs, ys))) + 0.02
            elem[op] = {"x": xs, "y": ys, "sd": sd}
    lm = LatencyModel(elem, KNN(np.zeros((0, 5)), []), KernelRegressor({}, {}), KernelRegressor({}, {}),
                      dict(meta or {}, runtime=runtime, stat=stat, calib_ref=ref))
    role_x, role_y, dw_x, dw_y, full_x, full_y = [], [], [], [], [], []
    prev_est = None
    for L, c, prev in conv_rows:
        n_out = layer_elements(lm, L)
        n_in = prev_est if prev is not None else None
        f = conv_features(L, n_out, n_in)
        prev_est = n_out
        is_dw = c["groups"] > 1 and c["groups"] == c["cin"]
        role_x.append(f)
        role_y.append("dw" if is_dw else "full")
        (dw_x if is_dw else full_x).append(f)
        (dw_y if is_dw else full_y).append(int(c["k"]))
    lm.role = KNN(role_x, role_y)
    if kernel_form == "knn":
        lm.k_dw, lm.k_full = KNN(dw_x, dw_y), KNN(full_x, full_y)
    else:
        lm.k_dw = KernelRegressor.fit(dw_x, dw_y, form=kernel_form)
        lm.k_full = KernelRegressor.fit(full_x, full_y, form=kernel_form)
    lm.meta["kernel_form"] = kernel_form
    lm.meta.update(n_nets=len(samples), n_convs=len(conv_rows), elem_ops=sorted(elem))
    return lm


def _se_conv_positions(ops: list[dict]) -> set[int]:
    """Indices (among all conv ops) of the convs inside SE patterns (they have no BN)."""
    from edgevision.leak.segment import _is_se, op_kind

    kinds = [op_kind(o["op"]) for o in ops]
    conv_idx = {i: n for n, i in enumerate(i for i, k in enumerate(kinds) if k == "conv")}
    out: set[int] = set()
    for i, k in enumerate(kinds):
        if k == "pool" and _is_se(kinds, i):
            found = [j for j in range(i + 1, min(len(kinds), i + 9)) if kinds[j] == "conv"][:2]
            out.update(conv_idx[j] for j in found)
    return out


# ----------------------------------------------------------------------------- the attack
# Expansion ratios of the compact-CNN literature (MobileNetV2/V3, MnasNet, EfficientNet, FBNet):
# the attacker snaps a measured ratio to the nearest one.
EXPANSIONS = (1.0, 2.0, 2.5, 3.0, 4.0, 4.5, 6.0)


def _round8(c: float) -> int:
    return max(8, int(round(c / 8.0)) * 8)


def _snap_e(e: float) -> float:
    return min(EXPANSIONS, key=lambda v: abs(math.log(v) - math.log(max(e, 1e-3))))


def infer_architecture(trace: dict, lm: LatencyModel) -> dict:
    """The recovered architecture: ``{"family", "stem", "blocks": [...], "config": net config}``."""
    size = trace["size"]
    layers = layers_of(normalised_ops(trace, lm.meta.get("calib_ref")), stat=lm.meta.get("stat", "us"))
    seg = blocks_of(layers)
    tail = seg["tail"]
    family = "mobilenetv3" if any(L["kind"] == "conv" for L in tail) else "efficientnet"
    stem = seg["stem"]
    h = max(1, (size + 1) // 2)  # stems of compact CNNs are stride 2 (design regularity)
    n_stem = layer_elements(lm, stem)
    state = {"h": h, "c": n_stem / (h * h) if n_stem else 32.0, "n": n_stem}
    c_stem_raw = state["c"]
    blocks: list[dict] = []
    head_conv = None
    units = seg["units"]
    for ui, u in enumerate(units):
        if u["type"] == "norm":
            continue
        if u["type"] == "attn":
            span = [u["layers"][0]["span"][0], u["layers"][-1]["span"][1]]
            blocks.append({"type": "attn", "variant": _attn_variant(trace["ops"], span), "k": None, "s": 1,
                           "e": None, "c_raw": state["c"], "se": False, "act": None, "skip": True,
                           "n_ops": span[1] - span[0] + 1, "span": span})
            continue
        if u["type"] == "linear":
            blocks.append(_linear_block(u, lm, state))
            if u.get("pool_mixer") and blocks[-1]["type"] in ("ds", "cn"):
                blocks[-1]["variant"] = "meta4d"  # pool(x) - x token mixer, then a conv MLP
            blocks[-1]["span"] = [u["convs"][0]["span"][0], u["convs"][-1]["span"][1]]
            continue
        # Free run: classify each conv, pair depthwise with the following full conv. Standard
        # (cn) blocks are rare in compact CNNs, so a conv that may be depthwise (P >= 0.25) and
        # is followed by a full conv is taken as the depthwise half of a dw -> pw pair.
        convs = u["convs"]
        p_dw = []
        n_prev = state["n"]
        for L in convs:
            n_out = layer_elements(lm, L)
            p_dw.append(lm.role.proba(conv_features(L, n_out, n_prev)).get("dw", 0.0))
            n_prev = n_out
        i = 0
        last_unit = ui == len(units) - 1
        roles = ["dw" if p >= 0.5 else "full" for p in p_dw]
        while i < len(convs):
            if p_dw[i] >= 0.25 and i + 1 < len(convs) and p_dw[i + 1] < 0.5:
                blocks.append(_ds_block(convs[i], convs[i + 1], lm, state, pw_act=True))
                blocks[-1]["span"] = [convs[i]["span"][0], convs[i + 1]["span"][1]]
                roles[i] = "dw"
                i += 2
                continue
            is_last = last_unit and i == len(convs) - 1
            if is_last and family == "efficientnet" and not (roles[i] == "full" and i > 0 and roles[i - 1] == "dw"):
                head_conv = convs[i]  # 1x1 head conv before the pool (EfficientNet/MnasNet style)
                i += 1
                continue
            blocks.append(_cn_block(convs[i], lm, state))
            blocks[-1]["span"] = list(convs[i]["span"])
            i += 1
    c_stem = _finish_blocks(blocks, c_stem_raw)
    acts = Counter(b["act"] for b in blocks if b.get("act")) or Counter({"relu": 1})
    main_act = acts.most_common(1)[0][0]
    last_c = next((b["c"] for b in reversed(blocks) if b["type"] != "attn"), c_stem)
    if head_conv is not None:
        n = layer_elements(lm, head_conv)
        num_features = _round8(n / (state["h"] ** 2)) if n else 1280
    elif family == "mobilenetv3":
        num_features = 1280 if last_c >= 512 else 1024
    else:
        num_features = last_c
    se_gate = next((u.get("se_gate") for u in units if u.get("se_gate")), "sigmoid")
    cfg = _to_config(blocks, family, c_stem, num_features, main_act, se_gate)
    return {"family": family, "stem": {"c": c_stem, "k": 3, "s": 2, "act": stem.get("act"), "span": stem["span"]},
            "blocks": blocks, "head": {"num_features": num_features}, "config": cfg,
            "n_conv_layers": sum(L["kind"] == "conv" for L in layers)}


def _attn_variant(ops: list[dict], span: list[int]) -> str:
    """What the op names around an attention block say about it: LGL (EdgeViT: sparse global
    attention, then a transposed-conv propagation), window attention (padding/partition
    reshapes before the attention), else global."""
    start = span[0]
    while start > 0 and op_kind(ops[start - 1]["op"]) == "other":  # the partition reshapes before it
        start -= 1
    names = [o["op"].split("::")[-1] for o in ops[start:span[1] + 1]]
    if "conv_transpose2d" in names:
        return "lgl"
    first = next((i for i, n in enumerate(names) if n in ("scaled_dot_product_attention", "softmax", "_softmax",
                                                           "matmul", "bmm")), len(names))
    before = names[:first]
    if "pad" in before or "constant_pad_nd" in before or sum(n in ("permute", "unfold", "roll") for n in before) >= 2:
        return "window"
    return "global"


def _stride(n_in, n_out) -> int:
    return 2 if n_in and n_out and n_out / n_in < 0.5 else 1


def _advance(state: dict, s: int) -> int:
    if s == 2:
        state["h"] = max(1, (state["h"] + 1) // 2)
    return state["h"] * state["h"]


def _linear_block(u: dict, lm: LatencyModel, state: dict) -> dict:
    convs = u["convs"]
    if len(convs) == 2:
        b = _ds_block(convs[0], convs[1], lm, state, pw_act=False)
        b["se"], b["skip"] = u["se"], u["skip"]
        return b
    if len(convs) == 1:  # a lone linear conv: a standard conv without activation
        b = _cn_block(convs[0], lm, state)
        b["skip"] = u["skip"]
        return b
    pw, dw, pwl = convs[-3:]  # inverted residual
    n_pw, n_dw, n_out = (layer_elements(lm, c) for c in (pw, dw, pwl))
    s = _stride(n_pw, n_dw)
    hw_in = state["h"] ** 2
    hw = _advance(state, s)
    mids = [n / a for n, a in ((n_pw, hw_in), (n_dw, hw)) if n]
    c_mid = math.exp(sum(math.log(m) for m in mids) / len(mids)) if mids else state["c"] * 6
    b = {"type": "ir", "k_proba": lm.k_dw.proba(conv_features(dw, n_dw, n_pw)), "s": s, "c_mid_raw": c_mid,
         "c_raw": n_out / hw if n_out else state["c"], "se": u["se"], "act": dw.get("act") or pw.get("act"),
         "skip": u["skip"]}
    state["c"], state["n"] = b["c_raw"], n_out or state["n"]
    return b


def _ds_block(dw: dict, pw: dict, lm: LatencyModel, state: dict, pw_act: bool) -> dict:
    n_dw, n_out = layer_elements(lm, dw), layer_elements(lm, pw)
    s = _stride(state["n"], n_dw)
    hw = _advance(state, s)
    b = {"type": "dsa" if pw_act else "ds", "k_proba": lm.k_dw.proba(conv_features(dw, n_dw, state["n"])),
         "s": s, "c_raw": n_out / hw if n_out else state["c"], "se": False, "act": dw.get("act"), "skip": False}
    state["c"], state["n"] = b["c_raw"], n_out or state["n"]
    return b


def _cn_block(conv: dict, lm: LatencyModel, state: dict) -> dict:
    n_out = layer_elements(lm, conv)
    s = 1  # a full conv changes channels too, so elements cannot tell its stride: assume 1
    hw = _advance(state, s)
    b = {"type": "cn", "k_proba": lm.k_full.proba(conv_features(conv, n_out, state["n"])), "s": s,
         "c_raw": n_out / hw if n_out else state["c"], "se": False, "act": conv.get("act"), "skip": False}
    state["c"], state["n"] = b["c_raw"], n_out or state["n"]
    return b


def _chains(blocks: list[dict]) -> list[list[int]]:
    """Runs of blocks that must share width (a residual add needs c_in == c_out): a block and the
    skip blocks right after it. Compact CNNs also repeat one kernel size within such a stage."""
    chains: list[list[int]] = []
    for i, b in enumerate(blocks):
        if b["type"] == "attn":
            continue
        if chains and b.get("skip") and b["s"] == 1 and chains[-1][-1] == i - 1 \
                and blocks[i - 1]["type"] == b["type"]:
            chains[-1].append(i)
        else:
            chains.append([i])
    return chains


def _finish_blocks(blocks: list[dict], c_stem_raw: float) -> int:
    """Joint decisions over each residual chain: one width (median of the estimates, rounded to
    8) and one kernel size (the product of the per-block kernel probabilities); then expansions
    from the corrected input widths, snapped to the usual ratios. Returns the stem width."""
    for chain in _chains(blocks):
        c = _round8(float(np.median([blocks[i]["c_raw"] for i in chain])))
        ks: dict = {}
        for i in chain:
            for k in set().union(*(blocks[j]["k_proba"] for j in chain)):
                ks[k] = ks.get(k, 0.0) + math.log(blocks[i]["k_proba"].get(k, 0.0) + 0.05)
        k = max(ks, key=ks.get) if ks else 3
        for i in chain:
            blocks[i]["c"], blocks[i]["k"] = c, int(k)
    c_stem = _round8(c_stem_raw)
    c_in = c_stem
    for b in blocks:
        if b["type"] == "attn":
            b["c"] = c_in
            continue
        b["c_in"] = c_in
        if b["type"] == "ir":
            e = _snap_e(b["c_mid_raw"] / c_in)
            b["e"] = e
            b["c_mid"] = _round8(c_in * e)
        else:
            b["e"] = 1.0
        c_in = b["c"]
    for b in blocks:
        b.pop("k_proba", None)
    return c_stem


def block_string(b: dict, main_act: str) -> str:
    """A timm arch-def string for one recovered block."""
    t = b["type"] if b["type"] in ("ds", "dsa", "ir", "cn") else "cn"
    parts = [t, "r1", f"k{b['k'] or 3}", f"s{b['s']}"]
    if t == "ir":
        parts.append(f"e{b['e']:g}")
    parts.append(f"c{b['c']}")
    if b.get("se"):
        parts.append("se0.25")
    if b.get("act") and b["act"] != main_act and b["act"] in _ACT_CODE:
        parts.append("n" + _ACT_CODE[b["act"]])
    if t in ("ir", "ds", "dsa") and b["s"] == 1 and b.get("c_in") == b["c"] and not b.get("skip"):
        parts.append("noskip")
    return "_".join(parts)


def _to_config(blocks, family, stem, num_features, act, se_gate) -> dict:
    stages: list[list[str]] = []
    prev_c = None
    for b in blocks:
        if b["type"] == "attn":
            continue  # attention blocks have no CNN-family string: the config keeps the conv part
        if not stages or b["s"] == 2 or b["c"] != prev_c:
            stages.append([])
        stages[-1].append(block_string(b, act))
        prev_c = b["c"]
    return {"format": "edgevision-net/1", "name": "recovered", "family": family, "arch": stages,
            "stem_size": stem, "num_features": num_features, "act": act,
            "se_gate": "hard_sigmoid" if se_gate in ("hardsigmoid", "hard_sigmoid") else "sigmoid"}
