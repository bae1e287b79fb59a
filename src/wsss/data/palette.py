"""Label maps as palette PNGs: the indices stay intact and the file looks right in viewers.

Masks are read *without* RGB conversion: mode ``P`` (VOC ``SegmentationClass``) and mode
``L`` (the single-channel ``SegmentationClassAug``) both hold class indices; an RGB mask is an
error, because its colours are not indices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.images import FORMATS, decode_error
from wsss.errors import DataError
from wsss.files import atomic_path

IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The standard 256-entry VOC colour map (bit-interleaved), flattened to 768 ints."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = voc_palette()


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Atomically write an HxW uint8 index map as a VOC palette PNG."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape} for {path}")
    if label.dtype != np.uint8:
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise ValueError(f"label values must lie in 0..255 for {path}")
        label = label.astype(np.uint8)
    img = Image.fromarray(label, mode="L").convert("P")
    img.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def check_mask_mode(mode: str, path: str | os.PathLike) -> None:
    """A DataError unless ``mode`` holds 8-bit class indices (palette ``P`` or grey ``L``)."""
    if mode in ("P", "L"):
        return
    if mode.startswith("I") or mode == "F":
        raise DataError(
            f"mask {path} is a 16/32-bit (mode-{mode}) image, not an 8-bit index map; save it as an 8-bit "
            "grey or palette PNG whose pixel values are the class indices (0 background, 255 ignore)"
        )
    raise DataError(
        f"mask {path} is a mode-{mode} image, not an index map (palette 'P' or grey 'L'); "
        "colours are not class indices: convert it with the dataset's palette to indices"
    )


def read_label_png(path: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an index mask (mode P or L) as HxW uint8; ``expected_size`` is (H, W) of its image."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        with Image.open(path, formats=FORMATS) as img:
            check_mask_mode(img.mode, path)
            img.load()
            arr = np.array(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # any decoder failure (as wsss.data.images.read_image)
        raise decode_error(path, "mask", exc) from exc
    if expected_size is not None and arr.shape != tuple(expected_size):
        raise DataError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is "
            f"{expected_size[1]}x{expected_size[0]}; masks must match their image's size"
        )
    return arr
