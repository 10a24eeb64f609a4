"""Sensor-window data sets in their published layouts -> arrays [N, C, T] + labels + subjects.

- UCI HAR (Anguita et al., 2013), the published folder: ``train/`` and ``test/``, each with
  ``Inertial Signals/<signal>_<split>.txt`` (one 128-step window per row, 9 signals:
  body_acc_x/y/z, body_gyro_x/y/z, total_acc_x/y/z), ``y_<split>.txt`` (labels 1..6) and
  ``subject_<split>.txt``; ``activity_labels.txt`` names the labels. Its own subject split.
- MotionSense (Malekzadeh et al., 2019): ``A_DeviceMotion_data/<activity>_<trial>/sub_<n>.csv``
  with attitude.roll/pitch/yaw, gravity.x/y/z, rotationRate.x/y/z, userAcceleration.x/y/z
  (50 Hz). We cut each recording into windows of ``window`` steps every ``stride`` steps
  (default 128 / 64: UCI HAR's 2.56 s windows with 50% overlap) and split by subject
  (default test subjects 20-24 of 24: no person is in both splits).
- UEA BasicMotions (a smartwatch's 3-axis accelerometer and gyroscope, 4 activities, 40 train /
  40 test windows of 100 steps at 10 Hz), the bundled offline default: read at run time from
  the ``.ts`` files that the sktime wheel ships (sktime is BSD-3-Clause; the data set is from the
  UEA & UCR archive, timeseriesclassification.com, which gives no licence beyond citing it) —
  ``pip install 'edgevision[sequence]'``; aeon's copy is used when sktime is absent.

A window with a NaN anywhere is skipped and counted (``SequenceData.skipped_nan``). Every data
set maps its classes to static (the body at rest) or dynamic activities, which FusionActNet's
experts are split by; a class missing from the mapping is one clear error.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# class name -> "static" | "dynamic", per data set (the names our loaders give the classes)
STATIC_DYNAMIC = {
    "uci_har": {"walking": "dynamic", "walking_upstairs": "dynamic", "walking_downstairs": "dynamic",
                "sitting": "static", "standing": "static", "laying": "static"},
    "motionsense": {"downstairs": "dynamic", "upstairs": "dynamic", "walking": "dynamic", "jogging": "dynamic",
                    "sitting": "static", "standing": "static"},
    "basicmotions": {"standing": "static", "walking": "dynamic", "running": "dynamic", "badminton": "dynamic"},
}

UCI_HAR_SIGNALS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z",
                   "total_acc_x", "total_acc_y", "total_acc_z")
UCI_HAR_WINDOW = 128

# MotionSense folder codes -> class names, in our class order
MOTIONSENSE_CODES = {"dws": "downstairs", "ups": "upstairs", "wlk": "walking", "jog": "jogging",
                     "sit": "sitting", "std": "standing"}
MOTIONSENSE_COLUMNS = ("attitude.roll", "attitude.pitch", "attitude.yaw", "gravity.x", "gravity.y", "gravity.z",
                       "rotationRate.x", "rotationRate.y", "rotationRate.z",
                       "userAcceleration.x", "userAcceleration.y", "userAcceleration.z")
MOTIONSENSE_WINDOW, MOTIONSENSE_STRIDE = 128, 64
MOTIONSENSE_TEST_SUBJECTS = (20, 21, 22, 23, 24)

BASICMOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
BASICMOTIONS_PACKAGES = ("sktime", "aeon")  # wheels that ship datasets/data/BasicMotions/*.ts


class SequenceDataError(ValueError):
    """A sensor data folder or file is not in the expected layout (one clear line)."""


@dataclass
class SequenceSplit:
    x: np.ndarray  # [N, C, T] float32
    y: np.ndarray  # [N] int64, indices into SequenceData.classes
    subjects: np.ndarray  # [N] int64 (-1: unknown)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class SequenceData:
    name: str  # key of STATIC_DYNAMIC
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    train: SequenceSplit
    test: SequenceSplit
    source: str = ""
    skipped_nan: int = 0  # windows dropped because they held a NaN
    notes: dict = field(default_factory=dict)

    @property
    def window(self) -> int:
        return int(self.train.x.shape[2])

    @property
    def static_classes(self) -> tuple[int, ...]:
        """Indices of the static classes under this data set's static/dynamic mapping."""
        return static_class_indices(self.classes, STATIC_DYNAMIC[self.name], self.name)


def static_class_indices(classes, mapping: dict, dataset: str = "the data") -> tuple[int, ...]:
    """Indices of the classes mapped to 'static'; every class must be in the mapping."""
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise SequenceDataError(f"class(es) {missing} of {dataset} are missing from the static/dynamic mapping "
                                f"(it knows {sorted(mapping)}); add each as 'static' or 'dynamic'")
    bad = {c: mapping[c] for c in classes if mapping[c] not in ("static", "dynamic")}
    if bad:
        raise SequenceDataError(f"static/dynamic mapping of {dataset}: values must be 'static' or 'dynamic'; got {bad}")
    return tuple(i for i, c in enumerate(classes) if mapping[c] == "static")


class WindowDataset(torch.utils.data.Dataset):
    """(window [C, T] float32 tensor, label int) pairs of one split."""

    def __init__(self, split: SequenceSplit):
        self.x = torch.from_numpy(np.ascontiguousarray(split.x, dtype=np.float32))
        self.y = torch.from_numpy(split.y.astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _drop_nan(x: np.ndarray, *arrays) -> tuple[int, tuple]:
    """Drop the windows (first axis) holding a NaN; returns (count dropped, filtered arrays)."""
    keep = ~np.isnan(x).reshape(len(x), -1).any(axis=1)
    return int((~keep).sum()), tuple(a[keep] for a in (x, *arrays))


# ------------------------------------------------------------------------------ UCI HAR
def _find_uci_root(root: Path) -> Path:
    for cand in (root, root / "UCI HAR Dataset"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise SequenceDataError(f"{root} is not the UCI HAR folder: expected train/ and test/ (with 'Inertial Signals/', "
                            f"y_train.txt, subject_train.txt) and activity_labels.txt")


def _read_matrix(path: Path, what: str, ncols: int | None = None) -> np.ndarray:
    if not path.is_file():
        raise SequenceDataError(f"missing file {path} ({what})")
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise SequenceDataError(f"{path}: not a whitespace-separated table of numbers with equal-length rows "
                                f"({what}): {str(e).splitlines()[0]}") from None
    if ncols is not None and a.shape[1] != ncols:
        raise SequenceDataError(f"{path}: rows of {a.shape[1]} values; {what} has {ncols}")
    return a


def _read_labels(path: Path, what: str) -> np.ndarray:
    a = _read_matrix(path, what, ncols=1)[:, 0]
    if np.isnan(a).any() or (a != np.round(a)).any():
        raise SequenceDataError(f"{path}: {what} must be whole numbers, one per line")
    return a.astype(np.int64)


def _read_activity_labels(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise SequenceDataError(f"missing file {path} (UCI HAR's activity names: '1 WALKING' per line)")
    ids, names = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SequenceDataError(f"{path}:{n}: expected '<id> <NAME>', got {line!r}")
        ids.append(int(parts[0]))
        names.append(parts[1].lower())
    if ids != list(range(1, len(ids) + 1)):
        raise SequenceDataError(f"{path}: activity ids must be 1..K in order; got {ids}")
    return tuple(names)


def load_uci_har(root, window: int | None = UCI_HAR_WINDOW) -> SequenceData:
    """The published UCI HAR folder (or its parent). Labels 1..K become 0..K-1."""
    root = _find_uci_root(Path(root))
    classes = _read_activity_labels(root / "activity_labels.txt")
    splits, skipped = {}, 0
    for split in ("train", "test"):
        d = root / split
        y = _read_labels(d / f"y_{split}.txt", f"UCI HAR {split} labels")
        subjects = _read_labels(d / f"subject_{split}.txt", f"UCI HAR {split} subjects")
        if len(subjects) != len(y):
            raise SequenceDataError(f"{d}: {len(y)} labels but {len(subjects)} subject ids")
        bad = sorted(set(y[(y < 1) | (y > len(classes))].tolist()))
        if bad:
            raise SequenceDataError(f"{d / f'y_{split}.txt'}: labels {bad} are not in activity_labels.txt (1..{len(classes)})")
        chans = []
        for sig in UCI_HAR_SIGNALS:
            a = _read_matrix(d / "Inertial Signals" / f"{sig}_{split}.txt", f"UCI HAR {sig} windows", window)
            if len(a) != len(y):
                raise SequenceDataError(f"{d / 'Inertial Signals' / f'{sig}_{split}.txt'}: {len(a)} windows but "
                                        f"y_{split}.txt has {len(y)} labels")
            if chans and a.shape[1] != chans[0].shape[1]:
                raise SequenceDataError(f"{d / 'Inertial Signals' / f'{sig}_{split}.txt'}: windows of {a.shape[1]} "
                                        f"steps; {UCI_HAR_SIGNALS[0]} has {chans[0].shape[1]}")
            chans.append(a)
        x = np.stack(chans, axis=1).astype(np.float32)
        n, (x, y, subjects) = _drop_nan(x, y - 1, subjects)
        skipped += n
        splits[split] = SequenceSplit(x, y, subjects)
    return SequenceData("uci_har", classes, UCI_HAR_SIGNALS, splits["train"], splits["test"],
                        source=str(root), skipped_nan=skipped)


# ------------------------------------------------------------------------------ MotionSense
def _find_motionsense_root(root: Path) -> Path:
    for cand in (root / "A_DeviceMotion_data", root / "A_DeviceMotion_data" / "A_DeviceMotion_data", root):
        if cand.is_dir() and any(_trial_dir(p) for p in cand.iterdir() if p.is_dir()):
            return cand
    raise SequenceDataError(f"{root} is not the MotionSense folder: expected A_DeviceMotion_data/<activity>_<trial>/"
                            f"sub_<n>.csv (activities {', '.join(MOTIONSENSE_CODES)})")


def _trial_dir(p: Path):
    m = re.fullmatch(r"([a-z]+)_(\d+)", p.name)
    return m if m and m.group(1) in MOTIONSENSE_CODES else None


def _read_motionsense_csv(path: Path) -> np.ndarray:
    """[steps, 12] float64 of MOTIONSENSE_COLUMNS; empty fields become NaN."""
    with open(path, newline="") as f:
        header = [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split(",")]
    missing = [c for c in MOTIONSENSE_COLUMNS if c not in header]
    if missing:
        raise SequenceDataError(f"{path}: missing MotionSense column(s) {missing}; the header is {header}")
    cols = [header.index(c) for c in MOTIONSENSE_COLUMNS]
    try:
        a = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, dtype=np.float64, ndmin=2)
    except ValueError:  # empty fields: genfromtxt reads them as NaN (slower, only then)
        try:
            a = np.genfromtxt(path, delimiter=",", skip_header=1, usecols=cols, dtype=np.float64,
                              invalid_raise=True, ndmin=2)
        except ValueError as e:
            raise SequenceDataError(f"{path}: not a CSV of numbers under its header: {str(e).splitlines()[0]}") from None
    return a


def window_recording(a: np.ndarray, window: int, stride: int) -> np.ndarray:
    """[steps, C] -> [n, C, window] windows every ``stride`` steps (the tail that does not
    fill a window is dropped)."""
    if len(a) < window:
        return np.empty((0, a.shape[1], window), dtype=a.dtype)
    starts = np.arange(0, len(a) - window + 1, stride)
    return np.stack([a[s:s + window].T for s in starts])


def load_motionsense(root, window: int = MOTIONSENSE_WINDOW, stride: int = MOTIONSENSE_STRIDE,
                     test_subjects=MOTIONSENSE_TEST_SUBJECTS) -> SequenceData:
    """MotionSense's A_DeviceMotion_data, windowed and split by subject."""
    for arg, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int; got {v!r}")
    root = _find_motionsense_root(Path(root))
    classes = tuple(MOTIONSENSE_CODES.values())
    xs, ys, subs, skipped, recordings = [], [], [], 0, 0
    for trial in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _trial_dir(trial)
        if m is None:
            continue
        label = classes.index(MOTIONSENSE_CODES[m.group(1)])
        for csv in sorted(trial.glob("sub_*.csv")):
            sm = re.fullmatch(r"sub_(\d+)\.csv", csv.name)
            if sm is None:
                raise SequenceDataError(f"{csv}: MotionSense files are named sub_<n>.csv")
            w = window_recording(_read_motionsense_csv(csv), window, stride).astype(np.float32)
            n, (w,) = _drop_nan(w)
            skipped += n
            recordings += 1
            xs.append(w)
            ys.append(np.full(len(w), label, dtype=np.int64))
            subs.append(np.full(len(w), int(sm.group(1)), dtype=np.int64))
    if not recordings:
        raise SequenceDataError(f"{root}: no sub_<n>.csv recordings in its <activity>_<trial> folders")
    x, y, s = np.concatenate(xs), np.concatenate(ys), np.concatenate(subs)
    if not len(x):
        raise SequenceDataError(f"{root}: no recording is {window} steps long; use a shorter --window")
    test = np.isin(s, np.asarray(tuple(test_subjects), dtype=np.int64))
    if not test.any() or test.all():
        raise SequenceDataError(f"{root}: the test subjects {tuple(test_subjects)} leave an empty split "
                                f"(subjects present: {sorted(set(s.tolist()))})")
    return SequenceData("motionsense", classes, MOTIONSENSE_COLUMNS,
                        SequenceSplit(x[~test], y[~test], s[~test]), SequenceSplit(x[test], y[test], s[test]),
                        source=str(root), skipped_nan=skipped,
                        notes=dict(window=window, stride=stride, test_subjects=tuple(test_subjects)))


# ------------------------------------------------------------------------------ UEA .ts / BasicMotions
def read_ts(path) -> tuple[np.ndarray, list[str], tuple[str, ...]]:
    """A UEA/UCR ``.ts`` file with equal-length series: (x [N, C, T] float64 with '?' as NaN,
    labels per series, the @classLabel names in their declared order)."""
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"missing file {path} (a UEA .ts file)")
    class_labels: tuple[str, ...] = ()
    rows, labels, in_data = [], [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            low = line.lower()
            if low.startswith("@classlabel"):
                parts = line.split()
                class_labels = tuple(parts[2:]) if len(parts) > 2 and parts[1].lower() == "true" else ()
            elif low.startswith("@data"):
                in_data = True
            continue
        *dims, label = line.split(":")
        try:
            series = [[np.nan if v.strip() == "?" else float(v) for v in d.split(",")] for d in dims]
        except ValueError:
            raise SequenceDataError(f"{path}:{n}: values must be numbers or '?'") from None
        if not dims or len({len(d) for d in series}) != 1:
            raise SequenceDataError(f"{path}:{n}: dimensions of unequal length (only equal-length .ts is read)")
        rows.append(series)
        labels.append(label.strip())
    if not rows:
        raise SequenceDataError(f"{path}: no @data rows")
    if len({(len(r), len(r[0])) for r in rows}) != 1:
        raise SequenceDataError(f"{path}: series differ in channel count or length")
    unknown = sorted(set(labels) - set(class_labels)) if class_labels else []
    if unknown:
        raise SequenceDataError(f"{path}: labels {unknown} are not declared in @classLabel {class_labels}")
    return np.asarray(rows, dtype=np.float64), labels, class_labels or tuple(sorted(set(labels)))


def basicmotions_dir() -> Path:
    """The BasicMotions folder inside an installed sktime (or aeon) wheel, found without importing it."""
    for pkg in BASICMOTIONS_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            d = Path(loc) / "datasets" / "data" / "BasicMotions"
            if (d / "BasicMotions_TRAIN.ts").is_file():
                return d
    raise SequenceDataError("the bundled BasicMotions data ships inside the sktime wheel, which is not installed: "
                            "pip install 'edgevision[sequence]' (or sktime), or pass a folder with "
                            "BasicMotions_TRAIN.ts and BasicMotions_TEST.ts")


def load_basicmotions(root=None) -> SequenceData:
    """UEA BasicMotions: the archive's own 40/40 train/test split; classes lower-cased."""
    d = Path(root) if root is not None else basicmotions_dir()
    splits, skipped, classes = {}, 0, None
    for split in ("TRAIN", "TEST"):
        x, labels, declared = read_ts(d / f"BasicMotions_{split}.ts")
        if x.shape[1] != len(BASICMOTIONS_CHANNELS):
            raise SequenceDataError(f"{d / f'BasicMotions_{split}.ts'}: {x.shape[1]} channels; BasicMotions has 6 "
                                    f"(accelerometer x/y/z, gyroscope x/y/z)")
        classes = classes or tuple(c.lower() for c in declared)
        y = np.asarray([classes.index(lab.lower()) for lab in labels], dtype=np.int64)
        n, (x, y) = _drop_nan(x.astype(np.float32), y)
        skipped += n
        splits[split] = SequenceSplit(x, y, np.full(len(y), -1, dtype=np.int64))
    if splits["TRAIN"].x.shape[2] != splits["TEST"].x.shape[2]:
        raise SequenceDataError(f"{d}: train and test windows differ in length")
    return SequenceData("basicmotions", classes, BASICMOTIONS_CHANNELS, splits["TRAIN"], splits["TEST"],
                        source=str(d), skipped_nan=skipped)


# ------------------------------------------------------------------------------ one entry point
DATASETS = ("basicmotions", "uci_har", "motionsense")


def load_sequence_data(data=None, **kwargs) -> SequenceData:
    """``None``/'basicmotions' (bundled), or a folder: UCI HAR, MotionSense or BasicMotions .ts,
    recognised by its layout. ``kwargs`` go to the loader (window, stride, test_subjects)."""
    if data is None or str(data).lower() in ("basicmotions", "bundled"):
        return load_basicmotions(**kwargs)
    path = Path(data)
    if not path.exists():
        raise SequenceDataError(f"--data {data}: no such folder; give 'basicmotions' (bundled) or a UCI HAR, "
                                f"MotionSense or BasicMotions (.ts) folder")
    if not path.is_dir():
        raise SequenceDataError(f"--data {data}: expected a folder (UCI HAR, MotionSense or BasicMotions .ts)")
    if (path / "BasicMotions_TRAIN.ts").is_file():
        return load_basicmotions(path, **kwargs)
    if any((c / "train").is_dir() and (c / "test").is_dir() for c in (path, path / "UCI HAR Dataset")):
        return load_uci_har(path, **kwargs)
    return load_motionsense(path, **kwargs)
