"""Readers for the CAM dumps other WSSS code bases write, converted to :class:`CamRecord`.

* IRN family (IRN, AdvCAM, AMN, AMR, ReCAM, SPU): ``{"keys", "cam", "high_res"}`` with ``keys``
  the 0-based foreground indices (often a pickled torch tensor), ``cam`` the stride-4 map and
  ``high_res`` the full-resolution one, max-normalised per class. The full-resolution map is
  imported (stride 1), so no resampling changes the scores.
* PSA/SEAM/TransCAM family: ``{class_idx (0-based foreground): H x W}``, min-max normalised.

Both are pickled dicts in ``.npy`` files. Unpickling can run arbitrary code embedded in the file,
so these readers refuse unless the caller states trust in the file's source (``trust=True``,
``--trust-pickle`` on the command line). Keys are shifted by +1 into label space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.npyio import NpzFile
from tqdm import tqdm

from wsss.cams.files import CamRecord, cam_path, is_complete, save_record
from wsss.errors import DataError

FORMATS = ("irn", "psa")


def _refuse_untrusted(path: Path, fmt: str) -> None:
    raise DataError(
        f"{path} is a pickled {fmt.upper()}-style CAM dump, and unpickling a file can execute arbitrary "
        "code hidden in it, so wsss does not load such files by default. If you trust where the file "
        "came from, pass trust=True (command line: --trust-pickle) to import it once into wsss's "
        "pickle-free .npz format."
    )


def _load_pickled_dict(path: str | os.PathLike, trust: bool, fmt: str) -> dict[Any, Any]:
    path = Path(path)
    if not trust:
        _refuse_untrusted(path, fmt)
    if not path.is_file():
        raise DataError(f"CAM dump not found: {path}")
    try:
        obj = np.load(path, allow_pickle=True)  # only reached with trust=True (--trust-pickle)
    except Exception as exc:  # unpickling fails with whatever the file's objects raise
        raise DataError(
            f"{path} could not be read as a pickled .npy ({type(exc).__name__}: {exc}); is it an IRN/PSA "
            "CAM dump (np.save of a dict)? Export it again from the code base that wrote it"
        ) from exc
    if isinstance(obj, NpzFile):
        obj.close()
        raise DataError(f"{path} is an .npz archive, not a pickled .npy CAM dump; rename or re-export it")
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(
            f"{path} holds a {type(obj).__name__}, not the dict a {fmt.upper()}-style CAM dump contains"
        )
    return obj


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _record(path: Path, keys: np.ndarray, cams: np.ndarray, norm: str) -> CamRecord:
    try:
        return CamRecord(
            keys=keys.astype(np.int16), cams=cams, size=(cams.shape[1], cams.shape[2]), stride=1, norm=norm
        )
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc


def import_irn(path: str | os.PathLike, trust: bool = False) -> CamRecord:
    """Read an IRN-style ``.npy`` dump (its ``high_res`` maps, max-normalised) as a CamRecord."""
    path = Path(path)
    d = _load_pickled_dict(path, trust, "irn")
    missing = [k for k in ("keys", "high_res") if k not in d]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(repr(m) for m in missing)}; an IRN-style dump has 'keys' and "
            "'high_res' (the full-resolution CAM; the strided 'cam' alone does not give the image size)"
        )
    keys = _to_numpy(d["keys"]).reshape(-1)
    cams = _to_numpy(d["high_res"])
    if keys.dtype.kind not in "iu":
        raise DataError(f"{path}: 'keys' must be integer class indices, got dtype {keys.dtype}")
    if cams.ndim == 2 and keys.size == 1:
        cams = cams[None]
    if cams.ndim != 3 or cams.dtype.kind != "f":
        raise DataError(f"{path}: 'high_res' must be float (n_keys, H, W), got {cams.dtype} {cams.shape}")
    return _record(path, keys.astype(np.int64) + 1, cams, "max")


def import_psa(path: str | os.PathLike, num_classes: int, trust: bool = False) -> CamRecord:
    """Read a PSA/SEAM/TransCAM ``{fg_index: HxW}`` dump (min-max normalised) as a CamRecord.

    ``num_classes`` counts background (21 for VOC), so valid dict keys are 0..num_classes-2.
    """
    path = Path(path)
    d = _load_pickled_dict(path, trust, "psa")
    if not d:
        raise DataError(f"{path} holds no class maps, so the image size is unknown; drop it from the list")
    items = []
    for k, v in d.items():
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise DataError(f"{path}: key {k!r} is not a class index; a PSA-style dump maps int → HxW")
        if not 0 <= int(k) < num_classes - 1:
            raise DataError(
                f"{path}: class index {int(k)} is outside 0..{num_classes - 2} (0-based foreground for "
                f"num_classes={num_classes} incl. background); is --num-classes right?"
            )
        arr = _to_numpy(v)
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise DataError(
                f"{path}: map for class {int(k)} must be a float H x W array, got {arr.dtype} {arr.shape}"
            )
        items.append((int(k), arr))
    items.sort(key=lambda kv: kv[0])
    shapes = {a.shape for _, a in items}
    if len(shapes) != 1:
        raise DataError(f"{path}: class maps have different sizes {sorted(shapes)}")
    keys = np.array([k + 1 for k, _ in items], dtype=np.int64)
    return _record(path, keys, np.stack([a for _, a in items]), "minmax")


def import_dir(
    fmt: str,
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_classes: int = 21,
    trust: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Convert every ``*.npy`` dump in ``src_dir`` to ``out_dir/<name>.npz``; finished files are kept.

    Returns ``{"converted": n, "skipped": m}``; re-running after an interruption resumes.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown CAM dump format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DataError(f"CAM dump folder not found: {src_dir}")
    files = sorted(src_dir.glob("*.npy"))
    if not files:
        raise DataError(f"no .npy CAM dumps in {src_dir}")
    if not trust:
        _refuse_untrusted(files[0], fmt)
    converted = skipped = 0
    for src in tqdm(files, desc=f"import {fmt} CAMs", unit="img", disable=not progress):
        dst = cam_path(out_dir, src.stem)
        if not overwrite and is_complete(dst):
            skipped += 1
            continue
        rec = import_irn(src, trust=True) if fmt == "irn" else import_psa(src, num_classes, trust=True)
        save_record(dst, rec)
        converted += 1
    return {"converted": converted, "skipped": skipped}
