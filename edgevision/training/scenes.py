"""Deterministic offline scenes for detection and segmentation (``edgevision sample-data --task``).

Each scene is a crop of a bundled photo (``edgevision.images.sample_photos``; plus
scikit-image's textures when it is installed) with 1-3 real Fashion-MNIST items pasted at
random positions and scales, each tinted with a random colour. The item's non-background pixels
(value > 24 of 255) are its mask; later items occlude earlier ones, and each box is the
bounding box of the item's *visible* pixels. Training scenes use Fashion-MNIST training items,
validation scenes its test items (no item appears in both).

Written, for split in train/val::

    DIR/<split>/images/NNNNN.jpg         RGB scenes
    DIR/<split>/masks/NNNNN.png          label map: 0 background, 1..10 the classes, uint8
    DIR/<split>/annotations.json         COCO instances: boxes (xywh), areas, RLE masks
    DIR/classes.txt                      background + the 10 class names, one per line

So one folder serves both tasks: the detection reader takes the COCO JSON, the segmentation
reader the image/mask pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgevision.io import atomic_write, atomic_write_text

MASK_THRESHOLD = 24  # Fashion-MNIST background is 0; faint edge pixels below this are background


def _backgrounds() -> list[np.ndarray]:
    from edgevision.images import sample_photos

    bgs = [np.asarray(img.convert("RGB")) for _, img in sample_photos()]
    try:  # scikit-image's textures, when installed (optional: photos alone are enough)
        import skimage.data as sd

        for name in ("brick", "grass", "gravel"):
            fn = getattr(sd, name, None)
            try:
                arr = np.asarray(fn()) if fn is not None else None
            except Exception:  # some need a download (pooch) that is not there offline
                arr = None
            if arr is not None and arr.ndim in (2, 3):
                bgs.append(np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3])
    except ImportError:
        pass
    return [b.astype(np.uint8) for b in bgs]


def _crop_bg(bg: np.ndarray, size: int, rng) -> np.ndarray:
    h, w = bg.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = Image.fromarray(bg[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(img).astype(np.float32) * 0.7  # a little darker: items stand out


def make_scene(items: np.ndarray, labels: np.ndarray, bgs: list, size: int, rng, max_items: int = 3):
    """(RGB uint8 [S,S,3], label map uint8 [S,S], [(class, visible mask bool [S,S])])."""
    img = _crop_bg(bgs[int(rng.integers(len(bgs)))], size, rng)
    inst = np.full((size, size), -1, np.int32)  # instance index per pixel
    placed = []
    for _ in range(int(rng.integers(1, max_items + 1))):
        j = int(rng.integers(len(items)))
        side = int(rng.integers(size // 5, size // 2 + 1))
        item = np.asarray(Image.fromarray(items[j]).resize((side, side), Image.BILINEAR)).astype(np.float32)
        for _try in range(10):  # avoid covering an earlier item by more than a third
            y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            region = inst[y:y + side, x:x + side]
            if all((region == k).sum() < 0.34 * (inst == k).sum() for k in range(len(placed))):
                break
        mask = item > MASK_THRESHOLD
        colour = rng.uniform(0.35, 1.0, 3).astype(np.float32) * 255
        alpha = np.clip(item / 160.0, 0, 1)[..., None] * mask[..., None]
        patch = img[y:y + side, x:x + side]
        img[y:y + side, x:x + side] = patch * (1 - alpha) + (item[..., None] / 255.0) * colour * alpha
        inst[y:y + side, x:x + side][mask] = len(placed)
        placed.append(int(labels[j]))
    objs = [(c, inst == k) for k, c in enumerate(placed)]
    objs = [(c, m) for c, m in objs if m.sum() >= 20]  # nearly hidden items are not annotated
    label_map = np.zeros((size, size), np.uint8)
    for c, m in objs:
        label_map[m] = c + 1
    return np.clip(img, 0, 255).round().astype(np.uint8), label_map, objs


def write_scenes(out_dir: str | Path, n_train: int = 300, n_val: int = 100, size: int = 160,
                 seed: int = 0, max_items: int = 3, backgrounds: list | None = None) -> Path:
    """Write the train/val scenes (see the module docstring); returns DIR. ``backgrounds``:
    RGB uint8 arrays to crop from (default: the bundled photos and scikit-image textures)."""
    from pycocotools import mask as mask_utils

    from edgevision.training.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    if size < 32 or n_train < 1 or n_val < 1:
        raise ValueError(f"scenes need size >= 32 and at least one train and one val image; got size {size}, "
                         f"{n_train} train, {n_val} val")
    from edgevision.io import as_path

    out = as_path(out_dir, "the output folder")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder to write the scenes into")
    if (out / "train").exists() and any((out / "train").iterdir()):
        raise FileExistsError(f"{out}/train already has files; choose an empty or new folder")
    arrays, _ = load_fashion_mnist("vendored")
    bgs = backgrounds if backgrounds is not None else _backgrounds()
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    for split, n, x, y, off in (("train", n_train, arrays["x_train"], arrays["y_train"], 0),
                                ("val", n_val, arrays["x_test"], arrays["y_test"], 1)):
        rng = np.random.default_rng([seed, off])
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, label_map, objs = make_scene(x, y, bgs, size, rng, max_items)
            name = f"{i:05d}"
            atomic_write(out / split / "images" / f"{name}.jpg",
                         lambda p, a=img: Image.fromarray(a).save(p, format="JPEG", quality=92), fsync=False)
            atomic_write(out / split / "masks" / f"{name}.png",
                         lambda p, a=label_map: Image.fromarray(a).save(p, format="PNG"), fsync=False)
            images.append({"id": i + 1, "file_name": f"{name}.jpg", "width": size, "height": size})
            for c, m in objs:
                ys, xs = np.nonzero(m)
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                             "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                      float(ys.max() - ys.min() + 1)],
                             "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
        atomic_write_text(out / split / "annotations.json",
                          json.dumps({"images": images, "annotations": anns, "categories": cats}))
    atomic_write_text(out / "classes.txt", "\n".join(["background", *FASHION_MNIST_CLASSES]) + "\n")
    return out
