"""Image reading with errors that name the file; grayscale and CMYK become RGB.

Sizes in messages are written width x height, ``500x375 (WxH)``, as image viewers and PIL show
them; arrays and ``image_size`` stay (H, W).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.errors import DataError


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (an RGB file is decoded straight into the array)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            # convert() copies even an RGB image: only other modes need it (an RGB JPEG then costs
            # ~40 % less; the array is the same)
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.array(rgb, dtype=np.uint8)  # writable (C extensions need it)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"image {path} is corrupt or truncated ({exc}); re-create or re-download it") from exc


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(H, W) of an image (or a mask: ``what``) from its header, without decoding its pixels."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError as exc:
        raise DataError(f"{what} file not found: {path}") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{what} {path} is corrupt ({exc}); re-create or re-download it") from exc
    return h, w


def format_size(size: tuple[int, int]) -> str:
    """An (H, W) size as messages write it: ``500x375`` (width first; say "(WxH)" once per message)."""
    return f"{size[1]}x{size[0]}"
