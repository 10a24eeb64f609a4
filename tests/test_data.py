"""Data: the vendored Fashion-MNIST subset, ImageFolder export, scanning of broken files, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgevision.training import data as D


def test_vendored_subset_is_class_balanced_and_matches_full_set():
    arrays, _ = D.load_fashion_mnist("vendored")
    assert arrays["x_train"].shape == (2000, 28, 28) and arrays["x_train"].dtype == np.uint8
    assert arrays["x_test"].shape == (1000, 28, 28)
    assert np.bincount(arrays["y_train"]).tolist() == [200] * 10
    assert np.bincount(arrays["y_test"]).tolist() == [100] * 10
    assert (D.VENDORED_NPZ.parent / "LICENSE-fashion-mnist.txt").read_text().count("MIT") >= 1
    if D.SYSTEM_FASHION_MNIST.is_dir():  # the subset is "first N per class" of the full set
        full, src = D.load_fashion_mnist("full")
        idx = D.first_per_class(full["y_train"], 200)
        assert np.array_equal(full["x_train"][idx], arrays["x_train"])


def test_export_imagefolder_roundtrip(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (6, 10, 12), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    root = D.export_imagefolder(imgs, labels, tmp_path, ["a", "b", "c"], "train")
    samples, classes, rep = D.scan_folder(root)
    assert classes == ["a", "b", "c"] and rep.num_images == 6
    first = np.asarray(Image.open(tmp_path / "train" / "a" / "00000.png"))
    assert np.array_equal(first, imgs[0])
    with pytest.raises(ValueError, match="labels must lie"):
        D.export_imagefolder(imgs, labels + 5, tmp_path, ["a", "b", "c"])


def _folder_with_broken_files(root):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 40, 10, 200)).save(root / c / f"{i}.png")
    buf = root / "cat" / "good.jpg"
    Image.new("RGB", (64, 64), (5, 100, 5)).save(buf, quality=90)
    raw = buf.read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (root / "dog" / "noise.png").write_bytes(np.random.default_rng(1).bytes(500))
    (root / "dog" / "notes.txt").write_text("not an image")


def test_corrupt_and_non_image_files_are_skipped_counted_and_reported(tmp_path):
    _folder_with_broken_files(tmp_path)
    samples, classes, rep = D.scan_folder(tmp_path)
    assert rep.num_images == 7 and len(samples) == 7
    assert sorted(p.split("/")[-1] for p in rep.skipped_corrupt) == ["noise.png", "truncated.jpg"]
    assert [p.split("/")[-1] for p in rep.skipped_not_image] == ["notes.txt"]
    text = rep.summary()
    assert "skipped 2 corrupt" in text and "skipped 1 non-image" in text
    assert rep.as_dict()["skipped_corrupt"] == 2


def test_file_broken_after_scan_is_replaced_not_fatal(tmp_path):
    _folder_with_broken_files(tmp_path)
    samples, classes, _ = D.scan_folder(tmp_path)
    tf = D.build_transforms(32, (0.5,) * 3, (0.5,) * 3, is_training=True)
    ds = D.ImageFolderDataset(samples, classes, tf)
    open(samples[0][0], "wb").close()  # truncate a file the scan accepted
    with pytest.warns(UserWarning, match="unreadable"):
        x, y = ds[0]
    assert x.shape == (3, 32, 32) and ds.load_failures == [samples[0][0]]
    # The stand-in is the next readable sample, with that sample's label (here: across a class
    # boundary, the last 'cat' image replaced by the first 'dog' image).
    last_cat = max(i for i, s in enumerate(samples) if s[1] == 0)
    open(samples[last_cat][0], "wb").close()
    with pytest.warns(UserWarning, match="unreadable"):
        _, y = ds[last_cat]
    assert y == samples[last_cat + 1][1] == 1


def test_augmentation_is_seeded_per_sample(tmp_path):
    _folder_with_broken_files(tmp_path)
    samples, classes, _ = D.scan_folder(tmp_path)
    tf = D.build_transforms(32, (0.5,) * 3, (0.5,) * 3, True, D.check_auto_augment("trivialaugment"))
    ds = D.ImageFolderDataset(samples, classes, tf, seed=3)
    before = torch.get_rng_state()
    a = ds[1][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    assert torch.equal(a, ds[1][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        D.find_splits(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="data folder is empty"):
        D.find_splits(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders"):
        D.scan_folder(tmp_path / "flat")
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / "0.png")
    (root / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no readable images: b"):
        D.scan_folder(root)
    with pytest.raises(ValueError, match="unknown --auto-augment"):
        D.check_auto_augment("bogus")


def test_split_is_deterministic_and_per_class():
    samples = [(f"{c}/{i}.png", c) for c in range(3) for i in range(10)]
    tr, va = D.split_samples(samples, 0.2, seed=0)
    assert (tr, va) == D.split_samples(samples, 0.2, seed=0)
    assert sorted(s[1] for s in va) == [0, 0, 1, 1, 2, 2] and len(tr) == 24
    assert not set(tr) & set(va)


def test_prepare_sample_dataset_writes_train_and_val(tmp_path):
    root = D.prepare_sample_dataset(tmp_path / "fm", train_per_class=3, val_per_class=2)
    train_root, val_root = D.find_splits(root)
    s_tr, classes, _ = D.scan_folder(train_root)
    s_va, _, _ = D.scan_folder(val_root, classes)
    assert classes == sorted(D.FASHION_MNIST_CLASSES) and len(s_tr) == 30 and len(s_va) == 20
    assert (root / "LICENSE-fashion-mnist.txt").is_file()


def test_header_scan_mode_still_never_crashes_on_load(tmp_path):
    _folder_with_broken_files(tmp_path)
    samples, classes, rep = D.scan_folder(tmp_path, mode="header", threads=1)
    assert "noise.png" in " ".join(rep.skipped_corrupt)  # random bytes fail even the header check
    ds = D.ImageFolderDataset(samples, classes, D.build_transforms(32, (0.5,) * 3, (0.5,) * 3, False))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = {tuple(ds[i][0].shape) for i in range(len(ds))}  # a truncated JPEG is replaced
    assert shapes == {(3, 32, 32)}
    with pytest.raises(ValueError, match="scan mode"):
        D.scan_folder(tmp_path, mode="fast")
