"""Segmentation data: image + PNG label-mask folders (VOC/ADE20K layouts), ignore index 255.

Layouts found under DIR (image and mask paired by file stem):
- ``DIR/<split>/images/`` + ``DIR/<split>/masks/`` (what ``edgevision sample-data`` writes);
- ``DIR/images/<split>/`` + ``DIR/masks|annotations/<split>/`` (ADE20K: training/validation);
- VOC: ``DIR/JPEGImages/`` + ``DIR/SegmentationClass/`` with ``DIR/ImageSets/Segmentation/<split>.txt``.
Splits: train and val (also validation/valid/test, ADE20K's training/validation).

Classes: ``DIR/classes.txt`` (one name per line, index = label value) when present, else
``class_<i>`` up to the largest label seen in the training masks. Label 255 is "ignore".
Bad pairs are skipped and counted in the data report: a missing mask, a mask whose size differs
from its image, label values out of range, unreadable files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IGNORE = 255
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = {"train": ("train", "training"), "val": ("val", "validation", "valid", "test")}
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


@dataclass
class SegReport:
    split: str
    pairs: int = 0
    missing_mask: int = 0
    size_mismatch: int = 0
    labels_out_of_range: int = 0
    unreadable: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        bad = [f"{v} {k.replace('_', ' ')}" for k, v in self.as_dict().items() if k not in ("split", "pairs") and v]
        return f"{self.split}: {self.pairs} image/mask pairs" + (f" (skipped: {', '.join(bad)})" if bad else "")


def _images(d: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXT} if d.is_dir() else {}


def find_pairs(data_dir: str | Path, split: str) -> tuple[list[tuple[Path, Path | None]], Path] | None:
    """([(image, mask or None)], where) for 'train' or 'val', or None when the split is absent."""
    root = Path(data_dir)
    for name in SPLITS[split]:
        for img_dir, mask_dirs in ((root / name / "images", [root / name / "masks", root / name / "labels"]),
                                   (root / "images" / name, [root / "masks" / name, root / "annotations" / name])):
            if img_dir.is_dir():
                masks = next((m for m in mask_dirs if m.is_dir()), mask_dirs[0])
                mm = {p.stem: p for p in sorted(masks.glob("*.png"))} if masks.is_dir() else {}
                return [(p, mm.get(s)) for s, p in _images(img_dir).items()], img_dir
        lst = root / "ImageSets" / "Segmentation" / f"{name}.txt"
        if lst.is_file() and (root / "JPEGImages").is_dir():
            imgs = _images(root / "JPEGImages")
            stems = [s.strip() for s in lst.read_text().split() if s.strip()]
            pairs = [(imgs.get(s, root / "JPEGImages" / f"{s}.jpg"), root / "SegmentationClass" / f"{s}.png")
                     for s in stems]
            return [(i, m if m.is_file() else None) for i, m in pairs], lst
    return None


def read_classes(data_dir: str | Path) -> list[str] | None:
    f = Path(data_dir) / "classes.txt"
    if f.is_file():
        names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if len(names) < 2:
            raise ValueError(f"{f}: needs at least 2 class names (background and one more), one per line")
        return names
    if (Path(data_dir) / "SegmentationClass").is_dir():
        return list(VOC_CLASSES)
    return None


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as m:
        if m.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: mask mode {m.mode}; label masks are single-channel PNGs")
        return np.asarray(m)


def check_pairs(pairs, split: str, num_classes: int | None):
    """Keep the good (image, mask) pairs; count the rest. Returns (pairs, report, max label)."""
    rep, good, top = SegReport(split), [], 0
    for img, mask in pairs:
        if mask is None or not Path(mask).is_file():
            rep.missing_mask += 1
            continue
        try:
            with Image.open(img) as im:
                size = im.size
            m = _mask(mask)
        except (OSError, ValueError):
            rep.unreadable += 1
            continue
        if (m.shape[1], m.shape[0]) != size:
            rep.size_mismatch += 1
            continue
        vals = np.unique(m)
        vals = vals[vals != IGNORE]
        if num_classes is not None and vals.size and int(vals.max()) >= num_classes:
            rep.labels_out_of_range += 1
            continue
        top = max(top, int(vals.max()) if vals.size else 0)
        good.append((str(img), str(mask)))
    rep.pairs = len(good)
    return good, rep, top


class SegmentationDataset(torch.utils.data.Dataset):
    """(normalised image [3,S,S], label map int64 [S,S] with 255 = ignore).

    Training: random scale (0.5-2.0 of S), random crop S x S (padding: 0 image, 255 label),
    horizontal flip; seeded by (seed, epoch, index). Validation: both resized to S x S (label
    by nearest neighbour), so batches stack; metrics are at that size."""

    def __init__(self, pairs, size: int, mean, std, train: bool, hflip: float = 0.5,
                 scale=(0.5, 2.0), seed: int = 0):
        self.pairs, self.size, self.train, self.hflip, self.scale, self.seed = pairs, size, train, hflip, scale, seed
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        from edgevision.training.data import sample_seed

        img_p, mask_p = self.pairs[i]
        with Image.open(img_p) as im:
            img = im.convert("RGB")
        mask = Image.fromarray(_mask(Path(mask_p)).astype(np.uint8))
        s = self.size
        if self.train:
            rng = np.random.default_rng(sample_seed(self.seed, self.epoch, i))
            f = rng.uniform(*self.scale) * s / max(img.size)
            w, h = max(1, round(img.size[0] * f)), max(1, round(img.size[1] * f))
            img, mask = img.resize((w, h), Image.BILINEAR), mask.resize((w, h), Image.NEAREST)
            a, m = np.zeros((max(h, s), max(w, s), 3), np.uint8), np.full((max(h, s), max(w, s)), IGNORE, np.uint8)
            a[:h, :w], m[:h, :w] = np.asarray(img), np.asarray(mask)
            y, x = int(rng.integers(0, a.shape[0] - s + 1)), int(rng.integers(0, a.shape[1] - s + 1))
            a, m = a[y:y + s, x:x + s], m[y:y + s, x:x + s]
            if rng.random() < self.hflip:
                a, m = a[:, ::-1], m[:, ::-1]
        else:
            a = np.asarray(img.resize((s, s), Image.BILINEAR))
            m = np.asarray(mask.resize((s, s), Image.NEAREST))
        x = torch.from_numpy(np.array(a)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, torch.from_numpy(np.array(m)).long()
