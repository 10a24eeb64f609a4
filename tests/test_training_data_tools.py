"""Training inputs: full-vs-bundled Fashion-MNIST, the arrays -> ImageFolder tool, recipes as data,
and the clear one-line errors a user meets before any training starts."""

import gzip
import json
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edgevision.checkpoints import CheckpointError, save_model
from edgevision.cli import main
from edgevision.training import checkpointing as ckpt
from edgevision.training import data as D
from edgevision.training import make_config, train
from edgevision.training.engine import scaled_lr

MODEL = "mobilenetv3_small_075"


def _write_idx(path, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture
def fake_full_set(tmp_path, monkeypatch):
    """A stand-in for Debian's /usr/share/datasets/fashion-mnist: 4 train + 2 test images per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    arrays = {"y_train": np.repeat(np.arange(10), 4)[rng.permutation(40)],
              "y_test": np.repeat(np.arange(10), 2)[rng.permutation(20)]}
    arrays["x_train"] = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    arrays["x_test"] = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for key, name in [("x_train", "train-images-idx3"), ("y_train", "train-labels-idx1"),
                      ("x_test", "t10k-images-idx3"), ("y_test", "t10k-labels-idx1")]:
        _write_idx(root / f"{name}-ubyte.gz", arrays[key])
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", root)
    return arrays


def test_full_set_is_used_when_present(fake_full_set, tmp_path):
    arrays, source = D.load_fashion_mnist("auto")
    assert source == "full"
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(arrays[k], fake_full_set[k]), k
    # The sample tree is written from the full set: its first 'coat' image is the full set's.
    root = D.prepare_sample_dataset(tmp_path / "fm", train_per_class=2, val_per_class=1)
    assert D.sample_source(root) == "full"
    first_coat = int(np.flatnonzero(fake_full_set["y_train"] == 4)[0])
    assert np.array_equal(np.asarray(Image.open(root / "train" / "coat" / "00000.png")),
                          fake_full_set["x_train"][first_coat])
    # Every image of the source (the full 60k + 10k on a machine with the Debian package).
    root = D.prepare_sample_dataset(tmp_path / "all", None, None)
    assert len(list((root / "train").rglob("*.png"))) == 40 and len(list((root / "val").rglob("*.png"))) == 20
    # Without the files: the bundled subset, and asking for "full" says what to install.
    D.SYSTEM_FASHION_MNIST = tmp_path / "nowhere"
    assert D.load_fashion_mnist("auto")[1] == "vendored"
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        D.load_fashion_mnist("full")


def test_read_idx_rejects_other_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)  # float IDX, not unsigned bytes
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        D.read_idx(bad)


def test_sample_tree_reexport_leaves_no_stale_images_and_spares_foreign_folders(tmp_path):
    root = D.prepare_sample_dataset(tmp_path / "fm", train_per_class=3, val_per_class=2, source="vendored")
    assert len(list((root / "train").rglob("*.png"))) == 30
    D.prepare_sample_dataset(root, train_per_class=2, val_per_class=1, source="vendored")
    assert len(list((root / "train").rglob("*.png"))) == 20  # not 30: older images are gone
    assert len(list((root / "val").rglob("*.png"))) == 10
    mine = tmp_path / "mine"
    (mine / "train" / "cat").mkdir(parents=True)
    (mine / "train" / "cat" / "0.png").write_bytes(b"precious")
    with pytest.raises(ValueError, match="not written by edgevision"):
        D.prepare_sample_dataset(mine, 1, 1, source="vendored")
    assert (mine / "train" / "cat" / "0.png").read_bytes() == b"precious"
    with pytest.raises(ValueError, match="already holds files"):
        D.export_imagefolder(np.zeros((1, 4, 4), np.uint8), np.array([0]), mine, ["cat"], "train")


def test_sample_data_cli_turns_npz_arrays_into_an_imagefolder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 9, 7, 3), dtype=np.uint8)
    y = np.array([0, 1, 2] * 4)
    f = tmp_path / "arrays.npz"
    np.savez(f, x_train=x, y_train=y, class_names=np.array(["ant", "bee", "cow"]))
    rc = main(["sample-data", str(tmp_path / "tree"), "--npz", str(f), "--val-fraction", "0.25"])
    assert rc == 0, capsys.readouterr().err
    assert "train (9 images)" in capsys.readouterr().out
    train_root, val_root = D.find_splits(tmp_path / "tree")
    s_tr, classes, _ = D.scan_folder(train_root)
    s_va, _, _ = D.scan_folder(val_root, classes)
    assert classes == ["ant", "bee", "cow"] and len(s_tr) == 9 and len(s_va) == 3
    # Pixels survive the round trip: each written image is one of the inputs, with its label.
    by_bytes = {x[i].tobytes(): int(y[i]) for i in range(len(x))}
    for path, c in s_tr + s_va:
        assert by_bytes[np.asarray(Image.open(path)).tobytes()] == c
    # Bad arrays: one line, exit 2.
    np.savez(tmp_path / "bad.npz", images=x)
    assert main(["sample-data", str(tmp_path / "t2"), "--npz", str(tmp_path / "bad.npz")]) == 2
    assert "expected arrays x_train and y_train" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["sample-data", str(tmp_path / "t3"), "--npz", str(tmp_path / "junk.npz")]) == 2
    assert "cannot read as .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused by the option's type, before any work
        main(["sample-data", str(tmp_path / "t4"), "--train-per-class", "0"])
    assert e.value.code == 2
    assert "--train-per-class: 0 is out of range: must be an integer >= 1" in capsys.readouterr().err


def test_recipes_are_data_and_lr_scales_linearly_with_the_global_batch():
    emo = make_config("emo_1m", "emo_imagenet", batch_size=256)
    assert (emo.opt, emo.weight_decay, emo.epochs, emo.mixup, emo.cutmix) == ("adamw", 0.05, 300, 0.0, 0.0)
    assert scaled_lr(emo, world_size=1) == pytest.approx(6e-3 * 256 / 2048)
    assert scaled_lr(emo, world_size=8) == pytest.approx(6e-3)  # 8 x 256 = 2048: the paper's lr
    assert scaled_lr(make_config("emo_1m", "emo_imagenet", batch_size=256, lr=1e-3), 8) == 1e-3  # explicit wins
    assert make_config("emo_1m", "emo_imagenet", epochs=3).epochs == 3
    ft = make_config(MODEL, "finetune", checkpoint="w.safetensors", freeze_backbone=True, head_width_scale=0.5)
    assert (ft.checkpoint, ft.freeze_backbone, ft.head_width_scale) == ("w.safetensors", True, 0.5)


def test_cli_flags_reach_the_config(monkeypatch):
    """Every flag the issue names parses into the TrainConfig the engine receives."""
    import edgevision.training as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    argv = ["train", MODEL, "--data", "d", "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
            "--weight-decay", "0.1", "--warmup-epochs", "2", "--label-smoothing", "0.2", "--drop-path", "0.05",
            "--ema", "--amp", "--channels-last", "--seed", "7", "--clip-grad", "1.5",
            "--auto-augment", "trivialaugment", "--mixup", "0.8", "--cutmix", "1.0", "--sync-bn",
            "--checkpoint", "w.pth", "--freeze-backbone", "--freeze-bn", "--head-width-scale", "0.5", "--tensorboard"]
    assert main(argv) == 0
    c = seen["cfg"]
    assert (c.epochs, c.batch_size, c.lr, c.weight_decay, c.warmup_epochs) == (3, 16, 0.01, 0.1, 2)
    assert (c.label_smoothing, c.drop_path, c.ema, c.amp, c.channels_last, c.seed) == (0.2, 0.05, True, "auto", True, 7)
    assert (c.clip_grad, c.auto_augment, c.mixup, c.cutmix, c.sync_bn) == (1.5, "trivialaugment", 0.8, 1.0, True)
    assert (c.checkpoint, c.freeze_backbone, c.head_width_scale, c.tensorboard) == ("w.pth", True, 0.5, True)
    assert c.freeze_bn is True
    seen.clear()
    assert main(["train", "emo_1m", "--recipe", "emo_imagenet", "--data", "d", "--no-ema"]) == 0
    assert seen["cfg"].ema is False and seen["cfg"].clip_grad == 5.0  # the recipe's other values stay
    seen.clear()
    assert main(["train", "emo_1m", "--recipe", "emo_imagenet", "--data", "d"]) == 0
    assert seen["cfg"].ema is True


def test_tensorboard_requested_but_missing_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="pip install tensorboard"):
        train(dict(model=MODEL, data=str(tmp_path), output=str(out), tensorboard=True))
    assert not out.exists()
    assert main(["train", MODEL, "--data", str(tmp_path), "--output", str(out), "--tensorboard"]) == 2
    assert "needs the tensorboard package" in capsys.readouterr().err


def _tiny_tree(root, classes=("a", "b"), n=4):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (40 * i, 90 if c == "a" else 200, 30)).save(root / c / f"{i}.png")
    return root


def test_single_class_folder_is_a_clear_error(tmp_path, capsys):
    data = _tiny_tree(tmp_path / "one", classes=("only",))
    rc = main(["train", MODEL, "--data", str(data), "--output", str(tmp_path / "o"), "--workers", "0"])
    assert rc == 2 and "a classifier needs at least 2" in capsys.readouterr().err


def test_train_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys):
    import edgevision

    data = _tiny_tree(tmp_path / "d")
    other = tmp_path / "other.safetensors"
    save_model(edgevision.create_model("mobilenetv2_035", num_classes=10), other, "mobilenetv2_035")
    rc = main(["train", MODEL, "--data", str(data), "--output", str(tmp_path / "o"), "--workers", "0",
               "--checkpoint", str(other), "--epochs", "1", "--img-size", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit" in err and "Traceback" not in err
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    rc = main(["train", MODEL, "--data", str(data), "--output", str(tmp_path / "o2"), "--workers", "0",
               "--checkpoint", str(tmp_path / "junk.pth"), "--epochs", "1", "--img-size", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and "junk.pth" in err and err.count("\n") == 1 and "Traceback" not in err
    # --resume pointed at weights (not a training checkpoint) says what to use instead.
    rc = main(["train", MODEL, "--data", str(data), "--output", str(tmp_path / "o3"), "--workers", "0",
               "--resume", str(other), "--epochs", "1", "--img-size", "32", "--batch-size", "2"])
    assert rc == 2 and "--checkpoint instead of --resume" in capsys.readouterr().err


def test_resume_refuses_other_class_names():
    state = {"model_name": MODEL, "num_classes": 2, "classes": ["cat", "dog"]}
    ckpt.check_resumable(state, MODEL, 2, "last.pth", ["cat", "dog"])
    with pytest.raises(CheckpointError, match="classes differ.*'dog' vs 'fox'"):
        ckpt.check_resumable(state, MODEL, 2, "last.pth", ["cat", "fox"])
    with pytest.raises(CheckpointError, match="num_classes=2"):
        ckpt.check_resumable(state, MODEL, 3, "last.pth", ["a", "b", "c"])


def test_resume_warns_about_changed_options_and_cleans_crash_leftovers(tmp_path, capsys):
    data = _tiny_tree(tmp_path / "d", n=5)
    out = tmp_path / "run"
    cfg = dict(model=MODEL, data=str(data), output=str(out), img_size=32, batch_size=4, epochs=1, workers=0,
               threads=1, progress=False, val_fraction=0.2, lr=1e-2)
    train(cfg)
    leftover = out / ".last.pth.abc123.tmp"  # what a SIGKILL during a checkpoint write leaves
    leftover.write_bytes(b"half")
    capsys.readouterr()
    train(dict(cfg, epochs=2, weight_decay=0.01))
    log = capsys.readouterr().out
    assert "options differ" in log and "weight_decay 0.05 -> 0.01" in log
    assert "epochs" not in log.split("options differ")[1].split("\n")[0]  # raising --epochs is normal
    assert not leftover.exists()
    st = torch.load(out / "last.pth", weights_only=True)
    assert st["epoch"] == 2 and [h["epoch"] for h in st["history"]] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    # The schedule follows the new --epochs (timm's saved scheduler state would end it at min_lr).
    assert st["history"][1]["lr"] > 1e-3, st["history"]


def test_layout_mistakes_are_named(tmp_path, capsys):
    _tiny_tree(tmp_path / "d" / "val")  # val/ without train/
    with pytest.raises(ValueError, match="has a val/ folder but no train/"):
        D.find_splits(tmp_path / "d")
    data = _tiny_tree(tmp_path / "ok")
    (tmp_path / "file").write_text("x")
    assert main(["train", MODEL, "--data", str(data), "--output", str(tmp_path / "file")]) == 2
    assert "--output must be a folder" in capsys.readouterr().err


def test_freeze_backbone_without_pretrained_weights_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--freeze-backbone needs --checkpoint"):
        train(dict(model=MODEL, data=str(tmp_path), output=str(tmp_path / "o"), freeze_backbone=True))
