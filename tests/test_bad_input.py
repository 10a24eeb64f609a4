"""Bad input, by class, as a user meets it on the command line: one clear line, exit code 2,
nothing lost. (Images: tests/test_images.py; numbers: tests/test_cli_numbers.py; disk full
and atomic writes: tests/test_io.py; cache: tests/test_hub.py.)"""

import json
import os

import pytest
import torch

import edgevision as ev
from edgevision.cli import main
from edgevision.images import PHOTO_DIR

PHOTO = str(PHOTO_DIR / "chelsea.jpg")
SMALL = "mobilenetv3_small_075"


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _one_line(code, err, *needles):
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


# --- non-finite outputs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory):
    model = ev.create_model(SMALL)
    with torch.no_grad():
        model.get_classifier().weight.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    ev.save_model(model, path, model_name=SMALL)
    return path


def test_nan_weights_are_reported_not_printed(nan_weights, capsys):
    code, out, err = _run(["predict", SMALL, PHOTO, "--checkpoint", str(nan_weights), "--json"], capsys)
    _one_line(code, err, "non-finite")
    assert out == ""


def test_predict_json_is_valid_json(capsys, tmp_path):
    model = ev.create_model(SMALL)
    path = tmp_path / "w.safetensors"
    ev.save_model(model, path, model_name=SMALL)
    code, out, err = _run(["predict", SMALL, PHOTO, "--checkpoint", str(path), "--json", "--topk", "3"], capsys)
    assert code == 0, err
    rows = json.loads(out)  # strict JSON
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_to_json_never_writes_nan():
    from edgevision.jsonout import to_json

    text = to_json({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": "x"}


# --- checkpoints and paths -----------------------------------------------------------------
def test_directory_as_checkpoint(tmp_path, capsys):
    code, _, err = _run(["predict", SMALL, PHOTO, "--checkpoint", str(tmp_path)], capsys)
    _one_line(code, err, "is a directory")


def test_safetensors_content_in_a_pth_file_loads(tmp_path):
    model = ev.create_model(SMALL)
    path = tmp_path / "weights.pth"  # safetensors bytes under a .pth name
    ev.save_model(model, tmp_path / "w.safetensors", model_name=SMALL)
    os.replace(tmp_path / "w.safetensors", path)
    loaded = ev.create_model(SMALL, checkpoint=path)
    assert torch.equal(loaded.get_classifier().weight, model.get_classifier().weight)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_refused_pickle_names_the_global(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    code, out, err = _run(["predict", SMALL, PHOTO, "--checkpoint", str(path)], capsys)
    _one_line(code, err, "system", "refuses to unpickle")
    assert "weights_only=False" not in err and "should-not-run" not in out


def test_corrupt_pth_has_no_weights_only_advice(tmp_path, capsys):
    path = tmp_path / "broken.pth"
    torch.save(ev.create_model(SMALL).state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    code, _, err = _run(["predict", SMALL, PHOTO, "--checkpoint", str(path)], capsys)
    _one_line(code, err, "broken.pth")
    assert "weights_only" not in err.replace("weights_only=True", "")


def test_missing_image_and_directory_image(tmp_path, capsys):
    model = ev.create_model(SMALL)
    path = tmp_path / "w.safetensors"
    ev.save_model(model, path, model_name=SMALL)
    code, _, err = _run(["predict", SMALL, str(tmp_path / "nope.jpg"), "--checkpoint", str(path)], capsys)
    _one_line(code, err, "not found")
    code, _, err = _run(["predict", SMALL, str(tmp_path), "--checkpoint", str(path)], capsys)
    _one_line(code, err, "is a directory")


# --- outputs that exist as files -----------------------------------------------------------
def test_sample_data_onto_an_existing_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    for out in (target, target / "sub"):
        code, _, err = _run(["sample-data", str(out)], capsys)
        _one_line(code, err, "not a folder")
    assert target.read_text() == "keep me"


# --- wrong types in the Python API ---------------------------------------------------------
def test_api_type_errors_name_the_argument():
    from edgevision.inference import predict

    model = ev.create_model(SMALL)
    with pytest.raises(TypeError, match="topk"):
        predict(model, PHOTO, topk="5")
    with pytest.raises(TypeError, match="in_chans"):
        ev.create_model(SMALL, in_chans=3.0)
    with pytest.raises(TypeError, match="pretrained"):
        ev.create_model(SMALL, pretrained="yes")
