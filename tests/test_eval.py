"""`edgevision eval`: top-1/top-5, per-class accuracy, confusion-matrix PNG, JSON; clear errors."""

import json

import pytest

from edgevision.checkpoints import CheckpointError
from edgevision.cli import main
from edgevision.training import evaluate, prepare_sample_dataset, train

MODEL = "mobilenetv3_small_075"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = prepare_sample_dataset(root / "fm", train_per_class=2, val_per_class=3)
    s = train(dict(model=MODEL, data=str(data), output=str(root / "run"), img_size=32, batch_size=10,
                   epochs=1, workers=0, threads=1, progress=False))
    return data, s


def test_eval_cli_json_outputs(trained, tmp_path, capsys):
    data, s = trained
    rc = main(["eval", MODEL, "--data", str(data), "--checkpoint", s["weights"], "--workers", "0",
               "--output", str(tmp_path), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("top1", "top5", "per_class_acc", "confusion_matrix", "classes", "num_images", "confusion_png"):
        assert key in res, key
    assert res["num_images"] == 30 and len(res["per_class_acc"]) == 10
    assert sum(map(sum, res["confusion_matrix"])) == 30
    assert 0 <= res["top1"] <= res["top5"] <= 100
    assert res["img_size"] == 32  # read from the weights' metadata
    png = tmp_path / "confusion_matrix.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == res["top1"]


def test_eval_matches_training_validation(trained, tmp_path):
    data, s = trained
    res = evaluate(MODEL, str(data), s["weights"], str(tmp_path), workers=0)
    assert res["top1"] == pytest.approx(s["final_val_top1"])


def test_eval_bad_inputs(trained, tmp_path, capsys):
    data, s = trained
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(MODEL, str(data), str(tmp_path / "nope.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit"):  # weights of another model
        evaluate("mobilenetv2_035", str(data), s["weights"], str(tmp_path), workers=0)
    rc = main(["eval", MODEL, "--data", str(tmp_path / "missing"), "--checkpoint", s["weights"]])
    assert rc == 2 and "data folder not found" in capsys.readouterr().err


def test_eval_reads_a_training_checkpoint_with_its_settings(trained, tmp_path):
    data, s = trained
    from_weights = evaluate(MODEL, str(data), s["weights"], str(tmp_path / "a"), workers=0)
    from_ckpt = evaluate(MODEL, str(data), s["checkpoint"], str(tmp_path / "b"), workers=0)  # last.pth
    assert from_ckpt["img_size"] == 32  # the run's size, not the 224 default
    assert from_ckpt["confusion_matrix"] == from_weights["confusion_matrix"]
    with pytest.raises(CheckpointError, match="training checkpoint of model"):
        evaluate("mobilenetv2_035", str(data), s["checkpoint"], str(tmp_path / "c"), workers=0)
