"""Leakage audit (issue 16): segmentation and inference on hand-made traces with known answers,
the config round-trip, the observer model (no names/shapes in a trace file), bad input."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgevision.leak.infer import KNN, KernelRegressor, LatencyModel, infer_architecture
from edgevision.leak.segment import blocks_of, layers_of, op_kind
from edgevision.leak.trace import TraceError, load_trace, record_trace, validate_trace

SIZE = 32
NS_PER_ELEMENT = 1e-3  # hand-made machine: BN/act take 1 us per 1000 elements


def _op(name, us, kernel=None):
    return {"op": name, "kernel": kernel or name, "us": float(us), "us_p10": float(us), "us_p90": float(us)}


def _conv(n_out, k=1, dw=False, act="aten::relu_", cin=None):
    """conv -> bn -> act? whose durations encode ``n_out`` elements (and k for depthwise)."""
    t_el = n_out * NS_PER_ELEMENT
    t_conv = t_el * (k * k if dw else 4 * (cin or 16))
    ops = [_op("aten::conv2d", t_conv, "aten::mkldnn_convolution" if dw else "aten::_slow_conv2d_forward"),
           _op("aten::batch_norm", t_el, "aten::native_batch_norm")]
    if act:
        ops.append(_op(act, t_el))
    return ops


def _se():
    return [_op("aten::mean", 1), _op("aten::conv2d", 1), _op("aten::relu_", 0.1), _op("aten::conv2d", 1),
            _op("aten::hardsigmoid", 0.1), _op("aten::mul", 1)]


def hand_trace():
    """A known network at 32 px: stem c16 s2 (16x16); ds k3 c16; ir k5 s2 e4 c24 +SE;
    ir k5 s1 e3 c24 +skip; mobilenetv3 head (pool, conv, act, linear)."""
    hw1, hw2 = 16 * 16, 8 * 8
    ops = _conv(16 * hw1, k=3, act="aten::hardswish_")  # stem
    ops += _conv(16 * hw1, k=3, dw=True) + _conv(16 * hw1, act=None, cin=16)  # ds
    ops += _conv(64 * hw1, cin=16) + _conv(64 * hw2, k=5, dw=True) + _se() + _conv(24 * hw2, act=None, cin=64)
    ops += _conv(72 * hw2, cin=24) + _conv(72 * hw2, k=5, dw=True) + _conv(24 * hw2, act=None, cin=72)
    ops += [_op("aten::add", 24 * hw2 * NS_PER_ELEMENT)]
    ops += [_op("aten::adaptive_avg_pool2d", 2), _op("aten::conv2d", 5), _op("aten::hardswish_", 0.1),
            _op("aten::flatten", 0.1), _op("aten::linear", 3)]
    return {"format": "edgevision-leak-trace", "version": 1, "runtime": "eager", "device": "cpu", "size": SIZE,
            "threads": 1, "repeats": 1, "machine": {}, "n_ops": len(ops), "ops": ops}


def hand_latency_model():
    """The hand-made machine's latency model: elements = duration / NS_PER_ELEMENT; depthwise
    kernel from log(t_conv / t_bn) = log(k^2)."""
    xs = [math.log(10.0), math.log(1e8)]
    lin = {"x": xs, "y": [x + math.log(NS_PER_ELEMENT) for x in xs], "sd": 0.1}
    elem = {"bn": lin, "act:relu": lin, "act:hard_swish": lin}
    dw_x = [[math.log(k * k), 8.0, 0.0, 1.0, 5.0] for k in (3, 5, 7) for _ in range(3)]
    full_x = [[math.log(4 * c), 8.0, 0.0, 0.0, 5.0] for c in (16, 64)]
    role = KNN(dw_x + full_x, ["dw"] * len(dw_x) + ["full"] * len(full_x), k=1)
    # Kernel regressors fitted on the hand machine's depthwise law t = k^2 n NS_PER_ELEMENT.
    rows = [(k, n) for k in (3, 5, 7) for n in np.geomspace(1e3, 1e6, 10)]
    k_dw = KernelRegressor.fit([_dw_features(k, n) for k, n in rows], [k for k, _ in rows])
    k_full = KernelRegressor.fit([[0.0, math.log(n), 0.0, 0.0, math.log(64 * n * NS_PER_ELEMENT)]
                                  for n in np.geomspace(1e3, 1e6, 10)], [1] * 10)
    return LatencyModel(elem, role, k_dw, k_full, {"runtime": "eager"})


def _dw_features(k, n, noise=0.0):
    """conv_features of a depthwise conv of the hand machine (stride 1)."""
    t = k * k * n * NS_PER_ELEMENT * math.exp(noise)
    return [math.log(t / (n * NS_PER_ELEMENT)), math.log(n), 0.0, 1.0, math.log(t)]


def test_op_kinds():
    assert op_kind("aten::conv2d") == "conv" and op_kind("FusedConv") == "conv"
    assert op_kind("aten::relu_") == "act" and op_kind("aten::hardsigmoid") == "gate"
    assert op_kind("aten::scaled_dot_product_attention") == "attn" and op_kind("aten::view") == "other"


def test_segmentation_hand_trace():
    seg = blocks_of(layers_of(hand_trace()["ops"]))
    units = seg["units"]
    assert [u["type"] for u in units] == ["linear", "linear", "linear"]
    assert [len(u["convs"]) for u in units] == [2, 3, 3]
    assert [u["se"] for u in units] == [False, True, False]
    assert [u["skip"] for u in units] == [False, False, True]
    assert any(L["kind"] == "conv" for L in seg["tail"])  # head conv after the pool: MobileNetV3 style


def test_inference_hand_trace_known_answer():
    r = infer_architecture(hand_trace(), hand_latency_model())
    got = [(b["type"], b["k"], b["s"], b["c"], b["se"], b["skip"]) for b in r["blocks"]]
    assert got == [("ds", 3, 1, 16, False, False), ("ir", 5, 2, 24, True, False), ("ir", 5, 1, 24, False, True)]
    assert [b["e"] for b in r["blocks"][1:]] == pytest.approx([4.0, 3.0])
    assert r["family"] == "mobilenetv3" and r["stem"]["c"] == 16
    assert r["config"]["act"] in ("relu", "hard_swish")


def test_mobilenetv1_style_free_run():
    """dw->pw pairs with activation everywhere (MobileNet-V1) become dsa blocks."""
    hw = 16 * 16
    ops = _conv(8 * hw, k=3) + _conv(8 * hw, k=3, dw=True) + _conv(16 * hw, cin=8)
    ops += _conv(16 * 64, k=3, dw=True) + _conv(32 * 64, cin=16)
    ops += [_op("aten::adaptive_avg_pool2d", 1), _op("aten::flatten", 0.1), _op("aten::linear", 2)]
    tr = dict(hand_trace(), ops=ops, n_ops=len(ops))
    r = infer_architecture(tr, hand_latency_model())
    assert [(b["type"], b["s"], b["c"]) for b in r["blocks"]] == [("dsa", 1, 16), ("dsa", 2, 32)]
    assert r["family"] == "efficientnet"


def test_config_round_trip(tmp_path):
    import edgevision as ev
    from edgevision.models.netconfig import save_config

    r = infer_architecture(hand_trace(), hand_latency_model())
    path = save_config(r["config"], tmp_path / "net.json")
    model = ev.create_model(str(path), num_classes=10).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 10)
    from edgevision.leak.score import score_blocks, true_blocks

    s = score_blocks(true_blocks(model), r["blocks"])
    assert s["block_type_acc"] == 1.0 and s["kernel_acc"] == 1.0 and s["expansion_acc"] == 1.0


def test_latency_model_save_load(tmp_path):
    lm = hand_latency_model()
    lm2 = LatencyModel.load(lm.save(tmp_path / "lm.json"))
    assert lm2.k_dw.predict(_dw_features(5, 5e4)) == 5
    assert lm2.elements("bn", 2.0) == pytest.approx(2000, rel=0.01)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a version"):
        LatencyModel.load(tmp_path / "bad.json")


def _tiny_model():
    from edgevision.models.netconfig import build_from_config

    cfg = {"family": "mobilenetv3", "arch": [["ds_r1_k3_s1_c8"], ["ir_r1_k5_s2_e3_c16_se0.25"]],
           "stem_size": 8, "num_features": 32}
    return build_from_config(cfg, num_classes=4).eval()


def test_observer_model_no_names_or_shapes(tmp_path):
    """A trace file has op/kernel names and durations only: no module names, no shapes."""
    from edgevision.leak.trace import save_trace

    tr = record_trace(_tiny_model(), size=SIZE, repeats=1, warmup=0)
    text = save_trace(tr, tmp_path / "t.json").read_text()
    for leak in ("blocks", "conv_stem", "conv_dw", "bn1", "se.", "Sequential", "InvertedResidual",
                 "shape", "[1, 3, 32, 32]", "input_dims"):
        assert leak not in text, leak
    assert all(set(o) == {"op", "kernel", "us", "us_p10", "us_p90"} for o in tr["ops"])
    assert "lab" not in tr
    assert sum(op_kind(o["op"]) == "conv" for o in tr["ops"]) == sum(
        isinstance(m, nn.Conv2d) for m in _tiny_model().modules())
    assert load_trace(tmp_path / "t.json")["n_ops"] == len(tr["ops"])


def test_channels_last_trace_leaves_the_model_alone():
    """The channels_last observer runs an NHWC copy: same op sequence as eager, the caller's
    model keeps its layout, and the CLI offers exactly the runtimes the tracer knows."""
    from edgevision.cli.leak import RUNTIMES as CLI_RUNTIMES
    from edgevision.leak.trace import RUNTIMES

    model = _tiny_model()
    eager = record_trace(model, size=SIZE, repeats=1, warmup=0)
    cl = record_trace(model, size=SIZE, runtime="channels_last", repeats=1, warmup=0)
    assert cl["runtime"] == "channels_last"
    assert [op_kind(o["op"]) for o in cl["ops"]] == [op_kind(o["op"]) for o in eager["ops"]]
    assert all(p.is_contiguous() for p in model.parameters())
    assert tuple(CLI_RUNTIMES) == tuple(RUNTIMES)


def test_kernel_regressor_generalises_in_width():
    """Kernel sizes from a duration law fitted on small convs hold for convs 2-5x larger
    (wider than any it was fitted on); a class with too few rows is left out."""
    rng = np.random.default_rng(0)
    rows = [(k, n) for k in (3, 5, 7) for n in np.geomspace(1e3, 1e5, 20)]
    reg = KernelRegressor.fit([_dw_features(k, n, rng.normal(0, 0.05)) for k, n in rows],
                              [k for k, _ in rows])
    for k in (3, 5, 7):
        for n in (2e5, 5e5):
            p = reg.proba(_dw_features(k, n))
            assert max(p, key=p.get) == k and sum(p.values()) == pytest.approx(1.0)
    few = KernelRegressor.fit([_dw_features(k, n) for k, n in rows] + [_dw_features(9, 1e4)] * 3,
                              [k for k, _ in rows] + [9] * 3)
    assert sorted(few.w) == [3, 5, 7]
    assert KernelRegressor.from_json(json.loads(json.dumps(few.to_json()))).predict(_dw_features(5, 2e4)) == 5
    lin = KernelRegressor.fit([_dw_features(k, n) for k, n in rows], [k for k, _ in rows], form="linear")
    back = KernelRegressor.from_json(json.loads(json.dumps(lin.to_json())))
    assert back.form == "linear" and back.predict(_dw_features(7, 5e3)) == 7
    with pytest.raises(ValueError, match="unknown kernel regression form"):
        KernelRegressor({}, {}, form="cubic")


def test_fit_latency_model_kernel_forms():
    from edgevision.leak.infer import fit_latency_model

    with pytest.raises(ValueError, match="unknown kernel_form 'svm'"):
        fit_latency_model([], "eager", kernel_form="svm")


def test_bad_traces(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("")
    with pytest.raises(TraceError, match="empty trace file"):
        load_trace(p)
    good = json.dumps(hand_trace())
    p.write_text(good[: len(good) // 2])
    with pytest.raises(TraceError, match="truncated or not JSON"):
        load_trace(p)
    for change, msg in [({"version": 99}, "version 99"), ({"runtime": "tvm"}, "unknown runtime"),
                        ({"ops": []}, "empty trace"), ({"n_ops": 999}, "truncated trace"),
                        ({"format": "x"}, "not an edgevision leak trace")]:
        with pytest.raises(TraceError, match=msg):
            validate_trace(dict(hand_trace(), **change))
    with pytest.raises(TraceError, match="latency model is for 'onnxruntime'"):
        validate_trace(hand_trace(), runtime="onnxruntime")


def test_model_that_cannot_run_at_size():
    class NeedsBig(nn.Module):
        def forward(self, x):
            if x.shape[-1] < 64:
                raise RuntimeError("input too small\nsecond line")
            return x

    with pytest.raises(ValueError, match=r"cannot run at 32px input: input too small; choose another --size"):
        record_trace(NeedsBig(), size=SIZE, repeats=1, warmup=0)


def test_cli_trace_and_infer(tmp_path, capsys):
    from edgevision.cli import leak as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps(hand_trace()))
    lm_path = hand_latency_model().save(tmp_path / "lm.json")
    args = parser.parse_args(["leak", "infer", str(hand), "--latency-model", str(lm_path),
                              "-o", str(tmp_path / "net.json")])
    assert cli.run(args) == 0
    assert "ir  k5 s2 e4.00 c24 +SE" in capsys.readouterr().out
    assert json.loads((tmp_path / "net.json").read_text())["family"] == "mobilenetv3"


def test_random_configs_build():
    from edgevision.leak.randnets import random_config
    from edgevision.models.netconfig import validate_config

    cfgs = [validate_config(random_config(s)) for s in range(20)]
    assert len({json.dumps(c["arch"]) for c in cfgs}) == 20
    assert {c["family"] for c in cfgs} == {"mobilenetv3", "efficientnet"}
    np.testing.assert_equal(len(cfgs), 20)


@pytest.mark.parametrize("extra,variant", [([], "global"), (["aten::pad", "aten::permute", "aten::permute"], "window"),
                                           (["aten::conv_transpose2d"], "lgl")])
def test_attention_blocks_hand_trace(extra, variant):
    """norm -> attention -> add, then norm -> MLP -> add: one attention block (MLP merged)."""
    hw = 16 * 16
    ops = _conv(16 * hw, k=3) + _conv(16 * hw, k=3, dw=True) + _conv(16 * hw, act=None, cin=16)
    attn = [_op("aten::layer_norm", 3), _op("aten::linear", 5)] + [_op(n, 1) for n in extra if n != "aten::conv_transpose2d"]
    attn += [_op("aten::scaled_dot_product_attention", 9), _op("aten::linear", 4)]
    attn += [_op(n, 1) for n in extra if n == "aten::conv_transpose2d"] + [_op("aten::add", 2)]
    mlp = [_op("aten::layer_norm", 3), _op("aten::linear", 5), _op("aten::gelu", 1), _op("aten::linear", 5),
           _op("aten::add", 2)]
    ops += attn + mlp + [_op("aten::adaptive_avg_pool2d", 1), _op("aten::flatten", 0.1), _op("aten::linear", 2)]
    tr = dict(hand_trace(), ops=ops, n_ops=len(ops))
    r = infer_architecture(tr, hand_latency_model())
    assert [b["type"] for b in r["blocks"]] == ["ds", "attn"]
    assert r["blocks"][1]["variant"] == variant
    assert r["config"]["arch"] == [["ds_r1_k3_s1_c16_noskip"]]  # the conv part (no add seen: noskip)


def test_load_calibration_normalises_durations():
    """The attacker's own reference ops measured twice as slow: the trace is read at half its times."""
    from edgevision.leak.infer import normalised_ops, speed_factor

    ref = {"bn:8192": 10.0, "relu:8192": 4.0}
    tr = dict(hand_trace(), calibration=[{"op": "bn", "n": 8192, "us": 20.0}, {"op": "relu", "n": 8192, "us": 8.0}])
    assert speed_factor(tr, ref) == pytest.approx(2.0)
    assert normalised_ops(tr, ref)[0]["us"] == pytest.approx(tr["ops"][0]["us"] / 2)
    assert speed_factor(hand_trace(), ref) == 1.0 and speed_factor(tr, None) == 1.0
    # the recovered architecture does not change when the whole machine is uniformly slower
    slow = dict(tr, ops=[dict(o, us=o["us"] * 2) for o in tr["ops"]])
    lm = hand_latency_model()
    lm.meta["calib_ref"] = ref
    got = [(b["type"], b["k"], b["c"]) for b in infer_architecture(slow, lm)["blocks"]]
    assert got == [("ds", 3, 16), ("ir", 5, 24), ("ir", 5, 24)]
