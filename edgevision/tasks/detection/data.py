"""COCO-format detection data (instances JSON + image folder), read with pycocotools.

Layouts found under DIR (first match per split):
``DIR/<split>/annotations.json`` + ``DIR/<split>/images/`` (what ``edgevision sample-data
--task detection`` writes), or COCO's own ``DIR/annotations/instances_<split>*.json`` +
``DIR/<split>*/`` (e.g. train2017/val2017). Splits: train and val (also validation/valid/test).

Category ids (any integers) map to contiguous labels 1..K in sorted id order (0 = background,
torchvision's convention); ``classes`` are the category names in that order. Bad annotations
never reach the model: boxes are clipped to the image, and zero-area boxes, unknown category
ids, crowd regions, missing image files and training images left without boxes are skipped and
counted in the data report; an empty or malformed annotation file stops the run with one line.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VAL_NAMES = ("val", "validation", "valid", "test")


@dataclass
class DetReport:
    """What the reader skipped or fixed, per split (JSON-able)."""

    split: str
    images: int = 0
    boxes: int = 0
    images_without_boxes: int = 0
    missing_image_files: int = 0
    boxes_clipped: int = 0
    boxes_zero_area: int = 0
    boxes_unknown_category: int = 0
    boxes_crowd: int = 0
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        fixes = [f"{v} {k.replace('_', ' ')}" for k, v in self.as_dict().items()
                 if k not in ("split", "images", "boxes", "notes") and v]
        return (f"{self.split}: {self.images} images, {self.boxes} boxes"
                + (f" (skipped/fixed: {', '.join(fixes)})" if fixes else ""))


def find_coco_split(data_dir: str | Path, split: str) -> tuple[Path, Path] | None:
    """(annotation JSON, image folder) of ``split`` ('train' or 'val') under DIR, or None."""
    root = Path(data_dir)
    names = ("train",) if split == "train" else VAL_NAMES
    for name in names:
        d = root / name
        for ann in (d / "annotations.json", d / "instances.json"):
            if ann.is_file():
                return ann, (d / "images" if (d / "images").is_dir() else d)
    ann_dir = root / "annotations"
    if ann_dir.is_dir():
        for name in names:
            for ann in sorted(ann_dir.glob(f"instances_{name}*.json")):
                stem = ann.stem[len("instances_"):]
                for img in (root / stem, root / "images" / stem, root / name, root / "images" / name):
                    if img.is_dir():
                        return ann, img
    return None


def load_coco(path: Path):
    """pycocotools COCO object; empty/malformed files -> one clear ValueError."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ValueError("detection data needs pycocotools: pip install pycocotools") from None
    try:
        text = Path(path).read_text()
        data = json.loads(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable COCO annotation file ({e})") from None
    if not isinstance(data, dict) or not data.get("images") or "categories" not in data:
        raise ValueError(f"{path}: empty or not COCO instances JSON (needs 'images', 'annotations' and "
                         "'categories' lists)")
    data.setdefault("annotations", [])
    try:
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed COCO annotations (missing field {e})") from None
    return coco


def read_split(ann: Path, img_dir: Path, split: str, category_ids: list[int] | None = None,
               keep_empty: bool = False):
    """Clean records [{file, image_id, width, height, boxes (xyxy float32), labels, areas}],
    category ids (sorted; label = index + 1), class names, and a :class:`DetReport`."""
    coco = load_coco(ann)
    cats = coco.loadCats(coco.getCatIds())
    if category_ids is None:
        category_ids = sorted(c["id"] for c in cats)
        if not category_ids:
            raise ValueError(f"{ann}: no categories; a detector needs at least one")
    names = {c["id"]: str(c.get("name", c["id"])) for c in cats}
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    rep = DetReport(split)
    records = []
    for img in coco.loadImgs(sorted(coco.getImgIds())):
        path = img_dir / img["file_name"]
        if not path.is_file():
            rep.missing_image_files += 1
            continue
        w, h = img.get("width"), img.get("height")
        if not w or not h:
            with Image.open(path) as im:
                w, h = im.size
        boxes, labels, areas = [], [], []
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            if a.get("iscrowd"):
                rep.boxes_crowd += 1
                continue
            if a.get("category_id") not in label_of:
                rep.boxes_unknown_category += 1
                continue
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                rep.boxes_zero_area += 1
                continue
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
            if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
                rep.boxes_clipped += 1
            if not (x2 - x1 >= 1e-3 and y2 - y1 >= 1e-3) or not np.isfinite([x1, y1, x2, y2]).all():
                rep.boxes_zero_area += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(label_of[a["category_id"]])
            areas.append(float(a.get("area") or (x2 - x1) * (y2 - y1)))
        if not boxes:
            rep.images_without_boxes += 1
            if not keep_empty:
                continue
        rep.images += 1
        rep.boxes += len(boxes)
        records.append({"file": str(path), "image_id": int(img["id"]), "width": int(w), "height": int(h),
                        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, np.int64), "areas": np.asarray(areas, np.float32)})
    return records, category_ids, [names[c] for c in category_ids], rep


class DetectionDataset(torch.utils.data.Dataset):
    """(image [3,H,W] float in [0,1], target {boxes xyxy, labels 1..K, image_id}); training adds a
    horizontal flip seeded by (seed, epoch, index). Resizing is the model's own transform."""

    def __init__(self, records: list[dict], hflip: float = 0.0, seed: int = 0):
        self.records, self.hflip, self.seed, self.epoch = records, hflip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from edgevision.training.data import sample_seed

        r = self.records[i]
        with Image.open(r["file"]) as im:
            arr = np.asarray(im.convert("RGB"))
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        boxes = torch.from_numpy(r["boxes"].copy())
        if img.shape[1:] != (r["height"], r["width"]):  # the JSON's size disagrees with the file
            sy, sx = img.shape[1] / r["height"], img.shape[2] / r["width"]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        if self.hflip > 0:
            rng = np.random.default_rng(sample_seed(self.seed, self.epoch, i))
            if rng.random() < self.hflip:
                img = img.flip(-1)
                w = img.shape[-1]
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return img, {"boxes": boxes, "labels": torch.from_numpy(r["labels"].copy()),
                     "image_id": r["image_id"]}


def collate(batch):
    """Lists, not stacked tensors: detection images differ in size (torchvision's convention)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def gt_coco_dict(records: list[dict], category_ids: list[int], classes: list[str]) -> dict:
    """COCO ground truth of the cleaned records (what the model was asked to find)."""
    anns, k = [], 1
    for r in records:
        for (x1, y1, x2, y2), lab, area in zip(r["boxes"].tolist(), r["labels"].tolist(), r["areas"].tolist()):
            anns.append({"id": k, "image_id": r["image_id"], "category_id": category_ids[lab - 1],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0})
            k += 1
    return {"images": [{"id": r["image_id"], "width": r["width"], "height": r["height"]} for r in records],
            "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(category_ids, classes)]}
