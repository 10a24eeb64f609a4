"""Data: the bundled Fashion-MNIST sample, ImageFolder trees, robust scanning, loaders.

- The sample data set is Fashion-MNIST (Zalando, MIT licence; notice in ``edgevision/data``).
  A class-balanced subset (the first 200 training and first 100 test images of each class, in
  file order) is vendored as ``fashion_mnist_subset.npz``; when Debian's
  ``dataset-fashion-mnist`` is installed the full set is read instead. Because the subset is
  "first N per class", both sources give the same images for N <= the vendored counts.
- :func:`export_imagefolder` writes arrays as ``root/<split>/<class>/<n>.png`` (and
  :func:`export_npz` / ``edgevision sample-data --npz`` does it for a user's ``.npz``), so the
  demo trains through the same folder reader users' data goes through.
- :class:`ImageFolderDataset` scans a folder once: non-image files and images that fail to
  decode (truncated, random bytes) are skipped, counted and reported, never a crash.
  A file that breaks after the scan is replaced by the next good sample at load time.
- Augmentation is seeded per sample from (seed, epoch, index), so the images a step sees do
  not depend on the worker count or on where a resumed run restarts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgevision.images import load_rgb
from edgevision.io import atomic_write, atomic_write_bytes, atomic_write_text

FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
VENDORED_NPZ = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist_subset.npz"
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Folder names recognised as the held-out split of a train/val layout, in order of preference.
VAL_DIR_NAMES = ("val", "validation", "valid", "test")


# --------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format, optionally gzipped) as a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels: np.ndarray, per_class: int | None, num_classes: int = 10) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order (deterministic).

    ``per_class=None`` (or 0) keeps every sample.
    """
    if not per_class:
        return np.arange(len(labels))
    if per_class < 0:
        raise ValueError(f"per-class count must be >= 0; got {per_class}")
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than the {per_class} asked for")
        picked.append(idx[:per_class])
    return np.sort(np.concatenate(picked))


def load_fashion_mnist(source: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """Arrays ``x_train, y_train, x_test, y_test`` and a word for where they came from.

    source: "full" (Debian's dataset-fashion-mnist files), "vendored" (the bundled subset)
    or "auto" (full when installed, else vendored).
    """
    if source not in ("auto", "full", "vendored"):
        raise ValueError(f"source must be auto, full or vendored; got {source!r}")
    full_files = {k: SYSTEM_FASHION_MNIST / f"{f}-idx{d}-ubyte.gz" for k, f, d in
                  [("x_train", "train-images", 3), ("y_train", "train-labels", 1),
                   ("x_test", "t10k-images", 3), ("y_test", "t10k-labels", 1)]}
    have_full = all(p.is_file() for p in full_files.values())
    if source == "full" or (source == "auto" and have_full):
        if not have_full:
            raise FileNotFoundError(
                f"full Fashion-MNIST not found under {SYSTEM_FASHION_MNIST} "
                "(install Debian's dataset-fashion-mnist, or use source='vendored')")
        return {k: read_idx(p) for k, p in full_files.items()}, "full"
    if not VENDORED_NPZ.is_file():
        raise FileNotFoundError(f"bundled sample data missing: {VENDORED_NPZ}")
    with np.load(VENDORED_NPZ) as z:
        return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}, "vendored"


def build_vendored_subset(out: str | Path = VENDORED_NPZ, train_per_class: int = 200,
                          test_per_class: int = 100) -> Path:
    """(Re)create the bundled subset from the full set (maintainers only)."""
    arrays, _ = load_fashion_mnist("full")
    tr = first_per_class(arrays["y_train"], train_per_class)
    te = first_per_class(arrays["y_test"], test_per_class)
    parts = {"x_train": arrays["x_train"][tr], "y_train": arrays["y_train"][tr],
             "x_test": arrays["x_test"][te], "y_test": arrays["y_test"][te]}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # atomic_write's temporary file (a file object: no ".npz" appended)
            np.savez_compressed(f, **parts)

    atomic_write(out, write)
    return Path(out)


def export_imagefolder(images: np.ndarray, labels: np.ndarray, out_dir: str | Path,
                       class_names: list[str], split: str = "train", overwrite: bool = False) -> Path:
    """Write ``images`` (N,H,W[,C] uint8) as PNGs under ``out_dir/split/<class>/``.

    A split folder that already holds files is refused (ValueError) unless ``overwrite``,
    which removes it first: a re-export never leaves stale images of an older one behind.
    """
    import shutil

    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,C); got {images.dtype} {images.shape}")
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be channels-last with 1, 3 or 4 channels; got shape {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array; got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}); got {labels.min()}..{labels.max()}")
    bad = [c for c in class_names if not c or "/" in c or "\\" in c or c in (".", "..") or c.startswith(".")]
    if bad or len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique folder names; got {class_names}")
    root = Path(out_dir) / split
    if root.exists() and any(p.is_file() for p in root.rglob("*")):
        if not overwrite:
            raise ValueError(f"{root} already holds files; choose an empty folder")
        shutil.rmtree(root)
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    counters = [0] * len(class_names)
    for img, y in zip(images, labels):
        y = int(y)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        # No fsync per image (70,000 of them with the full set): the sample tree's marker file
        # (written last, fsynced) is what says the export is complete.
        atomic_write_bytes(root / class_names[y] / f"{counters[y]:05d}.png", buf.getbuffer(), fsync=False)
        counters[y] += 1
    return root


SAMPLE_MARKER = ".edgevision_sample"


def sample_source(root: str | Path) -> str | None:
    """'full' or 'vendored': which Fashion-MNIST a :func:`prepare_sample_dataset` tree came from."""
    import json

    try:
        return json.loads((Path(root) / SAMPLE_MARKER).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _check_output_folder(out: Path) -> None:
    """Refuse, before any work, an output that exists but is not a folder (or sits under a file)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{p} exists and is not a folder; choose another output folder")
            return


def prepare_sample_dataset(out_dir: str | Path, train_per_class: int | None = 200,
                           val_per_class: int | None = 100, source: str = "auto") -> Path:
    """Write the Fashion-MNIST sample as an ImageFolder tree (train/ and val/); returns the root.

    ``source="auto"`` reads the full set when Debian's dataset-fashion-mnist is installed,
    else the bundled subset; a per-class count of None (or 0) writes every image of the
    source (60,000 + 10,000 with the full set). An existing tree made with the same settings
    is reused (a marker file records them); one made with other settings is replaced, and a
    folder with train/ or val/ not written here is refused.
    """
    import json

    out = Path(out_dir)
    _check_output_folder(out)
    marker = out / SAMPLE_MARKER
    arrays, used = load_fashion_mnist(source)
    settings = {"dataset": "fashion-mnist", "train_per_class": train_per_class or "all",
                "val_per_class": val_per_class or "all", "source": used}
    old = None
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = {}  # an older marker format, or an export cut short: ours, redo it
    if old == settings:
        return out
    if old is None and any((out / s).exists() for s in ("train", "val")):
        raise ValueError(f"{out} already has train/ or val/ folders not written by edgevision; "
                         "choose another folder for the sample data")
    try:
        tr = first_per_class(arrays["y_train"], train_per_class)
        te = first_per_class(arrays["y_test"], val_per_class)
    except ValueError as e:
        hint = (" (the bundled subset has 200 train / 100 test images per class; more needs the full "
                "set: Debian's dataset-fashion-mnist)") if used == "vendored" else ""
        raise ValueError(f"{e}{hint}") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, "{}")  # "ours, incomplete": a rerun after a crash redoes the export
    export_imagefolder(arrays["x_train"][tr], arrays["y_train"][tr], out, FASHION_MNIST_CLASSES, "train",
                       overwrite=True)
    export_imagefolder(arrays["x_test"][te], arrays["y_test"][te], out, FASHION_MNIST_CLASSES, "val",
                       overwrite=True)
    lic = VENDORED_NPZ.parent / "LICENSE-fashion-mnist.txt"
    atomic_write_text(out / "LICENSE-fashion-mnist.txt",
                      lic.read_text() if lic.is_file() else "MIT, Zalando SE 2017\n")
    atomic_write_text(marker, json.dumps(settings))
    return out


MAX_CLASSES = 100_000  # one folder per class: a stray huge label must not create millions


def export_npz(npz: str | Path, out_dir: str | Path, class_names: list[str] | None = None,
               val_fraction: float = 0.0, seed: int = 0, overwrite: bool = False) -> Path:
    """Turn arrays in a ``.npz`` into an ImageFolder tree: the same tool the demo data goes through.

    Keys: ``x_train``/``y_train`` and optionally ``x_test``/``y_test`` (written as val/), or
    ``x``/``y``; optionally ``class_names``. Without a test split, ``val_fraction`` > 0 holds out
    that share of each class (seeded). Class names default to ``class_0``, ``class_1``, ...
    """
    npz = Path(npz)
    if not npz.is_file():
        raise FileNotFoundError(f"arrays file not found: {npz}")
    _check_output_folder(Path(out_dir))
    with open(npz, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK"):  # np.load would try it as a pickle and advise allow_pickle
        raise ValueError(f"{npz}: cannot read as .npz (not the zip archive numpy.savez writes)")
    try:
        z = dict(np.load(npz, allow_pickle=False))
    except Exception as e:  # truncated, object arrays...
        raise ValueError(f"{npz}: cannot read as .npz ({str(e).split('. ')[0]})") from None
    if "x_train" in z and "y_train" in z:
        x, y = z["x_train"], z["y_train"]
    elif "x" in z and "y" in z:
        x, y = z["x"], z["y"]
    else:
        raise ValueError(f"{npz}: expected arrays x_train and y_train (or x and y); found {sorted(z)}")
    xt, yt = z.get("x_test"), z.get("y_test")
    if class_names is None and "class_names" in z:
        class_names = [str(c) for c in z["class_names"].tolist()]
    if x.ndim and not len(x):
        raise ValueError(f"{npz}: the training arrays hold no images")
    labels_all = np.concatenate([np.ravel(y)] + ([np.ravel(yt)] if yt is not None else []))
    if labels_all.size and not np.issubdtype(labels_all.dtype, np.integer):
        raise ValueError(f"{npz}: labels must be integer class indices; got {labels_all.dtype}")
    if labels_all.size and labels_all.max() >= MAX_CLASSES:
        raise ValueError(f"{npz}: label {int(labels_all.max())} would make {int(labels_all.max()) + 1} class folders; "
                         f"labels must be class indices below {MAX_CLASSES}")
    n_cls = int(labels_all.max()) + 1 if labels_all.size else 0
    class_names = list(class_names) if class_names else [f"class_{i}" for i in range(n_cls)]
    y = np.ravel(y)
    if xt is None and val_fraction:
        samples = [(i, int(c)) for i, c in enumerate(y)]
        tr, va = split_samples(samples, val_fraction, seed)
        xt, yt = x[[i for i, _ in va]], y[[i for i, _ in va]]
        x, y = x[[i for i, _ in tr]], y[[i for i, _ in tr]]
    export_imagefolder(x, y, out_dir, class_names, "train", overwrite)
    if xt is not None:
        export_imagefolder(xt, np.ravel(yt), out_dir, class_names, "val", overwrite)
    return Path(out_dir)


# --------------------------------------------------------------------------- folder scanning
@dataclass
class ScanReport:
    """What a folder scan kept and skipped."""

    root: str
    num_images: int = 0
    skipped_corrupt: list[str] = field(default_factory=list)   # image suffix, failed to decode
    skipped_not_image: list[str] = field(default_factory=list)  # other files

    def summary(self) -> str:
        parts = [f"{self.num_images} images in {self.root}"]
        if self.skipped_corrupt:
            parts.append(f"skipped {len(self.skipped_corrupt)} corrupt/truncated "
                         f"(e.g. {Path(self.skipped_corrupt[0]).name})")
        if self.skipped_not_image:
            parts.append(f"skipped {len(self.skipped_not_image)} non-image files "
                         f"(e.g. {Path(self.skipped_not_image[0]).name})")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"root": self.root, "num_images": self.num_images,
                "skipped_corrupt": len(self.skipped_corrupt),
                "skipped_not_image": len(self.skipped_not_image),
                "skipped_files": self.skipped_corrupt + self.skipped_not_image}


# Above this many files, "auto" scanning checks headers only (a full decode of ImageNet takes
# long); files that still fail later are replaced at load time with a warning.
FULL_SCAN_LIMIT = 50_000


def _decodes(path: str) -> bool:
    """True when PIL decodes the whole file; JPEGs decode at reduced scale (draft) for speed."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return True
    except Exception:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return False


def _header_ok(path: str) -> bool:
    """True when PIL recognises the file and its structure checks pass (no full decode)."""
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def scan_folder(root: Path, classes: list[str] | None = None, mode: str = "auto", threads: int = 4):
    """(samples [(path, class_idx)], classes, ScanReport) of an ImageFolder root.

    mode: "full" decodes every image (catches truncated files), "header" checks headers only,
    "auto" is full up to FULL_SCAN_LIMIT files. Decoding runs in a thread pool (PIL releases
    the GIL while decoding).
    """
    from concurrent.futures import ThreadPoolExecutor

    if mode not in ("auto", "full", "header"):
        raise ValueError(f"scan mode must be auto, full or header; got {mode!r}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"data path is not a folder: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise ValueError(f"{root}: no class folders found; expected {root}/<class>/<image files>")
    if classes is None:
        classes = found
    elif set(found) != set(classes):
        raise ValueError(f"{root}: class folders {found} differ from the training classes {classes}")
    report = ScanReport(str(root))
    candidates = []
    for ci, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                candidates.append((str(p), ci))
            else:
                report.skipped_not_image.append(str(p))
    full = mode == "full" or (mode == "auto" and len(candidates) <= FULL_SCAN_LIMIT)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        ok = list(pool.map(_decodes if full else _header_ok, [c[0] for c in candidates], chunksize=64))
    samples = [c for c, good in zip(candidates, ok) if good]
    report.skipped_corrupt = [c[0] for c, good in zip(candidates, ok) if not good]
    counts = np.bincount([c[1] for c in samples], minlength=len(classes))
    empty = [name for name, n in zip(classes, counts) if n == 0]
    if empty:
        raise ValueError(f"{root}: class folder(s) with no readable images: {', '.join(empty)}")
    report.num_images = len(samples)
    return samples, classes, report


def find_splits(data_dir: str | Path) -> tuple[Path, Path | None]:
    """(train root, val root or None) of a data folder: ``train/`` + ``val/`` or one folder."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if not data_dir.is_dir():
        raise NotADirectoryError(f"data path is not a folder: {data_dir}")
    if not any(data_dir.iterdir()):
        raise ValueError(f"data folder is empty: {data_dir}")
    val = next((data_dir / v for v in VAL_DIR_NAMES if (data_dir / v).is_dir()), None)
    if (data_dir / "train").is_dir():
        return data_dir / "train", val
    if val is not None:
        raise ValueError(f"{data_dir} has a {val.name}/ folder but no train/; expected DIR/train/<class>/... "
                         f"beside DIR/{val.name}/<class>/..., or DIR/<class>/... alone")
    return data_dir, None


def split_samples(samples, val_fraction: float, seed: int = 0):
    """Deterministic per-class split of one folder's samples into (train, val)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, val = [], []
    for c in sorted(by_class):
        items = by_class[c]
        order = np.random.default_rng(seed + c).permutation(len(items))
        n_val = max(1, int(round(len(items) * val_fraction))) if len(items) > 1 else 0
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return train, val


# --------------------------------------------------------------------------- dataset
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, stable across runs and processes."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class ImageFolderDataset(torch.utils.data.Dataset):
    """(image tensor, class index) over scanned samples, RGB, with per-sample seeded transforms."""

    def __init__(self, samples, classes, transform=None, seed: int = 0):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.load_failures: list[str] = []  # files that broke after the scan (this process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # read by (non-persistent) workers when an epoch's iterator starts

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Image.Image, int]:
        """(image, its class) of sample ``index``, or of the next readable one (never a crash)."""
        for k in range(len(self.samples)):
            path, target = self.samples[(index + k) % len(self.samples)]
            try:
                return load_rgb(path), target  # any PIL mode scaled correctly, EXIF applied
            except Exception:
                self.load_failures.append(path)
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        raise RuntimeError("no readable image left in the data set")

    def __getitem__(self, index: int):
        img, target = self._load(index)  # a stand-in image comes with its own label
        if self.transform is None:
            return img, target
        # Seed python/numpy/torch RNGs (timm's augmentations use all three) for this sample
        # only, then put the caller's streams back.
        py_state, np_state = random.getstate(), np.random.get_state()
        s = sample_seed(self.seed, self.epoch, index)
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            x = self.transform(img)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return x, target


def build_transforms(img_size: int, mean, std, is_training: bool, auto_augment: str | None = None,
                     crop_scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5,
                     color_jitter: float = 0.4, crop_pct: float = 1.0, interpolation: str = "bilinear"):
    """timm's transforms: RandomResizedCrop + flip (+ RandAugment/TrivialAugment) for training."""
    from timm.data import create_transform

    if is_training:
        return create_transform(img_size, is_training=True, scale=tuple(crop_scale), hflip=hflip,
                                color_jitter=color_jitter, auto_augment=auto_augment,
                                interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    return create_transform(img_size, is_training=False, crop_pct=crop_pct,
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std))


# TrivialAugment (Muller & Hutter 2021): one op per image, magnitude uniform in [0, max], always
# applied; expressed through timm's RandAugment options (n1, mstd>100 = uniform, p1).
TRIVIAL_AUGMENT = "rand-n1-m10-mstd101-p1"


def check_auto_augment(name: str | None) -> str | None:
    """timm's policy string: 'rand-m9-mstd0.5' (RandAugment), 'trivialaugment', 'augmix-...'."""
    if name in (None, "", "none"):
        return None
    if name.lower() in ("trivialaugment", "trivial", "ta"):
        return TRIVIAL_AUGMENT
    if not name.startswith(("rand", "augmix", "original", "v0", "3a")):
        raise ValueError(f"unknown --auto-augment {name!r}; use e.g. rand-m9-mstd0.5 or trivialaugment")
    return name
