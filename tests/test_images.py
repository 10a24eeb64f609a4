"""The one image decoder: every PIL mode converted correctly or refused in one line."""

import io

import numpy as np
import pytest
from PIL import Image

from edgevision.images import ImageReadError, load_rgb, sample_photos, to_rgb


def _gradient(h=8, w=16) -> np.ndarray:
    """An RGB test pattern with distinct, non-saturated channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 100)], -1).astype(np.uint8)


def _roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return Image.open(buf)


def _to_lab(img: Image.Image) -> Image.Image:
    """CIELab as a colour-managed file stores it (sRGB -> Lab through profiles)."""
    from PIL import ImageCms

    t = ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(img, t)


RGB = Image.fromarray(_gradient())
GRAY = RGB.convert("L")


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX", "I", "F"])
def test_modes_convert_close_to_the_source(mode):
    src = RGB if mode not in ("L", "I", "F") else GRAY
    img = src.convert(mode) if mode != "LAB" else _to_lab(src)
    out = np.asarray(to_rgb(img), dtype=np.int16)
    expect = np.asarray(src.convert("RGB"), dtype=np.int16)
    # palettes quantize; 8-bit Lab loses precision on saturated colours: bound the mean too
    tol = {"P": 60, "HSV": 8, "LAB": 40, "CMYK": 2, "YCbCr": 4}.get(mode, 1)
    assert out.shape == expect.shape and np.abs(out - expect).max() <= tol, mode
    assert np.abs(out - expect).mean() <= (12 if mode == "P" else 3), mode


def test_one_bit_images():
    img = GRAY.point(lambda v: 255 if v > 128 else 0).convert("1")
    out = np.asarray(to_rgb(img))
    assert set(np.unique(out)) <= {0, 255}


@pytest.mark.parametrize("bits_mode", ["I;16", "I;16B"])
def test_16_bit_images_are_scaled_not_clipped(bits_mode):
    ramp = (np.linspace(0, 65535, 64).reshape(4, 16)).astype(np.uint16)
    img = Image.fromarray(ramp)
    if bits_mode == "I;16B":
        img = Image.frombytes("I;16B", img.size, ramp.astype(">u2").tobytes())
    out = np.asarray(to_rgb(img))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.abs(out - ramp / 257.0).max() <= 1  # a ramp, not all white


def test_16_bit_png_file_is_not_white(tmp_path):
    ramp = (np.linspace(0, 65535, 256).reshape(16, 16)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    out = np.asarray(load_rgb(path))
    assert out.mean() == pytest.approx(127.5, abs=2)  # PIL's convert("RGB") gives ~255 here


def test_float_images_by_range():
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 16)
    assert np.asarray(to_rgb(Image.fromarray(a, mode="F"))).max() == 255
    b = a * 255
    assert np.asarray(to_rgb(Image.fromarray(b, mode="F"))).max() == 255
    with pytest.raises(ImageReadError, match=r"expected \[0, 1\] or \[0, 255\]"):
        to_rgb(Image.fromarray(a * 1000, mode="F"))
    with pytest.raises(ImageReadError, match="NaN"):
        to_rgb(Image.fromarray(np.full((2, 2), np.nan, np.float32), mode="F"))


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert (out == 255).all()
    la = Image.fromarray(rgba[..., :2].copy(), mode="LA")
    assert (np.asarray(to_rgb(la)) == 255).all()
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert (np.asarray(to_rgb(Image.fromarray(opaque, mode="RGBA"))) == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    out = np.asarray(load_rgb(path))
    assert out.shape[:2] == (20, 10)  # displayed upright: portrait
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # the white half is on top


def test_bad_files_are_one_line_errors(tmp_path):
    trunc = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    RGB.resize((64, 64)).save(buf, format="JPEG")
    trunc.write_bytes(buf.getvalue()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (trunc, text):
        with pytest.raises(ImageReadError) as e:
            load_rgb(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageReadError, match="is a directory"):
        load_rgb(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_rgb(tmp_path / "missing.jpg")


def test_huge_header_is_refused(tmp_path):
    # A PNG whose header claims an enormous image: PIL's decompression-bomb guard, in one line.
    path = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = (200000).to_bytes(4, "big") + (200000).to_bytes(4, "big")  # IHDR width/height
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError):
        load_rgb(path)


def test_sample_photos_ship_with_the_package():
    photos = sample_photos()
    assert len(photos) >= 10
    assert all(img.mode == "RGB" and min(img.size) >= 200 for _, img in photos)
