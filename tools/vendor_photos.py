"""Write the sample photos shipped in edgevision/data/photos (run once by a maintainer).

They come from scikit-image's bundled data (a dev dependency), keeping only photos whose
licence scikit-image states (public domain or CC0), resized to a 320-px short side as JPEG
so the wheel stays small. Used offline for int8 calibration and by the demo.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

OUT = Path(__file__).resolve().parents[1] / "edgevision" / "data" / "photos"
# name -> licence as stated in scikit-image's docstrings
PHOTOS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions",
    "retina": "CC0 1.0",
    "camera": "CC0 (Lav Varshney)",
    "coins": "no known copyright restrictions",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["# Sample photos (from scikit-image's data; licences as stated there)", ""]
    for name, licence in PHOTOS.items():
        arr = np.asarray(getattr(data, name)())
        img = Image.fromarray(arr).convert("RGB")
        scale = 320 / min(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        (OUT / f"{name}.jpg").write_bytes(buf.getvalue())
        lines.append(f"- {name}.jpg: {licence}")
    (OUT / "LICENSES.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
