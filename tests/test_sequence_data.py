"""Sensor loaders on small fixtures written in the published layouts (UCI HAR, MotionSense, .ts),
the bundled BasicMotions, the static/dynamic mapping, NaN windows, bad folders."""

import numpy as np
import pytest

from edgevision.tasks.sequence import data as D

UCI_NAMES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")


def write_uci_har(root, n=(7, 5), window=128, nan_rows=(), seed=0):
    """UCI HAR's folder: activity_labels.txt, <split>/y_, subject_ and Inertial Signals/*.txt
    (space-padded scientific notation, as published)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "activity_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(UCI_NAMES, 1)))
    truth = {}
    for split, count in zip(("train", "test"), n):
        d = root / split
        (d / "Inertial Signals").mkdir(parents=True)
        y = (np.arange(count) % 6) + 1
        subj = np.arange(count) % 3 + (1 if split == "train" else 10)
        (d / f"y_{split}.txt").write_text("".join(f"{v}\n" for v in y))
        (d / f"subject_{split}.txt").write_text("".join(f"{v}\n" for v in subj))
        x = rng.normal(size=(count, 9, window)).astype(np.float32)
        if split == "train":
            for r in nan_rows:
                x[r, 4, 7] = np.nan
        for c, sig in enumerate(D.UCI_HAR_SIGNALS):
            lines = ["".join(f" {v: .7e}" for v in row) for row in x[:, c]]
            (d / "Inertial Signals" / f"{sig}_{split}.txt").write_text("\n".join(lines).replace("nan", "NaN") + "\n")
        truth[split] = (x, y - 1, subj)
    return truth


def test_uci_har_loader(tmp_path):
    truth = write_uci_har(tmp_path / "UCI HAR Dataset")
    d = D.load_sequence_data(str(tmp_path))  # the parent of the published folder works too
    assert d.name == "uci_har" and d.classes == tuple(c.lower() for c in UCI_NAMES)
    assert d.channels == D.UCI_HAR_SIGNALS and d.window == 128
    for split, s in (("train", d.train), ("test", d.test)):
        x, y, subj = truth[split]
        np.testing.assert_allclose(s.x, x, rtol=1e-6)
        assert s.x.shape == (len(y), 9, 128) and s.x.dtype == np.float32
        np.testing.assert_array_equal(s.y, y)
        np.testing.assert_array_equal(s.subjects, subj)
    assert [d.classes[i] for i in d.static_classes] == ["sitting", "standing", "laying"]


def test_uci_har_nan_windows_skipped_and_counted(tmp_path):
    truth = write_uci_har(tmp_path, nan_rows=(1, 4))
    d = D.load_uci_har(tmp_path)
    assert d.skipped_nan == 2 and len(d.train) == 5
    np.testing.assert_array_equal(d.train.y, np.delete(truth["train"][1], [1, 4]))


def test_uci_har_bad_layouts(tmp_path):
    write_uci_har(tmp_path / "short", window=100)
    with pytest.raises(D.SequenceDataError, match="rows of 100 values"):
        D.load_uci_har(tmp_path / "short")
    write_uci_har(tmp_path / "missing")
    (tmp_path / "missing" / "test" / "Inertial Signals" / "body_gyro_y_test.txt").unlink()
    with pytest.raises(D.SequenceDataError, match="missing file .*body_gyro_y_test.txt"):
        D.load_uci_har(tmp_path / "missing")
    write_uci_har(tmp_path / "labels")
    (tmp_path / "labels" / "train" / "y_train.txt").write_text("1\n2\n9\n1\n1\n1\n1\n")
    with pytest.raises(D.SequenceDataError, match=r"labels \[9\]"):
        D.load_uci_har(tmp_path / "labels")
    write_uci_har(tmp_path / "count")
    (tmp_path / "count" / "train" / "y_train.txt").write_text("1\n2\n")
    with pytest.raises(D.SequenceDataError, match="subject"):
        D.load_uci_har(tmp_path / "count")
    write_uci_har(tmp_path / "ragged")
    f = tmp_path / "ragged" / "train" / "Inertial Signals" / "total_acc_z_train.txt"
    f.write_text(f.read_text().replace("\n", " 1.0\n", 1))
    with pytest.raises(D.SequenceDataError, match="total_acc_z_train.txt"):
        D.load_uci_har(tmp_path / "ragged")


MS_HEADER = "," + ",".join(D.MOTIONSENSE_COLUMNS)


def write_motionsense(root, steps=300, subjects=(1, 2, 20, 21), trials=("dws_1", "sit_5", "jog_9", "std_6"),
                      nan_at=None, seed=0):
    """A_DeviceMotion_data/<activity>_<trial>/sub_<n>.csv with MotionSense's header (a leading
    unnamed index column, then the 12 columns)."""
    rng = np.random.default_rng(seed)
    base = root / "A_DeviceMotion_data"
    data = {}
    for t in trials:
        (base / t).mkdir(parents=True)
        for s in subjects:
            a = rng.normal(size=(steps, 12))
            if nan_at is not None and (t, s) == nan_at[:2]:
                a[nan_at[2], 3] = np.nan
            rows = [f"{i}," + ",".join("" if np.isnan(v) else repr(float(v)) for v in r) for i, r in enumerate(a)]
            (base / t / f"sub_{s}.csv").write_text(MS_HEADER + "\n" + "\n".join(rows) + "\n")
            data[(t, s)] = a
    return data


def test_motionsense_windows_and_subject_split(tmp_path):
    raw = write_motionsense(tmp_path)
    d = D.load_sequence_data(str(tmp_path))
    assert d.name == "motionsense" and d.channels == D.MOTIONSENSE_COLUMNS
    per_rec = (300 - 128) // 64 + 1  # windows of 128 every 64 steps: 0, 64, 128 -> 3
    assert len(d.train) == 4 * 2 * per_rec and len(d.test) == 4 * 2 * per_rec
    assert set(d.train.subjects) == {1, 2} and set(d.test.subjects) == {20, 21}  # split by subject
    # the first window of dws_1 / sub_1 is its first 128 rows, transposed to [C, T]
    i = np.flatnonzero((d.train.subjects == 1) & (d.train.y == d.classes.index("downstairs")))[0]
    np.testing.assert_allclose(d.train.x[i], raw[("dws_1", 1)][:128].T, rtol=1e-6)
    j = np.flatnonzero((d.train.subjects == 1) & (d.train.y == d.classes.index("downstairs")))[1]
    np.testing.assert_allclose(d.train.x[j], raw[("dws_1", 1)][64:192].T, rtol=1e-6)
    assert sorted(d.classes[k] for k in d.static_classes) == ["sitting", "standing"]


def test_motionsense_nan_windows_and_options(tmp_path):
    write_motionsense(tmp_path, nan_at=("sit_5", 2, 70))  # row 70 lies in windows 0 and 1
    d = D.load_motionsense(tmp_path)
    assert d.skipped_nan == 2
    d2 = D.load_motionsense(tmp_path, window=100, stride=100, test_subjects=(1,))
    assert d2.window == 100 and set(d2.test.subjects) == {1}
    with pytest.raises(D.SequenceDataError, match="empty split"):
        D.load_motionsense(tmp_path, test_subjects=(99,))
    with pytest.raises(ValueError, match="stride"):
        D.load_motionsense(tmp_path, stride=0)


def test_motionsense_bad_files(tmp_path):
    write_motionsense(tmp_path / "cols", subjects=(1, 20), trials=("wlk_7",))
    f = tmp_path / "cols" / "A_DeviceMotion_data" / "wlk_7" / "sub_1.csv"
    f.write_text(f.read_text().replace("gravity.z", "gravity_z"))
    with pytest.raises(D.SequenceDataError, match="missing MotionSense column"):
        D.load_motionsense(tmp_path / "cols")
    (tmp_path / "empty" / "A_DeviceMotion_data" / "wlk_7").mkdir(parents=True)
    with pytest.raises(D.SequenceDataError, match="no sub_<n>.csv"):
        D.load_motionsense(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    with pytest.raises(D.SequenceDataError, match="not the MotionSense folder"):
        D.load_motionsense(tmp_path / "other")


def write_ts(path, x, labels, classes):
    lines = ["#fixture", "@problemName Fixture", "@univariate false", f"@dimensions {x.shape[1]}",
             "@equalLength true", f"@seriesLength {x.shape[2]}", "@classLabel true " + " ".join(classes), "@data"]
    for s, lab in zip(x, labels):
        lines.append(":".join(",".join("?" if np.isnan(v) else repr(float(v)) for v in dim) for dim in s) + ":" + lab)
    path.write_text("\n".join(lines) + "\n")


def test_ts_reader_and_basicmotions_folder(tmp_path):
    rng = np.random.default_rng(1)
    classes = ("Standing", "Running", "Walking", "Badminton")
    x = rng.normal(size=(8, 6, 20))
    labels = [classes[i % 4] for i in range(8)]
    x[3, 2, 5] = np.nan
    write_ts(tmp_path / "BasicMotions_TRAIN.ts", x, labels, classes)
    write_ts(tmp_path / "BasicMotions_TEST.ts", x[:4], labels[:4], classes)
    got, labs, declared = D.read_ts(tmp_path / "BasicMotions_TRAIN.ts")
    np.testing.assert_allclose(got, x)
    assert labs == labels and declared == classes
    d = D.load_sequence_data(str(tmp_path))
    assert d.name == "basicmotions" and d.skipped_nan == 2 and len(d.train) == 7 and d.window == 20
    assert d.classes == tuple(c.lower() for c in classes) and d.static_classes == (0,)
    (tmp_path / "BasicMotions_TEST.ts").write_text((tmp_path / "BasicMotions_TRAIN.ts").read_text()
                                                   .replace(":Badminton", ":Swimming"))
    with pytest.raises(D.SequenceDataError, match="Swimming"):
        D.load_basicmotions(tmp_path)


def test_bundled_basicmotions():
    pytest.importorskip("sktime", reason="the bundled BasicMotions ships in the sktime wheel ([sequence] extra)")
    d = D.load_sequence_data("basicmotions")
    assert d.train.x.shape == (40, 6, 100) and d.test.x.shape == (40, 6, 100)
    assert d.classes == ("standing", "running", "walking", "badminton")
    assert np.bincount(d.train.y).tolist() == [10, 10, 10, 10] and d.skipped_nan == 0
    assert np.isfinite(d.train.x).all() and d.train.x.std() > 0.1


def test_static_dynamic_mapping_missing_class():
    assert D.static_class_indices(("a", "b", "c"), {"a": "dynamic", "b": "static", "c": "static"}) == (1, 2)
    with pytest.raises(D.SequenceDataError, match=r"\['swimming'\].*missing from the static/dynamic mapping"):
        D.static_class_indices(("walking", "swimming"), D.STATIC_DYNAMIC["basicmotions"], "basicmotions")
    with pytest.raises(D.SequenceDataError, match="'static' or 'dynamic'"):
        D.static_class_indices(("a",), {"a": "moving"})


def test_load_sequence_data_bad_paths(tmp_path):
    with pytest.raises(D.SequenceDataError, match="no such folder"):
        D.load_sequence_data(str(tmp_path / "nope"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(D.SequenceDataError, match="expected a folder"):
        D.load_sequence_data(str(f))
