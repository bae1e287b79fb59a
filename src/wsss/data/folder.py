"""Users' own data: a folder of images, a tags file and a class list (``folder`` dataset).

Layout under ``root``::

    images/<name>.<jpg|jpeg|png|bmp|webp|tif>
    classes.txt        the foreground class names, one per line, in mask-index order
                       (index 1 first); a leading 'background' line is optional
    tags.csv           'image,tags' header, then e.g. 'cat1.jpg,cat;dog'   (or tags.json:
                       {"cat1.jpg": ["cat", "dog"]}); ``labels_file`` overrides it
    masks/<name>.png   optional index masks (0 background, k class k, 255 ignore)

``split`` is ``all`` (every image in ``images/``), a list-file name in ``root``
(``root/<split>.txt``) or a path to a list file. Without a tags file the labels come from
the masks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from wsss.errors import DataError
from wsss.registry import DATASETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TAG_FILES = ("tags.csv", "tags.json")


def index_images(image_dir: Path) -> dict[str, Path]:
    """Map image stem → file; two files with the same stem are ambiguous."""
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: {image_dir}")
    found: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"{image_dir}: '{found[path.stem].name}' and '{path.name}' have the same name")
        found[path.stem] = path
    if not found:
        raise DataError(f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _default_tags_file(root: Path) -> Path | None:
    present = [root / f for f in TAG_FILES if (root / f).is_file()]
    if len(present) > 1:
        raise DataError(f"{root} has both tags.csv and tags.json; remove one or pass labels_file")
    return present[0] if present else None


@DATASETS.register("folder")
def build_folder(
    root: str | os.PathLike,
    split: str = "all",
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    labels_file: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    with_masks: bool = True,
    image_dir: str = "images",
) -> TaggedImageDataset:
    """A folder of tagged images (see the module doc for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise DataError(f"{classes_file} not found: list the foreground class names there, one per line")
    class_names = read_class_names(classes_file, background_optional=True)
    images = index_images(root / image_dir)
    if split == "all":
        names, source = sorted(images), f"{root / image_dir} (split 'all')"
    else:
        list_file = resolve_list_file(split, root)
        names, source = read_list_file(list_file), str(list_file)
        missing = [n for n in names if n not in images]
        if missing:
            raise DataError(
                f"split list {list_file} names {len(missing)} image(s) not found in {root / image_dir}: "
                f"{name_preview(missing)}; add the images there or remove their names from the list"
            )
    image_paths = [images[n] for n in names]
    check_files_exist(image_paths, source)
    masks_root = under_root(root, mask_dir if mask_dir is not None else "masks")
    mask_paths = find_masks(names, [masks_root / f"{n}.png" for n in names], strict=with_masks)
    labels = resolve_image_labels(
        names,
        class_names,
        labels_file=labels_file if labels_file is not None else _default_tags_file(root),
        mask_paths=mask_paths,
        none_found=(
            f"no image-level labels for {root}: add {root / 'tags.csv'} ('image,tags' lines) or tags.json, "
            "pass labels_file, or provide masks/<name>.png for every image"
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
        source=source,
    )
