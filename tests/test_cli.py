"""The `edgevision` command as a user runs it (subprocess, real entry point)."""

import json
import subprocess
import sys

import pytest

import edgevision as ev


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "edgevision", *args], capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_list_json_has_every_model_with_counts(model_stats):
    rows = json.loads(cli("list", "--json").stdout)
    assert [r["name"] for r in rows] == ev.list_models()
    by_name = {r["name"]: r for r in rows}
    # counts come from the real models, and agree with the reference where it has the model
    assert by_name["emo_1m"]["params"] == model_stats["emo_1m"]["params"]
    assert by_name["mobilenetv3_large_100"]["macs"] == model_stats["timm_mobilenetv3_large_100"]["flops_torch"] // 2
    # MACs at each model's own input size (the one its published MACs refer to)
    assert by_name["emo_1m"]["input_size"] == [224, 224]
    assert by_name["tiny_moat_0"]["input_size"] == [256, 256]
    at_224 = {r["name"]: r for r in json.loads(cli("list", "tiny_moat_0", "--size", "224", "--json").stdout)}
    assert at_224["tiny_moat_0"]["input_size"] == [224, 224]
    assert at_224["tiny_moat_0"]["macs"] < by_name["tiny_moat_0"]["macs"]


def test_list_table_and_filter():
    out = cli("list", "emo*").stdout
    assert "emo_1m" in out and "emo_6m" in out and "edgevit" not in out
    assert "1.36M" in out  # emo_1m params, counted
    assert "efficientformer_l1" in cli("list", "--family", "efficientformer").stdout  # names never cut


def test_info_table_and_json():
    out = cli("info", "mobilenetv3_large_100").stdout
    assert "total" in out and "5,483,032" in out and "features_only" in out
    data = json.loads(cli("info", "emo_1m", "--size", "256x192", "--json").stdout)
    assert data["input_size"] == [256, 192]
    assert sum(r["params"] for r in data["stages"]) == data["total"]["params"]
    assert data["metadata"]["family"] == "emo"


def test_user_errors_are_one_line_without_traceback():
    proc = cli("info", "mobilenet_v3", check=False)
    assert proc.returncode == 2
    assert "unknown model 'mobilenet_v3'" in proc.stderr and "Did you mean" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("info", "emo_1m", "--size", "16", check=False)  # EMO needs >= 32 px
    assert proc.returncode == 2 and "at least" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("info", "mobilenetv2_100", "--size", "big", check=False)
    assert proc.returncode == 2 and "HxW" in proc.stderr


def test_version_and_help():
    assert cli("--version").stdout.startswith("edgevision ")
    out = cli("--help").stdout
    for command in ("list", "info"):
        assert command in out
