"""The one dataset class every layout (VOC, COCO, folder, synth) builds, plus the checks they share.

A layout-specific builder only has to work out, per image, its name, image path, optional mask
path and image-level label vector; reading, size checks and transforms live here, so every
dataset answers the same interface and fails with the same kind of message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from wsss.data.classes import COCO_CLASSES, VOC_CLASSES
from wsss.data.images import format_size, image_header, image_size, read_image
from wsss.data.labels import labels_from_masks, load_image_labels
from wsss.data.palette import IGNORE_INDEX, check_mask_mode, read_label_png
from wsss.data.textfiles import check_name_inside, read_user_text
from wsss.errors import DataError

_SHOW = 5  # how many offending names an error message lists


def name_preview(names: Sequence[str], show: int = _SHOW, sep: str = ", ") -> str:
    """'a, b, c … (+7 more)' for error messages."""
    head = sep.join(str(n) for n in names[:show])
    return head + (f" … (+{len(names) - show} more)" if len(names) > show else "")


def under_root(root: Path, folder: str | os.PathLike) -> Path:
    """``folder`` as given when absolute, else inside the dataset ``root``."""
    folder = Path(folder)
    return folder if folder.is_absolute() else root / folder


def read_list_file(path: str | os.PathLike) -> list[str]:
    """Image names from a split list, one per line.

    Only the first token of a line counts, and a path-like token is reduced to its stem,
    so DeepLab-style lists (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``) work too.
    Blank lines and ``#`` comments are skipped; a UTF-8 BOM and Windows line ends are fine. A name
    listed twice, or one that climbs out of the dataset (``../x``), is an error.
    """
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_user_text(path, "split list").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        check_name_inside(token, f"split list {path}, line {lineno}")
        if "/" in token or "\\" in token or Path(token).suffix.lower() in (".jpg", ".jpeg", ".png"):
            token = Path(token.replace("\\", "/")).stem
        if token in seen:
            raise DataError(
                f"split list {path}, line {lineno}: '{token}' is listed twice (first on line {seen[token]}); "
                "delete one of the lines"
            )
        seen[token] = lineno
        names.append(token)
    if not names:
        raise DataError(f"split list {path} names no images; write one image name per line")
    return names


def resolve_list_file(split: str, list_dir: Path) -> Path:
    """``split`` is a name (``list_dir/<split>.txt``) or a path to a list file."""
    candidate = list_dir / f"{split}.txt"
    if candidate.is_file():
        return candidate
    as_path = Path(split)
    if as_path.is_file():
        return as_path
    available = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
    raise DataError(
        f"split '{split}': neither {candidate} nor a list file at that path exists; "
        f"splits in {list_dir}: {', '.join(available) or '(none)'}"
    )


def read_class_names(path: str | os.PathLike, background_optional: bool = False) -> tuple[str, ...]:
    """Class names from ``classes.txt`` (one per line); the result always starts with ``background``.

    VOC-style datasets require the first line to be ``background``; with
    ``background_optional`` a file of foreground names only gets it prepended.
    """
    path = Path(path)
    names = [ln.strip() for ln in read_user_text(path, "class list").splitlines() if ln.strip()]
    if not names:
        raise DataError(f"class list {path} is empty; write the class names there, one per line")
    if names[0] != "background":
        if not background_optional:
            raise DataError(
                f"class list {path}: the first line must be 'background' (got '{names[0]}'); add it above "
                "the class names"
            )
        if "background" in names:
            raise DataError(
                f"class list {path}: 'background' is on line {names.index('background') + 1} of the names; "
                "it may only be the first line (class index 0), or be left out: move or delete it"
            )
        names.insert(0, "background")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(
            f"class list {path}: duplicate class names {dupes}; each class must be listed once (delete the "
            "repeats)"
        )
    if len(names) > 255:
        raise DataError(
            f"class list {path}: {len(names)} classes, at most 255 fit a PNG mask with 255 = ignore"
        )
    return tuple(names)


BUILTIN_CLASS_LISTS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}  # index 0 background, as masks use


def class_list(spec: str | os.PathLike) -> tuple[str, ...]:
    """Class names by name (``voc``: 21, ``coco``: 81, in the converters' mask order) or from a
    ``classes.txt`` path, so scoring VOC needs no class file of one's own.

    A file follows the folder dataset's convention: foreground names in mask-index order (index 1
    first), with an optional leading ``background`` line. One convention for every command: a
    foreground-only file read as background-first shifted every class name by one."""
    if str(spec).lower() in BUILTIN_CLASS_LISTS:
        return BUILTIN_CLASS_LISTS[str(spec).lower()]
    if not Path(spec).is_file():
        raise DataError(
            f"class list '{spec}' is neither {' nor '.join(BUILTIN_CLASS_LISTS)} nor a file; give one of "
            "those names or the path of a classes.txt (foreground names one per line, index 1 first; "
            "a leading 'background' line is optional)"
        )
    return read_class_names(spec, background_optional=True)


def check_files_exist(paths: Sequence[Path], list_file: Path | str, what: str = "image") -> None:
    """One DataError naming the list file and the first missing files, with their count."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"split list {list_file} names {len(missing)} {what}(s) that do not exist "
            f"(of {len(paths)}): {name_preview(missing)}; add the files or remove their names from the list"
        )


def find_masks(names: Sequence[str], mask_paths: Sequence[Path], strict: bool) -> list[Path] | None:
    """All mask paths when every mask exists, ``None`` when none does.

    Some but not all is an error when ``strict`` (a silently missing ground truth would
    change evaluation numbers) and ``None`` otherwise.
    """
    exists = [p.is_file() for p in mask_paths]
    if all(exists):
        return list(mask_paths)
    if not any(exists) or not strict:
        return None
    missing = [str(p) for p, ok in zip(mask_paths, exists) if not ok]
    raise DataError(
        f"{len(missing)} of {len(names)} masks are missing: {name_preview(missing)}; point mask_dir at a "
        "folder holding a mask for every listed image (e.g. SegmentationClassAug for train_aug) "
        "or load without masks (with_masks=False)"
    )


def stack_labels(
    names: Sequence[str], labels: dict[str, np.ndarray], source: Path | str, k: int
) -> np.ndarray:
    """(N, K) float32 labels in ``names`` order; names absent from ``labels`` are one error."""
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(
            f"{source} has no image-level labels for {len(missing)} of {len(names)} listed images: "
            f"{name_preview(missing)}; add a line for each (an empty tag list means background only) or "
            "remove them from the split"
        )
    out = np.zeros((len(names), k), dtype=np.float32)
    for i, n in enumerate(names):
        vec = np.asarray(labels[n], dtype=np.float32)
        if vec.shape != (k,):
            raise DataError(f"{source}: label of '{n}' has shape {vec.shape}, expected ({k},)")
        out[i] = vec
    return out


def labels_from_mask_files(names: Sequence[str], mask_paths: Sequence[Path], num_classes: int) -> np.ndarray:
    """(N, K) labels derived from the masks (the mask stems must be the names).

    Reading every mask takes a while on large sets (VOC train_aug: a labels file is faster),
    so a progress bar appears from 1,000 masks on.
    """
    from_masks = labels_from_masks(mask_paths, num_classes, progress=len(mask_paths) >= 1000)
    by_name = {n: from_masks[p.stem] for n, p in zip(names, mask_paths)}
    return stack_labels(names, by_name, "the masks", num_classes - 1)


def resolve_image_labels(
    names: Sequence[str],
    class_names: Sequence[str],
    *,
    labels_file: str | os.PathLike | None,
    mask_paths: Sequence[Path] | None,
    none_found: str,
    default_labels_file: Path | None = None,
    fallback: Callable[[], np.ndarray] | None = None,
) -> np.ndarray:
    """(N, K) image-level labels from the first source that exists, the order every layout shares.

    ``labels_file``, else ``default_labels_file`` when that file exists, else the masks (when
    every image has one), else ``fallback`` (a layout's own source, e.g. VOC's XML), else a
    DataError whose message is ``none_found`` (it names the dataset and says what to provide).
    """
    if labels_file is None and default_labels_file is not None and default_labels_file.is_file():
        labels_file = default_labels_file
    if labels_file is not None:
        return stack_labels(
            names, load_image_labels(labels_file, class_names), labels_file, len(class_names) - 1
        )
    if mask_paths is not None:
        return labels_from_mask_files(names, mask_paths, len(class_names))
    if fallback is not None:
        return fallback()
    raise DataError(none_found)


class TaggedImageDataset(Dataset):
    """Images with image-level tags and, when available, pixel masks.

    ``__getitem__`` returns ``{"name", "image" (tv_tensors.Image uint8 3xHxW before the
    transform), "labels" (float32 (K,)), "size" (original (H, W)), "mask" (tv_tensors.Mask
    int64 HxW; only when masks exist and ``with_masks``)}``. ``transform`` is a
    ``torchvision.transforms.v2`` transform (or any callable) applied to the dict
    ``{"image": …, "mask": …}`` so image and mask get the same random parameters.
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        image_paths: Sequence[Path],
        labels: np.ndarray,
        class_names: Sequence[str],
        mask_paths: Sequence[Path] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        with_masks: bool = True,
        source: str = "",
    ) -> None:
        self.names = list(names)
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.labels = np.asarray(labels, dtype=np.float32)
        self._image_paths = [Path(p) for p in image_paths]
        self._mask_paths = [Path(p) for p in mask_paths] if mask_paths is not None else None
        self.transform = transform
        self.with_masks = with_masks
        self.source = source
        n = len(self.names)
        if len(self._image_paths) != n or self.labels.shape != (n, self.num_classes - 1):
            raise ValueError(
                f"inconsistent dataset: {n} names, {len(self._image_paths)} images, labels {self.labels.shape}"
            )
        if self._mask_paths is not None and len(self._mask_paths) != n:
            raise ValueError(f"inconsistent dataset: {n} names but {len(self._mask_paths)} masks")

    @property
    def has_masks(self) -> bool:
        """Whether every image has a mask file."""
        return self._mask_paths is not None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source or '?'}: {len(self)} images, {self.num_classes} classes, "
            f"masks={'yes' if self.has_masks else 'no'})"
        )

    def image_path(self, i: int) -> Path:
        return self._image_paths[i]

    def mask_path(self, i: int) -> Path | None:
        return self._mask_paths[i] if self._mask_paths is not None else None

    def subset(
        self,
        indices: Sequence[int],
        *,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        source: str = "",
    ) -> TaggedImageDataset:
        """The images at ``indices`` (in that order) with the same classes and masks, and ``transform``
        (default: this dataset's), so one loaded split serves differently augmented subsets."""
        idx = [int(i) for i in indices]
        return TaggedImageDataset(
            names=[self.names[i] for i in idx],
            image_paths=[self._image_paths[i] for i in idx],
            labels=self.labels[idx].reshape(len(idx), self.num_classes - 1),
            class_names=self.class_names,
            mask_paths=[self._mask_paths[i] for i in idx] if self._mask_paths is not None else None,
            transform=transform if transform is not None else self.transform,
            with_masks=self.with_masks,
            source=source or self.source,
        )

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` read from its header."""
        return image_size(self._image_paths[i])

    def read_mask(self, i: int, expected_size: tuple[int, int] | None = None) -> np.ndarray:
        """HxW uint8 mask of image ``i``, checked against the image's size."""
        path = self.mask_path(i)
        if path is None:
            raise DataError(f"{self.source or 'dataset'} has no masks (image '{self.names[i]}')")
        mask = read_label_png(path, expected_size=expected_size or self.image_size(i))
        check_mask_values(mask, path, self.class_names)
        return mask

    def class_image_counts(self) -> np.ndarray:
        """(K,) number of images tagged with each foreground class."""
        return (self.labels > 0).sum(axis=0).astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        array = read_image(self._image_paths[i])
        size = (int(array.shape[0]), int(array.shape[1]))
        data: dict[str, Any] = {"image": tv_tensors.Image(torch.from_numpy(array.transpose(2, 0, 1).copy()))}
        if self.with_masks and self._mask_paths is not None:
            mask = read_label_png(self._mask_paths[i], expected_size=size)
            check_mask_values(mask, self._mask_paths[i], self.class_names)
            data["mask"] = tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
        if self.transform is not None:
            data = self.transform(data)
        sample: dict[str, Any] = {
            "name": self.names[i],
            "image": data["image"],
            "labels": torch.from_numpy(self.labels[i].copy()),
            "size": size,
        }
        if "mask" in data:
            sample["mask"] = data["mask"]
        return sample


def check_mask_values(mask: np.ndarray, path: Path, class_names: Sequence[str]) -> None:
    """A DataError when ``mask`` holds a value that is neither a class index nor 255 (ignore):
    such a pixel would be scored or trained as a class that does not exist."""
    num_classes = len(class_names)
    if num_classes >= IGNORE_INDEX:
        return
    if int(mask.max(initial=0)) < num_classes:
        return
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts[num_classes:]) + num_classes
    if bad.size:
        raise DataError(
            f"mask {path} holds class index {int(bad[0])}, but the dataset has {num_classes} classes "
            f"(0..{num_classes - 1}, 255 = ignore); fix the mask, or add the class to the class list"
        )


def header_problems(
    ds: TaggedImageDataset, *, desc: str = "check files", progress: bool = False
) -> list[str]:
    """What the file headers alone show wrong: an unreadable image or mask, a mask that is not an
    8-bit index map (RGB, 16-bit), or a mask whose size differs from its image's. PIL reads only the
    header, so this costs seconds where decoding every file (``wsss data check``) costs minutes."""
    problems = []
    for i in tqdm(range(len(ds)), desc=desc, unit="img", disable=not progress):
        try:
            size, mask = ds.image_size(i), ds.mask_path(i)
            mask_size = size
            if mask is not None:
                mask_size, mode = image_header(mask, what="mask")
                check_mask_mode(mode, mask)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if mask_size != size:
            problems.append(
                f"mask {mask} is {format_size(mask_size)} but its image {ds.image_path(i)} is {format_size(size)}"
            )
    return problems


def check_file_headers(ds: TaggedImageDataset, *, desc: str = "check files", progress: bool = False) -> None:
    """One DataError for every header problem of ``ds`` (see :func:`header_problems`), so a run
    stops before its first stage rather than hours later at the stage that reads the file."""
    problems = header_problems(ds, desc=desc, progress=progress)
    if problems:
        raise DataError(
            f"{ds.source}: {len(problems)} of {len(ds)} images have a bad image or mask file (sizes WxH): "
            f"{name_preview(problems, sep='; ')}; a mask must be an 8-bit index map of its image's size: "
            "re-create these files, or remove their names from the split list"
        )
