"""Rewrite any loadable dataset (VOC layout, COCO, folder) as a users' ``folder`` dataset.

Why: the ``folder`` path ("Bringing your own data" in the README) should be tried on real photos
with known answers; exporting a scored dataset (e.g. coco128-voc) gives exactly the folder a
user would make, whose labels and masks can be compared with the original's. Output layout
(see :mod:`wsss.data.folder`)::

    images/<name><suffix>   the source image files, copied byte for byte (no re-encoding)
    masks/<name>.png        8-bit grey ('L') index PNGs: 0 background, k class k, 255 ignore
    classes.txt             the foreground class names, index 1 first (no 'background' line)
    tags.csv                'image,tags' header, then 'name.jpg,cat;dog' (an empty tag list is allowed)
    <split>.txt             optional split lists, image names without extension

Every file is written atomically; ``classes.txt`` comes last, so an interrupted export does not
load as a dataset.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.base import TaggedImageDataset, name_preview, read_list_file, resolve_list_file
from wsss.data.folder import IMAGE_SUFFIXES, index_images
from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError, DataError
from wsss.files import atomic_open, atomic_path, write_text
from wsss.registry import DATASETS

IMAGE_DIR = "images"
MASK_DIR = "masks"
CLASSES_FILE = "classes.txt"
TAGS_FILE = "tags.csv"
# 'all' is every image of a folder (no list file); classes.txt is the class list.
_RESERVED_SPLITS = ("all", "classes")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A name the list and tag readers would change (path, whitespace, comment, image suffix) cannot be kept.
_SAFE_IMAGE_NAME = re.compile(r"[^\s/\\#][^\s/\\]*")
_LIST_SUFFIXES = (".jpg", ".jpeg", ".png")  # read_list_file strips these from a name


def export_folder(
    dataset: TaggedImageDataset,
    out: str | os.PathLike,
    *,
    splits: Mapping[str, Sequence[str]] | None = None,
    with_masks: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``dataset`` into the folder ``out`` in the ``folder`` layout; return what was written.

    ``splits`` maps a list name to image names (each among ``dataset.names``) and writes
    ``out/<name>.txt`` (the folder's split ``all`` needs no list). Tags are the dataset's
    image-level labels, so a dataset whose labels come from a labels file keeps them; masks are
    written when the source has them and ``with_masks``. ``out`` must be new or empty unless
    ``overwrite``, which replaces the export's files and removes images and masks that a
    previous export left and this one does not write (other files stay).

    Returns ``{"root", "source", "images", "masks", "classes", "splits": {name: size}, "removed",
    "seconds"}``; ``splits`` includes ``all``.
    """
    start = time.perf_counter()
    out = Path(out)
    if len(dataset) == 0:
        raise DataError(f"{dataset.source or 'the dataset'} has no images; there is nothing to export")
    foreground = _check_class_names(dataset.class_names)
    lists = _check_splits(splits or {}, dataset.names)
    image_files = _image_file_names(dataset)
    write_masks = with_masks and dataset.has_masks
    _check_out(out, dataset, overwrite)

    # Written last: until then an overwritten folder does not load with the old class list.
    (out / CLASSES_FILE).unlink(missing_ok=True)
    removed = _remove_stale(out, set(image_files), set(dataset.names) if write_masks else set())
    rows: list[list[str]] = []
    for i in tqdm(range(len(dataset)), desc="export", unit="img", disable=not progress):
        _copy_file(dataset.image_path(i), out / IMAGE_DIR / image_files[i])
        if write_masks:
            _write_mask(dataset, i, out / MASK_DIR / f"{dataset.names[i]}.png")
        tags = [foreground[k] for k in np.flatnonzero(dataset.labels[i] > 0)]
        rows.append([image_files[i], _tag_field(tags)])

    for name, names in lists.items():
        write_text(out / f"{name}.txt", "".join(f"{n}\n" for n in names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "tags"])
    writer.writerows(rows)
    write_text(out / TAGS_FILE, buffer.getvalue())
    write_text(out / CLASSES_FILE, "".join(f"{c}\n" for c in foreground))
    return {
        "root": str(out),
        "source": dataset.source,
        "images": len(dataset),
        "masks": len(dataset) if write_masks else 0,
        "classes": len(foreground),
        "splits": {"all": len(dataset), **{name: len(names) for name, names in lists.items()}},
        "removed": removed,
        "seconds": round(time.perf_counter() - start, 2),
    }


def split_names(dataset: str, root: str | os.PathLike, split: str, **build_kwargs: Any) -> list[str]:
    """The image names of ``split`` of a dataset, read from its list file where the layout is known.

    Why not build the dataset: a VOC split's labels may come from its masks, and reading every
    mask only to learn the names would cost minutes on large sets. An unknown layout is built
    (without masks) all the same.
    """
    root = Path(root)
    if dataset in ("voc", "synth"):
        from wsss.data.voc import find_voc_root

        return read_list_file(resolve_list_file(split, find_voc_root(root) / "ImageSets" / "Segmentation"))
    if dataset == "coco":
        return read_list_file(resolve_list_file(split, root / "ImageSets" / "Segmentation"))
    if dataset == "folder":
        if split == "all":
            return sorted(index_images(root / build_kwargs.get("image_dir", IMAGE_DIR)))
        return read_list_file(resolve_list_file(split, root))
    ds = DATASETS.build(dataset, where="--dataset", root=root, split=split, with_masks=False, **build_kwargs)
    return list(ds.names)


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    """The foreground names, each one classes.txt and a tags.csv field can hold unchanged."""
    if not class_names or class_names[0] != "background":
        raise DataError(f"the dataset's classes must start with 'background' (got {list(class_names[:3])})")
    foreground = [str(c) for c in class_names[1:]]
    if not foreground:
        raise DataError("the dataset has no foreground class; classes.txt would be empty")
    for name in foreground:
        if not name or name != name.strip() or ";" in name or "\n" in name or "\r" in name:
            raise DataError(
                f"class name {name!r} cannot be written to classes.txt/tags.csv (no ';', line breaks or "
                "leading/trailing spaces); rename it in the source's classes.txt"
            )
        if name == "background":
            raise DataError("'background' is listed as a foreground class; it must be index 0 only")
    return foreground


def _check_splits(splits: Mapping[str, Sequence[str]], names: Sequence[str]) -> dict[str, list[str]]:
    """Each list's name is a plain file name and its images are among the exported ones."""
    exported = set(names)
    checked: dict[str, list[str]] = {}
    for split, split_list in splits.items():
        if not _SPLIT_NAME.fullmatch(split) or split.lower().endswith(".txt"):
            raise ConfigError(
                f"split list name '{split}' must be a plain name (letters, digits, '_', '-', '.'; no '.txt')"
            )
        if split in _RESERVED_SPLITS:
            raise ConfigError(
                f"split list name '{split}' is taken ('all' already means every image of the folder, "
                "classes.txt is the class list); choose another name"
            )
        split_list = [str(n) for n in split_list]
        if not split_list:
            raise DataError(f"split '{split}' names no images; a split list must name at least one")
        if len(set(split_list)) != len(split_list):
            dupes = sorted({n for n in split_list if split_list.count(n) > 1})
            raise DataError(f"split '{split}' names images twice: {name_preview(dupes)}")
        missing = [n for n in split_list if n not in exported]
        if missing:
            raise DataError(
                f"split '{split}' names {len(missing)} image(s) that are not exported: {name_preview(missing)}; "
                "export a split that holds them (e.g. split 'all')"
            )
        checked[split] = split_list
    return checked


def _image_file_names(dataset: TaggedImageDataset) -> list[str]:
    """``<name><suffix>`` per image; refuses names the folder loader would read back differently."""
    files = []
    for i, name in enumerate(dataset.names):
        suffix = dataset.image_path(i).suffix
        if suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"image {dataset.image_path(i)} has suffix '{suffix}'; the folder layout reads "
                f"{', '.join(IMAGE_SUFFIXES)}: convert it first"
            )
        if not _SAFE_IMAGE_NAME.fullmatch(name) or Path(name).suffix.lower() in _LIST_SUFFIXES:
            raise DataError(
                f"image name '{name}' cannot be kept in a folder dataset (split lists read it differently: "
                "no spaces, '/', '\\', leading '#' or image suffix); rename the image and its list entries"
            )
        files.append(f"{name}{suffix}")
    return files


def _check_out(out: Path, dataset: TaggedImageDataset, overwrite: bool) -> None:
    """``out`` is new or empty (or ``overwrite``), and never the folder the source files live in."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder; choose a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    resolved = out.resolve()
    for i in range(len(dataset)):
        for path in (dataset.image_path(i), dataset.mask_path(i)):
            if path is not None and resolved in path.resolve().parents:
                raise DataError(
                    f"output {out} holds the source's own files (e.g. {path}); choose a folder outside the "
                    "source dataset"
                )
    if not overwrite:
        raise DataError(
            f"output folder {out} is not empty; choose a new or empty folder, or pass overwrite=True "
            "(CLI: --overwrite) to replace an earlier export there"
        )


def _remove_stale(out: Path, image_files: set[str], mask_names: set[str]) -> int:
    """Delete the images, masks and tags.json an earlier export left that this one does not replace:
    the loader would take them for images (or the tag source) of the new folder."""
    stale = [out / "tags.json"]
    if (out / IMAGE_DIR).is_dir():
        stale += [
            p
            for p in (out / IMAGE_DIR).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in image_files
        ]
    if (out / MASK_DIR).is_dir():
        stale += [p for p in (out / MASK_DIR).glob("*.png") if p.stem not in mask_names]
    removed = 0
    for path in stale:
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def _copy_file(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _write_mask(dataset: TaggedImageDataset, i: int, dst: Path) -> None:
    """The source mask (checked against its image's size) as a grey 'L' PNG, values checked."""
    mask = dataset.read_mask(i)
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts[dataset.num_classes :])
    if bad.size:
        raise DataError(
            f"mask {dataset.mask_path(i)} holds class index {int(bad[0]) + dataset.num_classes} but the "
            f"dataset has {dataset.num_classes} classes (0..{dataset.num_classes - 1}, 255 = ignore); "
            "fix the mask or the classes.txt"
        )
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    with atomic_path(dst) as tmp:
        image.save(tmp, format="PNG")


def _tag_field(tags: Sequence[str]) -> str:
    """``cat;dog``; a lone tag with a space gets a trailing ';' (without one the reader splits on spaces)."""
    field = ";".join(tags)
    return f"{field};" if len(tags) == 1 and any(ch.isspace() for ch in field) else field
