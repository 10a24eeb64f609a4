"""Data: the bundled Fashion-MNIST sample, ImageFolder trees, robust scanning, loaders.

- The sample data set is Fashion-MNIST (Zalando, MIT licence; notice in ``edgevision/data``).
  A class-balanced subset (the first 200 training and first 100 test images of each class, in
  file order) is vendored as ``fashion_mnist_subset.npz``; when Debian's
  ``dataset-fashion-mnist`` is installed the full set is read instead. Because the subset is
  "first N per class", both sources give the same images for N <= the vendored counts.
- :func:`export_imagefolder` writes arrays as ``root/<split>/<class>/<n>.png``, so the demo
  trains through the same folder reader users' data goes through.
- :class:`ImageFolderDataset` scans a folder once: non-image files and images that fail to
  decode (truncated, random bytes) are skipped, counted and reported, never a crash.
  A file that breaks after the scan is replaced by the next good sample at load time.
- Augmentation is seeded per sample from (seed, epoch, index), so the images a step sees do
  not depend on the worker count or on where a resumed run restarts.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order (deterministic)."""
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
    np.savez_compressed(out, x_train=arrays["x_train"][tr], y_train=arrays["y_train"][tr],
                        x_test=arrays["x_test"][te], y_test=arrays["y_test"][te])
    return Path(out)


def export_imagefolder(images: np.ndarray, labels: np.ndarray, out_dir: str | Path,
                       class_names: list[str], split: str = "train") -> Path:
    """Write ``images`` (N,H,W[,C] uint8) as PNGs under ``out_dir/split/<class>/``."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,C); got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}); got {labels.min()}..{labels.max()}")
    root = Path(out_dir) / split
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    counters = [0] * len(class_names)
    for img, y in zip(images, labels):
        y = int(y)
        Image.fromarray(img).save(root / class_names[y] / f"{counters[y]:05d}.png")
        counters[y] += 1
    return root


def prepare_sample_dataset(out_dir: str | Path, train_per_class: int = 200, val_per_class: int = 100,
                           source: str = "auto") -> Path:
    """Write the Fashion-MNIST sample as an ImageFolder tree (train/ and val/); returns the root.

    Reuses an existing tree made with the same settings (a marker file records them).
    """
    out = Path(out_dir)
    marker = out / ".edgevision_sample"
    arrays, used = load_fashion_mnist(source)
    stamp = f"fashion-mnist first-per-class train={train_per_class} val={val_per_class}"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    tr = first_per_class(arrays["y_train"], train_per_class)
    te = first_per_class(arrays["y_test"], val_per_class)
    export_imagefolder(arrays["x_train"][tr], arrays["y_train"][tr], out, FASHION_MNIST_CLASSES, "train")
    export_imagefolder(arrays["x_test"][te], arrays["y_test"][te], out, FASHION_MNIST_CLASSES, "val")
    (out / "LICENSE-fashion-mnist.txt").write_text(
        (VENDORED_NPZ.parent / "LICENSE-fashion-mnist.txt").read_text()
        if (VENDORED_NPZ.parent / "LICENSE-fashion-mnist.txt").is_file() else "MIT, Zalando SE 2017\n")
    marker.write_text(stamp)
    return out


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
    if (data_dir / "train").is_dir():
        val = next((data_dir / v for v in VAL_DIR_NAMES if (data_dir / v).is_dir()), None)
        return data_dir / "train", val
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

    def _load(self, index: int) -> Image.Image:
        for k in range(len(self.samples)):  # fall back to the next good file, never crash
            path = self.samples[(index + k) % len(self.samples)][0]
            try:
                with Image.open(path) as im:
                    return im.convert("RGB")
            except Exception:
                self.load_failures.append(path)
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        raise RuntimeError("no readable image left in the data set")

    def __getitem__(self, index: int):
        img = self._load(index)
        target = self.samples[index][1]
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
