"""Image-level labels: the legacy ``cls_labels.npy``, our pickle-free ``.npz``, masks, XML and tag files.

Every reader returns ``{name: float32 multi-hot vector over the K foreground classes}`` (index
``k-1`` is class ``k``), so the datasets do not care where the tags came from.

The research code bases ship ``cls_labels.npy``: a dict pickled by ``np.save`` whose keys are
int32 (IRN, ``2007000032``) or str (TransCAM/ToCo, ``'2007_000032'``). Loading it with
``allow_pickle=True`` would run arbitrary code from a downloaded file, so it is read here
with an unpickler that can only rebuild numpy arrays, scalars and dtypes.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import pickle
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from numpy.lib.npyio import NpzFile
from tqdm import tqdm

from wsss.data.palette import IGNORE_INDEX, read_label_png
from wsss.data.textfiles import check_name_inside, read_user_text
from wsss.errors import DataError
from wsss.files import atomic_open
from wsss.registry import suggest

LABELS_FORMAT_VERSION = 1

# The exact callables numpy pickles reference, found from live objects so that the module
# they live in (``numpy.core`` in numpy 1.x, ``numpy._core`` in 2.x) does not matter.
_RECONSTRUCT = np.array(0).__reduce__()[0]
_SCALAR = np.int32(0).__reduce__()[0]
_FROMBUFFER = np.arange(2).__reduce_ex__(5)[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes this way
    ("builtins", "dict"): dict,
    ("__builtin__", "dict"): dict,
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED_GLOBALS[(f"{_mod}.multiarray", "scalar")] = _SCALAR
    _ALLOWED_GLOBALS[(f"{_mod}.numeric", "_frombuffer")] = _FROMBUFFER

_VOC_INT_KEY = re.compile(r"^(\d{4})(\d{6})$")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, scalars and dicts; refuses every other global."""

    def __init__(self, fh: io.BufferedIOBase, path: Path) -> None:
        super().__init__(fh, encoding="latin1")  # latin1: numpy's rule for Python-2 era pickles
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refusing to unpickle '{module}.{name}': a cls_labels .npy may only hold "
                "a dict of numpy arrays; convert trusted files with `wsss data tags` to the pickle-free .npz"
            ) from None


def read_cls_labels_npy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a legacy ``cls_labels.npy`` (int or str keys) without general unpickling."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    try:
        with path.open("rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            if dtype != np.dtype(object) or shape != ():
                raise DataError(
                    f"{path} holds a {dtype} array of shape {shape}, not the pickled dict of a cls_labels.npy"
                )
            obj = _NumpyOnlyUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # the restricted unpickler runs nothing, so any failure means a damaged file
        raise DataError(
            f"{path} is not a readable cls_labels .npy file ({type(exc).__name__}: {exc}); re-download it, "
            "or write the labels with `wsss data tags`"
        ) from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a pickled {type(obj).__name__}, expected a dict name -> label vector")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        name = _normalise_key(key, path)
        vec = np.asarray(value)
        if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.number):
            raise DataError(f"{path}: the label of '{name}' is not a 1-D numeric vector (shape {vec.shape})")
        out[name] = vec.astype(np.float32)
    _check_same_length(out, path)
    return out


def _normalise_key(key: Any, path: Path) -> str:
    """``2007000032`` → ``'2007_000032'``; str keys stay as they are."""
    if isinstance(key, bytes):
        key = key.decode("latin1")
    if isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)):
        match = _VOC_INT_KEY.match(str(int(key)))
        if match is None:
            raise DataError(
                f"{path}: integer key {int(key)} is not a VOC id (10 digits YYYYNNNNNN); "
                "only VOC-style integer keys can be turned into image names"
            )
        return f"{match.group(1)}_{match.group(2)}"
    raise DataError(f"{path}: unsupported key type {type(key).__name__} ({key!r})")


def _check_same_length(labels: dict[str, np.ndarray], path: Path) -> None:
    lengths = {v.shape[0] for v in labels.values()}
    if len(lengths) > 1:
        raise DataError(f"{path}: label vectors have different lengths {sorted(lengths)}")


def write_labels(path: str | os.PathLike, labels: dict[str, np.ndarray], class_names: Sequence[str]) -> None:
    """Atomically write labels as a pickle-free ``.npz``.

    ``class_names`` is the full list with ``background`` at index 0, so every vector has
    ``len(class_names) - 1`` entries.
    """
    path = Path(path)
    class_names = [str(c) for c in class_names]
    k = len(class_names) - 1
    names = sorted(labels)
    matrix = np.zeros((len(names), k), dtype=np.float32)
    for i, name in enumerate(names):
        vec = np.asarray(labels[name], dtype=np.float32)
        if vec.shape != (k,):
            raise ValueError(f"label of '{name}' has shape {vec.shape}, expected ({k},) for {path}")
        matrix[i] = vec
    with atomic_open(path, "wb") as fh:
        np.savez(
            fh,
            names=np.array(names, dtype=str),
            labels=matrix,
            class_names=np.array(class_names, dtype=str),
            format_version=np.array(LABELS_FORMAT_VERSION, dtype=np.int32),
        )


def read_labels(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Read a ``.npz`` written by :func:`write_labels`: ``(labels, class_names incl. background)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    redo = "write it again with `wsss data tags`"
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, NpzFile):
            raise DataError(f"{path} is a bare .npy array, not a wsss labels .npz; {redo}")
        with z:
            missing = {"names", "labels", "class_names", "format_version"} - set(z.files)
            if missing:
                raise DataError(f"{path} is not a wsss labels file: missing arrays {sorted(missing)}; {redo}")
            version = int(z["format_version"])
            names = [str(n) for n in np.asarray(z["names"]).reshape(-1)]
            matrix = np.asarray(z["labels"], dtype=np.float32)
            class_names = tuple(str(c) for c in np.asarray(z["class_names"]).reshape(-1))
    except DataError:
        raise
    except (ValueError, TypeError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path} is not a readable labels .npz ({type(exc).__name__}: {exc}); {redo}"
        ) from exc
    if version > LABELS_FORMAT_VERSION:
        raise DataError(
            f"{path} has labels format version {version}; this wsss reads up to {LABELS_FORMAT_VERSION} "
            "(upgrade wsss, or write it again with this version's `wsss data tags`)"
        )
    if matrix.shape != (len(names), len(class_names) - 1):
        raise DataError(
            f"{path}: labels array is {matrix.shape}, expected ({len(names)}, {len(class_names) - 1}); {redo}"
        )
    return {n: matrix[i].copy() for i, n in enumerate(names)}, class_names


def labels_from_masks(
    mask_paths: Iterable[str | os.PathLike], num_classes: int, progress: bool = False
) -> dict[str, np.ndarray]:
    """Multi-hot labels from index masks, keyed by file stem; 0 and 255 are not labels.

    ``num_classes`` counts background, so vectors have ``num_classes - 1`` entries. A value
    outside ``0..num_classes-1`` (other than 255) is an error naming the mask.
    """
    out: dict[str, np.ndarray] = {}
    for mask_path in tqdm(mask_paths, desc="labels from masks", unit="mask", disable=not progress):
        mask_path = Path(mask_path)
        counts = np.bincount(read_label_png(mask_path).ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        bad = np.flatnonzero(counts[num_classes:])
        if bad.size:
            raise DataError(
                f"mask {mask_path} contains class index {int(bad[0]) + num_classes} but the dataset has "
                f"{num_classes} classes (0..{num_classes - 1}, 255 = ignore); fix the mask, or add the "
                "class to the class list"
            )
        out[mask_path.stem] = (counts[1:num_classes] > 0).astype(np.float32)
    return out


def labels_from_voc_xml(xml_path: str | os.PathLike, class_names: Sequence[str]) -> np.ndarray:
    """Multi-hot labels from the ``<object><name>`` entries of a VOC annotation (difficult ones too)."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DataError(f"annotation file not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"annotation {xml_path} is not valid XML ({exc})") from exc
    index = {name: i for i, name in enumerate(class_names)}
    vec = np.zeros(len(class_names) - 1, dtype=np.float32)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index or index[name] == 0:
            raise DataError(
                f"annotation {xml_path}: unknown object class '{name}'{suggest(name, class_names[1:])}"
            )
        vec[index[name] - 1] = 1.0
    return vec


def read_tags(path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a users' tags file: CSV ``image,tags`` (header required) or JSON ``{"image": [tags]}``.

    In CSV the tags are separated by ``;`` when the field contains one, else by whitespace
    (so multi-word class names need ``;``). Image names are reduced to their stem. A
    ``background`` tag is accepted and ignored; an unknown class is an error naming the file,
    the line and the closest valid name. A UTF-8 BOM and Windows line ends are fine; an image name
    that climbs out of the dataset (``../x.jpg``) is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tags file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        entries = _read_tags_csv(path)
    elif suffix == ".json":
        entries = _read_tags_json(path)
    else:
        raise DataError(f"tags file {path} must end in .csv or .json")
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, np.ndarray] = {}
    for where, image, tags in entries:
        if not image.strip():
            raise DataError(f"{path}, {where}: empty image name; write the image's file name first")
        check_name_inside(image.strip(), f"{path}, {where}")
        name = _image_stem(image)
        if name in out:
            raise DataError(f"{path}, {where}: image '{name}' is listed twice; merge its tags into one entry")
        vec = np.zeros(len(class_names) - 1, dtype=np.float32)
        for tag in tags:
            if tag not in index:
                raise DataError(
                    f"{path}, {where}: unknown class '{tag}'{suggest(tag, class_names[1:])}; "
                    f"valid classes: {', '.join(class_names[1:])} (fix the tag, or add the class to the "
                    "class list)"
                )
            if index[tag] > 0:
                vec[index[tag] - 1] = 1.0
        out[name] = vec
    return out


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _image_stem(image: str) -> str:
    image = image.strip()
    p = Path(image)
    return p.stem if p.suffix.lower() in _IMAGE_SUFFIXES else p.name


def _split_tags(field: str) -> list[str]:
    parts = field.split(";") if ";" in field else field.split()
    return [t.strip() for t in parts if t.strip()]


def _read_tags_csv(path: Path) -> list[tuple[str, str, list[str]]]:
    reader = csv.reader(io.StringIO(read_user_text(path, "tags file"), newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "tags"]:
            raise DataError(
                f"{path}, line 1: the header must be 'image,tags' (got {header}){_delimiter_hint(header)}"
            )
        entries = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) > 2:
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} columns; put all tags in the second column "
                    "separated by ';' or spaces (quote the field if it contains commas)"
                )
            entries.append((f"line {reader.line_num}", row[0], _split_tags(row[1] if len(row) > 1 else "")))
    except csv.Error as exc:
        raise DataError(
            f"{path}, line {reader.line_num}: not readable as CSV ({exc}); fix that line"
        ) from exc
    return entries


def _delimiter_hint(header: list[str] | None) -> str:
    """What to do about a header row: most often the columns are split by another character."""
    if header is not None and len(header) == 1:
        for sep, name in (("\t", "tabs"), (";", "';'"), ("|", "'|'")):
            if sep in header[0]:
                return (
                    f"; the columns are separated by {name}: a tags CSV separates image and tags by a comma"
                )
    return "; the first line must read image,tags and each further line e.g. cat1.jpg,cat;dog"


def _read_tags_json(path: Path) -> list[tuple[str, str, list[str]]]:
    try:
        data = json.loads(read_user_text(path, "tags file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}); fix the syntax there") from exc
    except RecursionError as exc:
        raise DataError(f"{path}: JSON nested too deeply; a tags file is one object of lists") from exc
    if not isinstance(data, dict):
        raise DataError(
            f'{path}: expected an object {{"image": ["tag", ...]}}, got {type(data).__name__}; write the tags '
            "as one object mapping each image to its list of classes"
        )
    entries = []
    for image, tags in data.items():
        where = f"image '{image}'"
        if isinstance(tags, str):
            tags = _split_tags(tags)
        elif not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(f'{path}, {where}: tags must be a list of class names, e.g. ["cat", "dog"]')
        entries.append((where, image, [t.strip() for t in tags]))
    return entries


def load_image_labels(path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read any supported labels file (``.npy`` legacy, ``.npz``, ``.csv``/``.json`` tags), checked against
    ``class_names`` (incl. background)."""
    path = Path(path)
    suffix = path.suffix.lower()
    k = len(class_names) - 1
    if suffix == ".npy":
        labels = read_cls_labels_npy(path)
    elif suffix == ".npz":
        labels, file_classes = read_labels(path)
        if tuple(file_classes) != tuple(class_names):
            raise DataError(
                f"{path} was written for classes {list(file_classes)}, but the dataset has {list(class_names)}"
            )
    elif suffix in (".csv", ".json"):
        return read_tags(path, class_names)
    else:
        raise DataError(f"labels file {path}: unknown type '{suffix}' (use .npy, .npz, .csv or .json)")
    bad = next((n for n, v in labels.items() if v.shape != (k,)), None)
    if bad is not None:
        raise DataError(
            f"{path}: label of '{bad}' has {labels[bad].shape[0]} entries but the dataset has {k} "
            "foreground classes"
        )
    return labels
