"""Image reading with errors that name the file; every colour mode PIL decodes becomes 8-bit RGB.

What a file becomes (``read_image``):

* RGB as stored; grayscale (``L``, ``1``), palette (``P``), CMYK, YCbCr and LAB through PIL's
  conversion to RGB; an alpha channel (``RGBA``, ``LA``, ``PA``) is dropped, the colours under it kept,
  as PIL's and torchvision's RGB readers do;
* 16-bit grayscale (``I;16`` and ``I``, e.g. a 16-bit PNG) keeps its high byte (``v >> 8``), as PIL
  already does for 16-bit RGB PNGs; PIL's own conversion would clip every value above 255 to white;
* 32-bit float images (``F``) are refused: their intensity scale (0..1? 0..255? Hounsfield?) is not in
  the file.

EXIF orientation is *not* applied: pixels are read as stored, as VOC and COCO masks were drawn and as
the masks of a dataset are read (PNG masks carry no orientation tag), so an image and its mask always
line up and ``image_size`` (from the header) equals the decoded size. Photos whose EXIF tag says
"rotate" therefore appear as stored (possibly sideways); rotate the files themselves if masks were
drawn on the upright view (e.g. ``PIL.ImageOps.exif_transpose``, then save).

Only the formats a dataset holds are opened (``FORMATS``): PIL would otherwise hand an ``.eps``
renamed ``.jpg`` to Ghostscript. Sizes in messages are written width x height, ``500x375 (WxH)``, as
image viewers and PIL show them; arrays and ``image_size`` stay (H, W).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.errors import DataError

FORMATS = ("JPEG", "PNG", "BMP", "DIB", "WEBP", "TIFF", "GIF", "PPM")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _open(path: Path) -> Image.Image:
    """``Image.open`` restricted to ``FORMATS``."""
    return Image.open(path, formats=FORMATS)


def decode_error(path: Path, what: str, exc: BaseException) -> DataError:
    # PIL's decoders fail on a damaged file with whatever type the plugin hits (OSError, SyntaxError,
    # ValueError, struct.error, IndexError, ...): each means this file cannot be decoded.
    if isinstance(exc, Image.DecompressionBombError):
        return DataError(f"{what} {path} is too large to decode safely ({exc}); downscale it")
    if isinstance(exc, UnidentifiedImageError):
        reason = f"{exc}; wsss reads {', '.join(FORMATS)} files"
    elif isinstance(exc, OSError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return DataError(f"{what} {path} is corrupt or truncated ({reason}); re-create or re-download it")


def to_rgb(img: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a decoded image (see the module doc for each mode)."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)  # writable (C extensions need it)
    if mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.int64)
        grey = np.clip(grey >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(
            f"image {path} holds 32-bit float pixels, whose brightness scale the file does not say; "
            "save it as an 8-bit (or 16-bit) RGB or grayscale image"
        )
    if mode == "PA":  # PIL converts PA to RGBA, not to RGB
        img = img.convert("RGBA")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "palette images with transparency ..."
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise DataError(
            f"image {path} has colour mode {mode}, which cannot be converted to RGB ({exc}); "
            "save it as an RGB or grayscale image"
        ) from exc


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (an RGB file is decoded straight into the array)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with _open(path) as img:
            img.load()
            return to_rgb(img, path)
    except DataError:
        raise
    except Exception as exc:  # any decoder failure: see decode_error
        raise decode_error(path, "image", exc) from exc


def image_header(path: str | os.PathLike, what: str = "image") -> tuple[tuple[int, int], str]:
    """``((H, W), PIL mode)`` of an image or mask (``what``) from its header, without decoding pixels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with _open(path) as img:
            w, h = img.size
            mode = img.mode
    except Exception as exc:  # any decoder failure: see decode_error
        raise decode_error(path, what, exc) from exc
    return (h, w), mode


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(H, W) of an image (or a mask: ``what``) from its header, without decoding its pixels."""
    return image_header(path, what)[0]


def format_size(size: tuple[int, int]) -> str:
    """An (H, W) size as messages write it: ``500x375`` (width first; say "(WxH)" once per message)."""
    return f"{size[1]}x{size[0]}"
