"""PASCAL VOC 2012 layout datasets (``voc``, and ``synth``, which the generator writes in that layout).

Layout under ``root`` (``root`` may also be a folder holding ``VOC2012/`` or ``VOCdevkit/VOC2012/``)::

    JPEGImages/<name>.jpg
    SegmentationClass/<name>.png          palette masks (mask_dir="SegmentationClassAug" for train_aug)
    Annotations/<name>.xml                optional, for image-level labels
    ImageSets/Segmentation/<split>.txt
    classes.txt                           optional; first line 'background'; default VOC_CLASSES

Image-level labels come from, in order: ``labels_file`` (legacy ``cls_labels.npy``, our
``.npz`` or a tags CSV/JSON), the masks (when every listed image has one), the XML
annotations; ``label_source`` forces one of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsss.data.base import (
    TaggedImageDataset,
    check_files_exist,
    find_masks,
    read_class_names,
    read_list_file,
    resolve_image_labels,
    resolve_list_file,
    under_root,
)
from wsss.data.classes import VOC_CLASSES
from wsss.data.labels import labels_from_voc_xml
from wsss.errors import DataError
from wsss.registry import DATASETS

LABEL_SOURCES = ("auto", "file", "masks", "xml")


def find_voc_root(root: str | os.PathLike) -> Path:
    """The folder holding ``JPEGImages``; also looks inside ``VOC2012`` and ``VOCdevkit/VOC2012``."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    if not root.exists():
        raise DataError(f"dataset root not found: {root}")
    raise DataError(
        f"dataset root {root} has no JPEGImages/ folder (nor VOC2012/ or VOCdevkit/VOC2012/ inside)"
    )


def voc_class_names(root: Path) -> tuple[str, ...]:
    """``root/classes.txt`` when present, else the 21 VOC classes."""
    path = root / "classes.txt"
    return read_class_names(path) if path.is_file() else VOC_CLASSES


def voc_image_labels(
    root: Path,
    names: list[str],
    class_names: tuple[str, ...],
    *,
    source: str = "auto",
    labels_file: str | os.PathLike | None = None,
    mask_paths: list[Path] | None = None,
) -> np.ndarray:
    """(N, K) image-level labels for ``names`` from the source ``source`` picks (see module doc)."""
    if source not in LABEL_SOURCES:
        raise DataError(f"label_source '{source}' is not one of {', '.join(LABEL_SOURCES)}")
    if source == "file" and labels_file is None:
        raise DataError("label_source 'file' needs labels_file")
    if source == "masks" and mask_paths is None:
        raise DataError(f"label_source 'masks' but {root} has no mask for every listed image")
    xml_dir = root / "Annotations"

    def from_xml() -> np.ndarray:
        xml_paths = [xml_dir / f"{n}.xml" for n in names]
        check_files_exist(xml_paths, xml_dir, what="annotation")
        return np.stack([labels_from_voc_xml(p, class_names) for p in xml_paths]).astype(np.float32)

    # A forced source hides the others from the shared file -> masks -> fallback order.
    return resolve_image_labels(
        names,
        class_names,
        labels_file=labels_file if source in ("auto", "file") else None,
        mask_paths=mask_paths if source in ("auto", "masks") else None,
        fallback=from_xml if source == "xml" or (source == "auto" and xml_dir.is_dir()) else None,
        none_found=(
            f"no image-level labels for {root}: pass labels_file (cls_labels.npy, labels .npz or tags "
            "CSV/JSON), or provide masks for every listed image, or Annotations/*.xml"
        ),
    )


def build_voc(
    root: str | os.PathLike,
    split: str = "train",
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    labels_file: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    with_masks: bool = True,
    label_source: str = "auto",
    image_dir: str = "JPEGImages",
    image_ext: str = ".jpg",
) -> TaggedImageDataset:
    """A VOC-layout dataset; ``split`` is a name in ``ImageSets/Segmentation`` or a list-file path."""
    voc_root = find_voc_root(root)
    list_file = resolve_list_file(split, voc_root / "ImageSets" / "Segmentation")
    names = read_list_file(list_file)
    class_names = voc_class_names(voc_root)
    image_paths = [under_root(voc_root, image_dir) / f"{n}{image_ext}" for n in names]
    check_files_exist(image_paths, list_file)
    masks_root = under_root(voc_root, mask_dir or "SegmentationClass")
    mask_paths = find_masks(names, [masks_root / f"{n}.png" for n in names], strict=with_masks)
    labels = voc_image_labels(
        voc_root, names, class_names, source=label_source, labels_file=labels_file, mask_paths=mask_paths
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


DATASETS.register("voc")(build_voc)


@DATASETS.register("synth")
def build_synth(
    root: str | os.PathLike,
    split: str = "train",
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    labels_file: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    with_masks: bool = True,
    label_source: str = "auto",
) -> TaggedImageDataset:
    """The embedded synthetic dataset: VOC layout with ``classes.txt``, read by :func:`build_voc`."""
    if not (Path(root) / "classes.txt").is_file():
        raise DataError(
            f"{root} holds no generated synthetic dataset (no classes.txt); create it with "
            f"`wsss data synth --root {root}`"
        )
    return build_voc(
        root,
        split,
        transform=transform,
        labels_file=labels_file,
        mask_dir=mask_dir,
        with_masks=with_masks,
        label_source=label_source,
    )
