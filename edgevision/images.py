"""The one image decoder: any file PIL opens -> an 8-bit RGB image, correctly scaled.

PIL's ``convert("RGB")`` clips high-bit-depth pixels (a 16-bit PNG becomes all white) and
ignores EXIF orientation (phone photos enter sideways). Here
- EXIF orientation is applied first;
- 16-bit ('I;16*') and 32-bit integer ('I') greyscale are scaled to 8 bits by their bit
  depth, float ('F') images by their range ([0, 1] or [0, 255]); values outside those
  ranges are refused, never clipped;
- transparent images (RGBA, LA, PA, P with a transparency key) are composited over white,
  so transparent pixels do not show their hidden colour;
- every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...) goes through PIL's converter.
Anything unreadable raises :class:`ImageReadError` (a ``ValueError``) with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ImageReadError(ValueError):
    """A file that cannot be decoded into an RGB image; the message is one line."""


def _scaled_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        return (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if mode == "F":
        if not np.isfinite(arr).all():
            raise ImageReadError("float image holds NaN or infinite pixels")
        if lo >= 0.0 and hi <= 1.0:
            return (arr * 255.0 + 0.5).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return (arr + 0.5).astype(np.uint8)
        raise ImageReadError(f"float image with values in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
    # 'I' (32-bit signed): PIL opens 16-bit greyscale PNG/TIFF this way on some versions
    if lo < 0 or hi > 65535:
        raise ImageReadError(f"32-bit integer image with values in [{lo:g}, {hi:g}]; expected 0..65535")
    depth = 255.0 if hi <= 255 else 65535.0
    return (arr.astype(np.float64) / depth * 255.0 + 0.5).astype(np.uint8)


def to_rgb(img):
    """A PIL image in any mode -> an 8-bit RGB PIL image (see the module doc)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _scaled_to_uint8(np.asarray(img), mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "LAB":  # PIL has no direct LAB -> RGB conversion; go through a colour profile
        from PIL import ImageCms

        transform = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(img, transform)
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageReadError(f"image mode {mode!r} cannot be converted to RGB ({e})") from e


def load_rgb(image):
    """A path or PIL image -> 8-bit RGB PIL image; unreadable files raise ImageReadError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image must be a file path or a PIL image; got {type(image).__name__}")
    from edgevision.io import as_path

    path = as_path(image, "image")
    if path.is_dir():
        raise ImageReadError(f"{path} is a directory, not an image file")
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, not later
            return to_rgb(img)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot read as an image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


PHOTO_DIR = Path(__file__).resolve().parent / "data" / "photos"


def sample_photos() -> list[tuple[str, object]]:
    """The photos shipped with the package (public domain / CC0, see data/photos/LICENSES.md),
    as (name, RGB PIL image), sorted by name: offline calibration data and demo input."""
    files = sorted(PHOTO_DIR.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"the bundled sample photos are missing from {PHOTO_DIR}")
    return [(f.stem, load_rgb(f)) for f in files]
