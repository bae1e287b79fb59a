"""The faster image reader gives the arrays the reference reader gave, for every kind of file.

``read_image`` skips ``convert("RGB")`` (a full copy) when the file is already RGB; the array must be
the one ``np.array(Image.open(p).convert("RGB"))`` gives, writable, for JPEG, PNG, grayscale, CMYK,
palette and alpha images, and for the real coco128 photos when they are present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.images import image_size, read_image

COCO128 = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128-voc" / "JPEGImages"


def reference(path: Path) -> np.ndarray:
    """The reader as it was: always ``convert("RGB")``."""
    with Image.open(path) as img:
        img.load()
        return np.array(img.convert("RGB"), dtype=np.uint8)


def _files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[:, :20] = (200, 30, 90)  # a flat patch: JPEG's smooth path
    files = []
    for mode, ext in (
        ("RGB", "jpg"),
        ("RGB", "png"),
        ("L", "jpg"),
        ("L", "png"),
        ("CMYK", "jpg"),
        ("P", "png"),
        ("RGBA", "png"),
        ("LA", "png"),
        ("1", "png"),
    ):
        path = folder / f"{mode}.{ext}"
        img = Image.fromarray(rgb)
        img = img.quantize(16) if mode == "P" else img.convert(mode)
        img.save(path)
        files.append(path)
    return files


def test_read_image_equals_the_reference_for_every_mode(tmp_path: Path) -> None:
    for path in _files(tmp_path):
        got, want = read_image(path), reference(path)
        assert got.dtype == np.uint8 and got.shape == (37, 53, 3), path.name
        assert np.array_equal(got, want), path.name
        assert got.flags.writeable and got.flags.c_contiguous, path.name
        assert image_size(path) == (37, 53)


@pytest.mark.skipif(not COCO128.is_dir(), reason="the coco128-voc photos are not on this machine")
def test_read_image_equals_the_reference_on_real_photos() -> None:
    photos = sorted(COCO128.glob("*.jpg"))
    grey = [p for p in photos if Image.open(p).mode != "RGB"]
    for path in photos[:8] + grey[:2]:  # coco128 holds one grayscale JPEG
        got = read_image(path)
        assert np.array_equal(got, reference(path)), path.name
        assert image_size(path) == got.shape[:2]
