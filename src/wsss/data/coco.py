"""MS COCO 2014 for WSSS: the instances → 81-class PNG converter and the ``coco`` dataset.

Layout under ``root`` (ToCo-style names; images are placed by the user, the rest is written
by :func:`convert_coco`)::

    JPEGImages/{train2014,val2014}/COCO_train2014_000000000009.jpg   (also accepted: images/<subset>/
                                                                     or <subset>/ as unzipped)
    SegmentationClass/{train2014,val2014}/COCO_train2014_000000000009.png   index PNGs, 0 = background
    ImageSets/Segmentation/{train,val}.txt     images with at least one labelled object
    cls_labels_{train,val}.npz                 image-level labels (pickle-free, see labels.py)
    classes.txt                                background + category names in sorted-id order

Conversion follows the common recipe: category ids mapped to 1..80 in sorted-id order
(derived from ``cats``, never hard-coded), crowd annotations skipped, later instances
overwrite earlier ones.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.data.base import (
    TaggedImageDataset,
    check_files_exist,
    find_masks,
    name_preview,
    read_class_names,
    read_list_file,
    resolve_image_labels,
    resolve_list_file,
    under_root,
)
from wsss.data.classes import COCO_CLASSES
from wsss.data.labels import write_labels
from wsss.data.palette import IGNORE_INDEX, read_label_png, write_label_png
from wsss.errors import DataError
from wsss.files import write_text
from wsss.registry import DATASETS

# Images with >= 1 labelled object in the 2014 sets (the ToCo train.txt / val.txt counts).
COCO_EXPECTED_COUNTS = {"train": 82081, "val": 40137}
IMAGE_DIR_CANDIDATES = ("JPEGImages", "images", ".")
_SUBSET_PREFIX = re.compile(r"^COCO_([A-Za-z]+\d{4})_")


def _load_coco_api(annotations: Path) -> Any:
    try:
        from pycocotools.coco import COCO
    except ModuleNotFoundError as exc:
        raise DataError("the COCO converter needs pycocotools: pip install wsss[coco]") from exc
    if not annotations.is_file():
        raise DataError(f"COCO annotation file not found: {annotations}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
            return COCO(str(annotations))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{annotations} is not a COCO instances JSON ({exc!r})") from exc


def category_index(cats: dict[int, dict[str, Any]]) -> tuple[dict[int, int], tuple[str, ...]]:
    """Sparse category id → contiguous class index (1..K in sorted-id order), and the class names."""
    ids = sorted(cats)
    return {cid: i + 1 for i, cid in enumerate(ids)}, ("background", *(cats[c]["name"] for c in ids))


def rasterise_image(coco: Any, image_id: int, cat_to_index: dict[int, int]) -> np.ndarray:
    """HxW uint8 class map of one image: crowd skipped, later instances drawn over earlier ones."""
    info = coco.imgs[image_id]
    mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get("iscrowd", 0) or not ann.get("segmentation"):
            continue
        mask[coco.annToMask(ann) > 0] = cat_to_index[ann["category_id"]]
    return mask


def _write_masks(
    coco: Any,
    image_ids: list[int],
    mask_dir: Path,
    cat_to_index: dict[int, int],
    num_classes: int,
    overwrite: bool,
    progress: bool,
) -> tuple[dict[str, np.ndarray], int]:
    """Rasterise (or reuse) each image's mask; return the labels by name and how many were reused."""
    labels: dict[str, np.ndarray] = {}
    reused = 0
    for image_id in tqdm(image_ids, desc=f"coco {mask_dir.name}", disable=not progress, unit="img"):
        name = Path(coco.imgs[image_id]["file_name"]).stem
        mask_path = mask_dir / f"{name}.png"
        if mask_path.is_file() and not overwrite:
            mask = read_label_png(mask_path)
            reused += 1
        else:
            mask = rasterise_image(coco, image_id, cat_to_index)
            write_label_png(mask_path, mask)
        counts = np.bincount(mask.ravel(), minlength=256)
        labels[name] = (counts[1:num_classes] > 0).astype(np.float32)
    return labels, reused


def convert_coco(
    annotations: str | os.PathLike,
    root: str | os.PathLike,
    *,
    subset: str | None = None,
    expected_count: int | None = None,
    check_counts: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write masks, the split list, labels and ``classes.txt`` for one COCO instances file.

    ``subset`` (e.g. ``train2014``) defaults to the part after ``instances_`` in the file name;
    the split name is its letters (``train``). The number of images with at least one label
    must equal ``expected_count`` (default: the official count for the split) unless
    ``check_counts`` is false. Existing masks are reused unless ``overwrite``, so an
    interrupted conversion resumes.
    """
    start = time.perf_counter()
    annotations, root = Path(annotations), Path(root)
    if subset is None:
        match = re.match(r"instances_(.+)$", annotations.stem)
        if match is None:
            raise DataError(
                f"cannot tell the subset from '{annotations.name}'; pass subset= (e.g. train2014)"
            )
        subset = match.group(1)
    split = re.match(r"[A-Za-z]+", subset)
    if split is None:
        raise DataError(f"subset '{subset}' must start with its split name (train2014, val2014, …)")
    split_name = split.group(0)
    if check_counts and expected_count is None:
        if split_name not in COCO_EXPECTED_COUNTS:
            raise DataError(f"no official image count for split '{split_name}'; pass expected_count")
        expected_count = COCO_EXPECTED_COUNTS[split_name]

    coco = _load_coco_api(annotations)
    cat_to_index, class_names = category_index(coco.cats)
    if len(class_names) > IGNORE_INDEX:
        raise DataError(f"{annotations}: {len(class_names) - 1} categories do not fit a uint8 mask")
    classes_file = root / "classes.txt"
    if classes_file.is_file() and not overwrite and read_class_names(classes_file) != class_names:
        raise DataError(f"{classes_file} lists other classes than {annotations}; use overwrite to replace it")

    image_ids = sorted(coco.imgs)
    with warnings.catch_warnings():
        # pycocotools' numpy-2 DeprecationWarning (__array__ without copy=) means nothing to users
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        labels, reused = _write_masks(
            coco,
            image_ids,
            root / "SegmentationClass" / subset,
            cat_to_index,
            len(class_names),
            overwrite,
            progress,
        )

    labelled = sorted(n for n, v in labels.items() if v.any())
    if check_counts and len(labelled) != expected_count:
        raise DataError(
            f"{annotations}: {len(labelled)} images have at least one label, expected {expected_count}; "
            "the annotation file may be incomplete or a different release (masks were written; pass "
            "expected_count / --expected N, or check_counts=False / --no-count-check for a subset)"
        )
    write_text(classes_file, "\n".join(class_names) + "\n")
    list_file = root / "ImageSets" / "Segmentation" / f"{split_name}.txt"
    write_text(list_file, "\n".join(labelled) + "\n")
    labels_file = root / f"cls_labels_{split_name}.npz"
    write_labels(labels_file, {n: labels[n] for n in labelled}, class_names)
    return {
        "subset": subset,
        "images": len(image_ids),
        "labelled_images": len(labelled),
        "masks_reused": reused,
        "class_image_counts": dict(
            zip(class_names[1:], np.stack([labels[n] for n in labelled]).sum(0).astype(int).tolist())
        )
        if labelled
        else {},
        "list_file": str(list_file),
        "labels_file": str(labels_file),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _coco_image_root(root: Path, subset: str, image_dir: str | None) -> Path:
    if image_dir is not None:
        return under_root(root, image_dir) / subset
    for candidate in IMAGE_DIR_CANDIDATES:
        if (root / candidate / subset).is_dir():
            return root / candidate / subset
    return root / IMAGE_DIR_CANDIDATES[0] / subset


@DATASETS.register("coco")
def build_coco(
    root: str | os.PathLike,
    split: str = "train",
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    labels_file: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    with_masks: bool = True,
    image_dir: str | None = None,
    subset: str | None = None,
) -> TaggedImageDataset:
    """COCO 2014 after :func:`convert_coco`; each name's ``COCO_<subset>_`` prefix picks its folder
    (``subset`` serves names without one)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    list_file = resolve_list_file(split, root / "ImageSets" / "Segmentation")
    names = read_list_file(list_file)
    class_names = read_class_names(root / "classes.txt") if (root / "classes.txt").is_file() else COCO_CLASSES
    subsets = []
    for n in names:
        match = _SUBSET_PREFIX.match(n)
        if match is None and subset is None:
            raise DataError(
                f"split list {list_file}: '{n}' has no COCO_<subset>_ prefix; pass subset= (e.g. val2014)"
            )
        subsets.append(match.group(1) if match else subset)
    image_roots = {s: _coco_image_root(root, s, image_dir) for s in set(subsets)}
    image_paths = [image_roots[s] / f"{n}.jpg" for n, s in zip(names, subsets)]
    check_files_exist(image_paths, list_file)
    masks_base = under_root(root, mask_dir if mask_dir is not None else "SegmentationClass")
    mask_paths = find_masks(names, [masks_base / s / f"{n}.png" for n, s in zip(names, subsets)], with_masks)
    labels = resolve_image_labels(
        names,
        class_names,
        labels_file=labels_file,
        mask_paths=mask_paths,
        default_labels_file=root / f"cls_labels_{split}.npz",
        none_found=(
            f"no image-level labels for {list_file} (e.g. {name_preview(names, 2)}): run `wsss data coco` "
            "to write masks and cls_labels, or pass labels_file"
        ),
    )
    return TaggedImageDataset(
        names=names,
        image_paths=image_paths,
        labels=labels,
        class_names=class_names,
        mask_paths=mask_paths,
        transform=transform,
        with_masks=with_masks,
        source=str(list_file),
    )
