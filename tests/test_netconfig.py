"""Net configs (edgevision-net/1): JSON -> model, equal to the networks they describe."""

import json

import pytest
import timm
import torch

import edgevision as ev
from edgevision.models.netconfig import (
    NetConfigError,
    build_from_config,
    load_config,
    save_config,
)

MNV3_LARGE = [["ds_r1_k3_s1_e1_c16_nre"], ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
              ["ir_r3_k5_s2_e3_c40_se0.25_nre"],
              ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
              ["ir_r2_k3_s1_e6_c112_se0.25"], ["ir_r3_k5_s2_e6_c160_se0.25"], ["cn_r1_k1_s1_c960"]]
MNV2 = [["ds_r1_k3_s1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r3_k3_s2_e6_c32"], ["ir_r4_k3_s2_e6_c64"],
        ["ir_r3_k3_s1_e6_c96"], ["ir_r3_k3_s2_e6_c160"], ["ir_r1_k3_s1_e6_c320"]]
TINY_EMO = {"family": "emo", "name": "tiny_emo", "depths": [1, 1, 2, 1], "dims": [16, 24, 40, 64],
            "exp": [2, 2, 2, 2], "dim_head": [16, 8, 8, 16], "kernels": [3, 3, 5, 3],
            "attn": [False, False, True, True], "window": 4, "num_classes": 10}


@pytest.mark.parametrize("family,arch,extra,timm_name", [
    ("mobilenetv3", MNV3_LARGE, {}, "mobilenetv3_large_100"),
    ("efficientnet", MNV2, {"act": "relu6"}, "mobilenetv2_100"),
])
def test_timm_families_equal_timm_models(family, arch, extra, timm_name):
    """A config of a registry network is that network: same state-dict keys/shapes and outputs."""
    ours = build_from_config({"family": family, "arch": arch, **extra}).eval()
    ref = timm.create_model(timm_name).eval()
    ref.load_state_dict(ours.state_dict())  # strict: identical keys and shapes
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_emo_config_matches_registry_emo_1m():
    cfg = {"family": "emo", "depths": [2, 2, 8, 3], "dims": [32, 48, 80, 168], "exp": [2.0, 2.5, 3.0, 3.5],
           "dim_head": [16, 16, 20, 21]}
    ours, ref = build_from_config(cfg).eval(), ev.create_model("emo_1m").eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_emo_knobs_change_the_network():
    model = build_from_config(TINY_EMO)
    stage3 = model.stages[2]
    assert stage3[1].window == 4 and stage3[1].attn and stage3[1].conv_local.conv.kernel_size == (5, 5)
    off = build_from_config({**TINY_EMO, "attn": [False] * 4})
    assert not any(b.attn for s in off.stages for b in s)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_create_model_from_file_round_trip(tmp_path):
    path = save_config(TINY_EMO, tmp_path / "net.json")
    assert load_config(path) == json.loads(path.read_text())
    model = ev.create_model(str(path))
    assert model.model_name == "tiny_emo" and model.num_classes == 10
    assert model.pretrained_cfg["net_config"] == str(path)
    assert ev.create_model(str(path), num_classes=3)(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert "net_config" not in ev.list_models()  # the generic entry is not a zoo model


@pytest.mark.parametrize("cfg,match", [
    ({"family": "resnet"}, "unknown family"),
    ({"family": "mobilenetv3", "arch": [["zz_r1_k3_s1_c8"]]}, "unknown block type 'zz'"),
    ({"family": "mobilenetv3", "arch": [["ir_r1_k3_s1_e2"]]}, "lacks option 'c'"),
    ({"family": "mobilenetv3", "arch": [["ir_r1_k3_s1_e2_c8"]], "act": "nope"}, "unknown activation"),
    ({"family": "mobilenetv3", "arch": [["ir_r1_k3_s1_e2_c8"]], "depths": [1]}, "unknown field"),
    ({**TINY_EMO, "depths": [1, 1, 1]}, "4 entries"),
    ({**TINY_EMO, "dim_head": [16, 8, 7, 16]}, "not a multiple of dim_head"),
    ({"family": "emo", "format": "edgevision-net/9"}, "not supported"),
])
def test_bad_configs_name_the_field(cfg, match):
    with pytest.raises(NetConfigError, match=match):
        build_from_config(cfg)


def test_bad_files_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ev.create_model(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(NetConfigError, match="not a JSON net config"):
        ev.create_model(str(bad))
