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


# --- found by a hostile pass over every command and the Python API ------------------------
def _run_any(args, capsys):
    """main(args) whether argparse refuses (SystemExit) or the command does (return code)."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


@pytest.mark.parametrize("args, needle", [
    (["info", SMALL, "--size", "1000000000"], "[1, 8192]"),  # was a RuntimeError traceback
    (["info", SMALL, "--size", "12x"], "HxW"),
    (["info", SMALL, "--size", "x12"], "HxW"),
    (["info", SMALL, "--size", "0x224"], "[1, 8192]"),
    (["bench", SMALL, "--batch", "100000"], "[1, 1024]"),  # was an endless run
    (["bench", SMALL, "--batch", "1,,2"], "--batch"),
    (["bench", SMALL, "--batch", ""], "--batch"),
    (["train", SMALL, "--data", "d", "--crop-scale", "1,0"], "0 < LO <= HI <= 1"),  # ran inverted
    (["train", SMALL, "--data", "d", "--crop-scale", "0,nan"], "--crop-scale"),
    (["demo", "--skip", "bogus"], "unknown step 'bogus'"),  # was silently ignored
    (["sample-data", "never-written", "--classes", "a,b"], "--classes applies to --npz only"),
    (["sample-data", "never-written", "--val-fraction", "0.5"], "--val-fraction applies to --npz only"),
])
def test_cli_refuses_in_one_line(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_any(args, capsys)
    _one_line(code, err, needle)
    assert "Traceback" not in err and not (tmp_path / "never-written").exists()


def _text_actions():
    import argparse

    from edgevision.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._StoreAction) and a.choices is None and a.default != "" \
                    and getattr(a.type, "__name__", None) in (None, "text"):
                yield cmd, a


def test_every_text_option_refuses_an_empty_string():
    from edgevision.cli._args import nonempty

    actions = list(_text_actions())
    assert len(actions) > 30
    bare = [f"{cmd} {a.option_strings[0] if a.option_strings else a.dest}" for cmd, a in actions
            if a.type is not nonempty]
    assert not bare, f"text options that would take '' as '.' or the default: {bare}"


@pytest.mark.parametrize("args", [
    ["sample-data", ""],  # wrote 3,000 images into the current folder
    ["demo", "--output", ""],  # wrote the demo into the current folder
    ["export", SMALL, "--output", ""],  # exported to the default name
    ["fetch", "emo_1m", "--url", ""],  # fetched the registered weights instead
    ["fetch", "emo_1m", "--cache", ""],  # used the default cache instead
    ["predict", SMALL, "", "--checkpoint", "w.pth"],  # ". is a directory"
    ["predict", SMALL, PHOTO, "--checkpoint", ""],
    ["train", SMALL, "--data", "d", "--amp", ""],  # ran without AMP
])
def test_empty_strings_are_refused_and_nothing_is_written(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_any(args, capsys)
    _one_line(code, err, "must not be empty")
    assert list(tmp_path.iterdir()) == []


def test_export_does_not_overwrite_other_files(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    code, _, err = _run_any(["export", SMALL, "--format", "torchscript", "--size", "32", "--output", str(notes)],
                            capsys)
    _one_line(code, err, "not a .pt file", "refusing to overwrite")
    weights = tmp_path / "w.safetensors"
    ev.save_model(ev.create_model(SMALL), weights, model_name=SMALL)
    before = weights.read_bytes()
    code, _, err = _run_any(["export", SMALL, "--checkpoint", str(weights), "--output", str(weights)], capsys)
    _one_line(code, err, "is the --checkpoint")
    assert notes.read_text() == "keep me" and weights.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "w.safetensors"]


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta", "123"])
def test_unknown_device_is_one_line(device, tmp_path, capsys):
    from PIL import Image

    from edgevision.training.distributed import pick_device

    with pytest.raises(ValueError, match="--device"):
        pick_device(device)
    for c in ("a", "b"):  # eval reaches the device after scanning the data
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / c / "0.png")
    code, _, err = _run_any(["eval", SMALL, "--data", str(tmp_path / "data"), "--checkpoint",
                             str(tmp_path / "w.safetensors"), "--device", device], capsys)
    _one_line(code, err, "--device")  # was a RuntimeError traceback


def test_npz_without_images_or_with_a_huge_label(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "empty.npz", x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64))
    np.savez(tmp_path / "huge.npz", x_train=np.zeros((2, 8, 8), np.uint8), y_train=np.array([0, 10**9]))
    (tmp_path / "j.npz").write_text('{"x_train": []}')
    for name, needle in [("empty", "no images"),  # was "wrote ... as ImageFolder:" with exit 0
                         ("huge", "class indices below"),  # was killed for memory (10^9 class names)
                         ("j", "cannot read as .npz")]:  # was numpy's advice to allow pickles
        code, _, err = _run_any(["sample-data", str(tmp_path / name), "--npz", str(tmp_path / f"{name}.npz")],
                                capsys)
        _one_line(code, err, needle)
        assert "allow_pickle" not in err and not (tmp_path / name).exists()


@pytest.mark.parametrize("content, needle", [
    (b'{"weights": [1, 2]}', "a JSON file"),
    (b"<!DOCTYPE html><html>Not Found</html>", "an HTML page"),
    (None, "NumPy .npz archive"),
    (b"PK\x05\x06" + b"\0" * 18, "zip archive that is not a PyTorch checkpoint"),
])
def test_checkpoint_that_is_another_kind_of_file_is_named(content, needle, tmp_path):
    import numpy as np

    from edgevision.checkpoints import CheckpointError, read_state_dict

    path = tmp_path / "w.pth"
    if content is None:
        with open(path, "wb") as f:
            np.savez(f, a=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        read_state_dict(path)


def test_truncated_checkpoint_message_is_torchs_first_sentence(tmp_path):
    from edgevision.checkpoints import CheckpointError, read_state_dict

    path = tmp_path / "t.pth"
    torch.save(ev.create_model(SMALL).state_dict(), path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    assert "central directory" in str(e.value) and "internal miniz error" not in str(e.value)


# --- the Python API: wrong types, dtypes, devices, indices -----------------------------------
@pytest.fixture(scope="module", params=[SMALL, "emo_1m"])  # a timm-built network and one of ours
def api_model(request):
    return ev.create_model(request.param).eval()


@pytest.mark.parametrize("x, err, needle", [
    ([1, 2, 3], TypeError, "torch.Tensor"),  # AttributeError 'list' has no 'dim'
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),  # conv RuntimeError
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "floating-point"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), TypeError, "float32 weights"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16), TypeError, "float32 weights"),
    (torch.zeros(1, 3, 64, 64, device="meta"), ValueError, "on meta"),
])
def test_model_input_type_dtype_device(api_model, x, err, needle):
    with pytest.raises(err, match=needle):
        api_model(x)
    with pytest.raises(err, match=needle):
        api_model.forward_intermediates(x)


def test_model_runs_mixed_precision_under_autocast(api_model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = api_model(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out.shape == (1, 1000) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("kwargs, err, needle", [
    (dict(indices=99), ValueError, "indices"),  # timm's AssertionError before
    (dict(indices=[0, 99]), ValueError, "indices"),
    (dict(indices="a"), TypeError, "indices"),
    (dict(output_fmt="NHWC"), ValueError, "output_fmt"),
])
def test_forward_intermediates_arguments(api_model, kwargs, err, needle):
    with pytest.raises(err, match=needle):
        api_model.forward_intermediates(torch.zeros(1, 3, 64, 64), **kwargs)


def test_reset_classifier_refuses_negative_classes(api_model):
    import copy

    model = copy.deepcopy(api_model)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)  # silently made an Identity head with num_classes=-1
    with pytest.raises(TypeError, match="num_classes"):
        model.reset_classifier("10")
    model.reset_classifier(7)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_create_model_argument_errors():
    with pytest.raises(TypeError, match="model name"):
        ev.create_model(None)
    with pytest.raises(ValueError, match="drop_rate"):
        ev.create_model(SMALL, drop_rate=2.0)  # accepted, failed at the first training step
    with pytest.raises(ValueError, match="checkpoint is an empty string"):
        ev.create_model(SMALL, checkpoint="")  # ". is a directory"


def test_predict_arguments_and_a_float64_model():
    import numpy as np

    from edgevision.images import load_rgb
    from edgevision.inference import predict

    model = ev.create_model(SMALL).eval()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        predict("emo_1m", PHOTO)  # AttributeError before
    with pytest.raises(TypeError, match="image must be"):
        predict(model, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="image is an empty string"):
        load_rgb("")
    ref = predict(model, PHOTO, topk=3)
    got = predict(model.double(), PHOTO, topk=3)  # the input follows the model's dtype
    assert [i for i, _, _ in got] == [i for i, _, _ in ref]
    assert got[0][2] == pytest.approx(ref[0][2], rel=1e-4)


def test_export_api_checks_arguments_before_exporting(tmp_path):
    from edgevision.export import export_onnx, export_torchscript

    model = ev.create_model(SMALL)
    keep = tmp_path / "m.onnx"
    keep.write_text("keep")
    for kwargs, err, needle in [
        (dict(model="emo_1m"), TypeError, "model must be"),
        (dict(input_size=(32, 32)), TypeError, "input_size"),  # failed in both exporters first
        (dict(input_size=(1, 3, -1, 32)), ValueError, "input_size"),
        (dict(dynamic_size="no"), TypeError, "dynamic_size"),  # a truthy string made it dynamic
        (dict(path=""), ValueError, "path is an empty string"),
    ]:
        args = dict(model=model, path=keep, input_size=(1, 3, 32, 32)) | kwargs
        with pytest.raises(err, match=needle):
            export_onnx(**args)
        if "dynamic_size" not in kwargs:
            args["path"] = tmp_path / "m.pt" if args["path"] == keep else args["path"]
            with pytest.raises(err, match=needle):
                export_torchscript(**args)
    assert keep.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_fetch_weights_argument_errors(tmp_path):
    from edgevision.hub import fetch_weights

    for kwargs, err, needle in [
        (dict(url=""), ValueError, "url"),  # fell back to the registered URL
        (dict(url=123), TypeError, "url"),
        (dict(cache=""), ValueError, "cache"),  # fell back to the default cache
        (dict(force="no"), TypeError, "force"),  # a truthy string forced a download
    ]:
        with pytest.raises(err, match=needle):
            fetch_weights("emo_1m", **({"cache": tmp_path} | kwargs))
    assert list(tmp_path.iterdir()) == []
