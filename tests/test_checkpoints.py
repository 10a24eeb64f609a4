"""Checkpoint I/O: safe reading, wrappers, strict loads with a full diff, atomic saves."""

import pickle

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from edgevision.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    convert_to_model,
    load_checkpoint,
    load_state_dict_strict,
    read_metadata,
    read_state_dict,
    save_model,
)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_roundtrip_safetensors_with_metadata(tmp_path):
    m = tiny()
    path = tmp_path / "w.safetensors"
    save_model(m, path, model_name="tiny", extra={"epoch": 3})
    meta = read_metadata(path)
    assert meta["model_name"] == "tiny" and meta["format"] == "edgevision" and meta["epoch"] == "3"
    m2 = tiny()
    for p in m2.parameters():
        nn.init.zeros_(p)
    assert load_checkpoint(m2, path) == "edgevision"
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp")), "atomic save left a temp file behind"


@pytest.mark.parametrize("wrap", ["state_dict", "model", "state_dict_ema", None])
def test_pth_wrappers_and_module_prefix(tmp_path, wrap):
    m = tiny()
    sd = {f"module.{k}": v for k, v in m.state_dict().items()}
    obj = {wrap: sd, "epoch": 5} if wrap else sd
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    got = read_state_dict(path)
    assert set(got) == set(m.state_dict())


def test_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match=r"evil.pth: not a readable .* plain pickle"):
        read_state_dict(path)  # a plain pickle stream: the safe unpickler never runs it
    torch.save({"state_dict": Evil()}, path)  # torch's format: the global is named and refused
    with pytest.raises(CheckpointError, match=r"evil.pth: holds a non-tensor object \((builtins\.)?print\)"):
        read_state_dict(path)


def test_training_args_beside_weights_load(tmp_path):
    """DeiT-style checkpoints store argparse.Namespace args: harmless, allow-listed."""
    import argparse

    m = tiny()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": m.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 299}, path)
    assert set(read_state_dict(path)) == set(m.state_dict())


def test_random_bytes_are_not_called_unsafe(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match="noise.pth: not a readable PyTorch or safetensors") as err:
        read_state_dict(path)
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_raise_clearly(tmp_path, suffix):
    m = tiny()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(m.state_dict(), str(path))
    else:
        torch.save(m.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")


def test_mismatch_lists_missing_unexpected_and_misshaped_and_loads_nothing():
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = {k: torch.ones_like(v) for k, v in m.state_dict().items()}
    sd.pop("0.bias")  # missing
    sd["extra.weight"] = torch.zeros(1)  # unexpected
    sd["4.weight"] = torch.zeros(3, 4)  # mis-shaped
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(m, sd)
    e = err.value
    assert e.missing == ["0.bias"] and e.unexpected == ["extra.weight"]
    assert e.mismatched == [("4.weight", (3, 4), (2, 4))]
    text = str(e)
    assert "0.bias" in text and "extra.weight" in text and "(3, 4)" in text
    for k, v in m.state_dict().items():  # never a partial load
        assert torch.equal(v, before[k])


def test_format_detection_picks_the_converter_that_fits():
    m = tiny()
    foreign = {f"net.{k}": v for k, v in m.state_dict().items()}
    converters = {
        "broken": lambda sd: (_ for _ in ()).throw(KeyError("x")),
        "prefixed": lambda sd: {k[len("net."):]: v for k, v in sd.items()},
    }
    fmt, sd = convert_to_model(m, foreign, converters)
    assert fmt == "prefixed" and set(sd) == set(m.state_dict())
    with pytest.raises(CheckpointMismatchError, match="tried formats: edgevision, broken, prefixed"):
        convert_to_model(m, {"junk": torch.zeros(1)}, converters)
