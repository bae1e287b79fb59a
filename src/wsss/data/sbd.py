"""SBD → ``SegmentationClassAug`` + ``train_aug.txt`` (the 10,582-image VOC training set).

``train_aug`` = (SBD train ∪ SBD val ∪ VOC train) − VOC val. Every image of ``train_aug`` and
of VOC val gets a mask in ``SegmentationClassAug``: the finer VOC ``SegmentationClass`` mask
when VOC has one (with its 255 border), else the SBD one from ``cls/<name>.mat`` (a MATLAB v5
struct ``GTcls`` whose field ``Segmentation`` is the uint8 class map). Reading ``.mat``
needs scipy, an optional dependency imported only when a ``.mat`` is actually read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.data.base import check_files_exist, read_list_file
from wsss.data.palette import read_label_png, write_label_png
from wsss.data.voc import find_voc_root
from wsss.errors import DataError
from wsss.files import write_text

TRAIN_AUG_COUNT = 10582


def find_sbd_dir(sbd_root: str | os.PathLike) -> Path:
    """The SBD folder holding ``cls/`` and ``train.txt`` (``benchmark_RELEASE/dataset`` in the tarball)."""
    root = Path(sbd_root)
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise DataError(
        f"{root} is not an SBD folder: expected cls/ and train.txt in it or in dataset/ or "
        "benchmark_RELEASE/dataset/"
    )


def train_aug_names(
    sbd_train: Iterable[str], sbd_val: Iterable[str], voc_train: Iterable[str], voc_val: Iterable[str]
) -> list[str]:
    """Sorted (SBD train ∪ SBD val ∪ VOC train) − VOC val."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def check_count(count: int, expected: int, what: str) -> None:
    """A DataError when a conversion produced another number of items than the official one."""
    if count != expected:
        raise DataError(
            f"{what}: got {count}, expected {expected}; the inputs are incomplete or a different release "
            "(pass --expected N or --no-count-check to accept a subset)"
        )


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """The ``GTcls.Segmentation`` class map of an SBD ``cls/*.mat`` as HxW uint8."""
    path = Path(path)
    try:
        from scipy.io import loadmat
    except ModuleNotFoundError as exc:
        raise DataError(f"reading SBD {path} needs scipy: pip install scipy") from exc
    if not path.is_file():
        raise DataError(f"SBD annotation not found: {path}")
    try:
        mat = loadmat(str(path))
        seg = mat["GTcls"]["Segmentation"][0, 0]
    except (KeyError, ValueError, IndexError, TypeError, OSError) as exc:
        raise DataError(f"{path} is not an SBD class annotation (GTcls.Segmentation): {exc!r}") from exc
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise DataError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected HxW")
    return seg.astype(np.uint8)


def convert_sbd(
    sbd_root: str | os.PathLike,
    voc_root: str | os.PathLike,
    *,
    expected_count: int = TRAIN_AUG_COUNT,
    check_counts: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``SegmentationClassAug/*.png`` and ``ImageSets/Segmentation/train_aug.txt`` into the VOC root.

    The count check runs before anything is written; existing masks are kept unless
    ``overwrite`` (so an interrupted run resumes).
    """
    start = time.perf_counter()
    sbd_dir = find_sbd_dir(sbd_root)
    voc = find_voc_root(voc_root)
    lists = voc / "ImageSets" / "Segmentation"
    sbd_train, sbd_val = read_list_file(sbd_dir / "train.txt"), read_list_file(sbd_dir / "val.txt")
    voc_train, voc_val = read_list_file(lists / "train.txt"), read_list_file(lists / "val.txt")
    names = train_aug_names(sbd_train, sbd_val, voc_train, voc_val)
    if check_counts:
        check_count(len(names), expected_count, "train_aug images")
    check_files_exist([voc / "JPEGImages" / f"{n}.jpg" for n in names], "train_aug", what="image")

    out_dir = voc / "SegmentationClassAug"
    todo = sorted(set(names) | set(voc_val))
    from_voc = from_sbd = kept = 0
    for name in tqdm(todo, desc="SBD → SegmentationClassAug", disable=not progress, unit="mask"):
        dest = out_dir / f"{name}.png"
        if dest.is_file() and not overwrite:
            kept += 1
            continue
        voc_mask = voc / "SegmentationClass" / f"{name}.png"
        if voc_mask.is_file():
            mask = read_label_png(voc_mask)
            from_voc += 1
        else:
            mask = read_sbd_mat(sbd_dir / "cls" / f"{name}.mat")
            from_sbd += 1
        write_label_png(dest, mask)
    list_file = lists / "train_aug.txt"
    write_text(list_file, "\n".join(names) + "\n")
    return {
        "train_aug": len(names),
        "masks_from_voc": from_voc,
        "masks_from_sbd": from_sbd,
        "masks_kept": kept,
        "list_file": str(list_file),
        "mask_dir": str(out_dir),
        "seconds": round(time.perf_counter() - start, 2),
    }
