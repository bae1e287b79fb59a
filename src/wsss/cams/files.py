"""The toolkit's CAM file: one pickle-free, compressed ``.npz`` per image.

Arrays in the file (format version 1):

* ``keys``: int16 ``(n,)`` class indices in label space (1..K; background is never stored).
* ``cams``: float16 ``(n, h, w)`` scores at ``stride`` relative to the original image, with
  ``h = ceil(H / stride)`` and ``w = ceil(W / stride)`` (the strided map covers the image padded
  to a multiple of the stride, as IRN's strided CAMs do).
* ``size``: int32 ``(2,)`` original ``(H, W)``; ``stride``: int32 scalar.
* ``norm``: how scores were normalised: ``"minmax"`` (per class to [0, 1], PSA/TransCAM),
  ``"max"`` (divided by the per-class max, IRN) or ``"raw"``; thresholds only mean something
  relative to it.
* ``format_version``: int32 scalar, 1.

float16 at a stride keeps COCO-scale dumps to a few GB instead of hundreds, and ``.npz`` loads
with ``allow_pickle=False``, so a CAM file can never execute code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.npyio import NpzFile

from wsss.errors import DataError
from wsss.files import atomic_open

FORMAT_VERSION = 1
NORMS = ("minmax", "max", "raw")
FIELDS = ("keys", "cams", "size", "stride", "norm", "format_version")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(ceil(H / stride), ceil(W / stride))``: the CAM size stored for an image of ``size``."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def cam_path(cam_dir: str | os.PathLike, name: str) -> Path:
    """Where the CAM file of image ``name`` lives in ``cam_dir``."""
    return Path(cam_dir) / f"{name}.npz"


def nonfinite_marker(path: str | os.PathLike) -> Path:
    """``NAME.nonfinite.json`` beside the CAM file ``path`` (``NAME.npz``): written instead of the
    CAM file when ``cams.nonfinite: skip`` left the image out, so readers can say why it is missing."""
    path = Path(path)
    return path.with_name(f"{path.stem}.nonfinite.json")


def missing_cam_message(path: str | os.PathLike) -> str:
    """Why the CAM file ``path`` is absent: skipped as non-finite (its marker says by which stage and
    for which classes) or simply not written yet."""
    path = Path(path)
    marker = nonfinite_marker(path)
    if not marker.is_file():
        return f"CAM file not found: {path}"
    try:
        info = json.loads(marker.read_text())
        stage, classes = info.get("stage", "the CAM stage"), list(info.get("classes", []))
        names = list(info.get("class_names", []))
    except (OSError, ValueError, AttributeError, TypeError):
        stage, classes, names = "the CAM stage", [], []
    if len(names) == len(classes):
        classes = [f"{k} ({n})" for k, n in zip(classes, names)]
    which = f" (classes {', '.join(map(str, classes))})" if classes else ""
    return (
        f"CAM file not found: {path}: {stage} skipped image '{path.stem}' because its CAM was NaN or "
        f"infinite{which} under cams.nonfinite: skip ({marker}); drop the image from the split, or "
        "retrain the classifier (lower lr, amp: none) and make the CAMs again"
    )


def _check_fields(keys: np.ndarray, cams: np.ndarray, size: tuple[int, int], stride: int, norm: str) -> None:
    """Raise ValueError describing the first inconsistency between the fields."""
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-D, got shape {keys.shape}")
    if cams.ndim != 3:
        raise ValueError(f"cams must be (n_keys, h, w), got shape {cams.shape}")
    if cams.shape[0] != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {cams.shape[0]} CAM planes")
    if keys.size and (keys.min() < 1 or keys.max() > np.iinfo(np.int16).max):
        raise ValueError(f"keys {keys.tolist()} must be class indices >= 1 (label space, no background)")
    if len(np.unique(keys)) != keys.size:
        raise ValueError(f"keys {keys.tolist()} contain duplicates")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {tuple(size)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    expected = strided_size(size, stride)
    if tuple(cams.shape[1:]) != expected:
        raise ValueError(
            f"CAM planes are {cams.shape[1]}x{cams.shape[2]} (h x w) but an image of {size[0]}x{size[1]} "
            f"at stride {stride} needs {expected[0]}x{expected[1]} (ceil of size / stride)"
        )
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


@dataclass(frozen=True, eq=False)
class CamRecord:
    """One image's CAMs as stored: foreground planes at a stride, plus what is needed to use them."""

    keys: np.ndarray
    cams: np.ndarray
    size: tuple[int, int]
    stride: int = 1
    norm: str = "raw"

    def __post_init__(self) -> None:
        # Normalise field types once so every consumer can rely on them (frozen: set via object).
        object.__setattr__(self, "keys", np.asarray(self.keys).reshape(-1))
        object.__setattr__(self, "cams", np.asarray(self.cams))
        if len(self.size) != 2:
            raise ValueError(f"size must be (H, W), got {tuple(self.size)}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "stride", int(self.stride))
        _check_fields(self.keys, self.cams, self.size, self.stride, self.norm)

    def full_resolution(self, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 ``(n, H, W)``: bilinear upsampling (align_corners=False) by the stride, then a crop."""
        h, w = self.size
        x = torch.from_numpy(np.ascontiguousarray(self.cams, dtype=np.float32)).to(device)
        if self.stride == 1:
            return x
        if x.shape[0] == 0:
            return x.new_zeros((0, h, w))
        sh, sw = x.shape[1] * self.stride, x.shape[2] * self.stride
        up = F.interpolate(x[None], size=(sh, sw), mode="bilinear", align_corners=False)[0]
        return up[:, :h, :w].contiguous()


def nonfinite_classes(
    cams: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor | list[int]
) -> list[int]:
    """The ``keys`` whose planes of ``cams`` (n×h×w) hold a NaN or inf; empty when all are finite."""
    if isinstance(cams, torch.Tensor):
        finite = torch.isfinite(cams.detach()).flatten(1).all(1).cpu().numpy()
    else:
        arr = np.asarray(cams)
        finite = np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))  # (0, h, w): no class, nothing bad
    keys_list = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys).reshape(-1).tolist()
    return [int(k) for k, ok in zip(keys_list, finite) if not ok]


def save_cam(
    path: str | os.PathLike,
    cams: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor | list[int],
    size: tuple[int, int],
    stride: int = 1,
    norm: str = "raw",
) -> None:
    """Write one CAM file atomically (compressed ``.npz`` to a temporary name, then rename)."""
    if isinstance(cams, torch.Tensor):
        cams = cams.detach().cpu().numpy()
    if isinstance(keys, torch.Tensor):
        keys = keys.detach().cpu().numpy()
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    cams_arr = np.asarray(cams)
    size = (int(size[0]), int(size[1]))
    _check_fields(keys_arr, cams_arr, size, int(stride), norm)
    bad = nonfinite_classes(cams_arr, keys_arr)
    if bad:
        raise ValueError(
            f"CAM scores for {path} contain NaN or inf (classes {', '.join(map(str, bad))}); check them "
            "before saving (make-cams does, under cams.nonfinite)"
        )
    if cams_arr.size and float(np.abs(cams_arr).max()) > _FLOAT16_MAX:
        raise ValueError(
            f"CAM scores for {path} exceed the float16 range (|x| > {_FLOAT16_MAX:g}); normalise them first"
        )
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            keys=keys_arr.astype(np.int16),
            cams=cams_arr.astype(np.float16),
            size=np.asarray(size, dtype=np.int32),
            stride=np.int32(stride),
            norm=np.asarray(norm),
            format_version=np.int32(FORMAT_VERSION),
        )
    nonfinite_marker(path).unlink(missing_ok=True)  # skipped as non-finite before: not any more


def save_record(path: str | os.PathLike, record: CamRecord) -> None:
    """``save_cam`` for a :class:`CamRecord` (e.g. one made by an importer)."""
    save_cam(path, record.cams, record.keys, record.size, record.stride, record.norm)


def load_cam(path: str | os.PathLike) -> CamRecord:
    """Read and validate one CAM file; any problem is a ``DataError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(missing_cam_message(path))
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, NpzFile):
            raise DataError(
                f"{path} is a bare .npy array, not a wsss CAM .npz; convert IRN/PSA dumps with "
                "'wsss import-cams'"
            )
        with data as npz:
            missing = [f for f in FIELDS if f not in npz.files]
            if missing:
                raise DataError(
                    f"CAM file {path} lacks {', '.join(missing)}; it was not written by wsss save_cam "
                    "(re-run the CAM stage or convert it with 'wsss import-cams')"
                )
            version = int(npz["format_version"])
            if version != FORMAT_VERSION:
                raise DataError(
                    f"CAM file {path} has format_version {version}; this wsss reads version "
                    f"{FORMAT_VERSION} ({'upgrade wsss, or ' if version > FORMAT_VERSION else ''}delete it and "
                    "re-run make-cams to re-create it)"
                )
            keys, cams, size = npz["keys"], npz["cams"], npz["size"]
            stride_arr, norm_arr = npz["stride"], npz["norm"]
    except DataError:
        raise
    except Exception as exc:  # numpy's zip/npy readers fail on a damaged file with many types
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc) and _looks_pickled(path):
            raise DataError(
                f"{path} holds pickled objects (an IRN/PSA-style dump?), not a wsss CAM .npz; convert it "
                "with 'wsss import-cams' (which asks for --trust-pickle)"
            ) from exc
        raise DataError(
            f"CAM file {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); delete it and re-run "
            "the stage that makes it (make-cams) to re-create it"
        ) from exc
    if (
        keys.dtype.kind not in "iu"
        or cams.dtype.kind != "f"
        or size.shape != (2,)
        or norm_arr.dtype.kind != "U"
    ):
        raise DataError(
            f"CAM file {path} has wrong field types (keys {keys.dtype}, cams {cams.dtype}, size shape "
            f"{size.shape}, norm {norm_arr.dtype}); re-create it"
        )
    try:
        return CamRecord(
            keys=keys.astype(np.int16),
            cams=cams,
            size=(int(size[0]), int(size[1])),
            stride=int(stride_arr),
            norm=str(norm_arr),
        )
    except (ValueError, TypeError) as exc:
        raise DataError(f"CAM file {path} is inconsistent: {exc}; re-create it") from exc


def _looks_pickled(path: Path) -> bool:
    """Whether ``path`` starts as a pickle (protocol 2+) or a ``.npy`` (which then holds objects)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(6)
    except OSError:
        return False
    return head.startswith((b"\x80", b"\x93NUMPY"))


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a finished CAM file of this format (cheap: reads the zip index and version).

    Files are written atomically, so a present, readable file is a finished one; resumable stages
    use this to skip work already done and to redo anything truncated or foreign.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, NpzFile):
            return False
        with data as npz:
            if any(f not in npz.files for f in FIELDS):
                return False
            return int(npz["format_version"]) == FORMAT_VERSION
    except Exception:  # unreadable in any way: not finished, so the stage makes it again
        return False
