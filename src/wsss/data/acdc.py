"""ACDC (cardiac MRI) as 2-D slices: the NIfTI → PNG exporter and the ``acdc`` dataset.

Why slices: the WSSS methods here are 2-D; the ACDC convention (UniA's resolution, seed_methods
§5.8) scores 2-D slices whose image-level tags are the presence of RV / Myo / LV.

Source (the ACDC download; ``src_root`` may be the ``database`` folder, its ``training`` or
``testing`` folder, or a folder of patient folders)::

    patientNNN/patientNNN_frameMM.nii.gz      H x W x S volume (slices along the last axis)
    patientNNN/patientNNN_frameMM_gt.nii.gz   same shape, 0 background, 1 RV, 2 Myo, 3 LV

Only frames with a ``_gt`` file are exported (the end-diastolic and end-systolic ones).
Export layout under ``out_root`` (the VOC layout, so ``voc`` with ``image_ext: .png`` reads it too)::

    JPEGImages/patientNNN_frameMM_sKK.png         8-bit grey PNG (read as RGB, 3 equal channels)
    SegmentationClass/patientNNN_frameMM_sKK.png  palette PNG of 0..3
    ImageSets/Segmentation/{train,val,test}.txt   slice names; a patient is in one split only
    cls_labels.npz                                image-level tags (classes present in the mask)
    classes.txt                                   background, RV, Myo, LV
    acdc_export.json                              the export's settings and counts

Intensities (arbitrary scale, int16 or float) become 8 bits by a per-volume window: the 1st and
99th percentiles ``lo``, ``hi`` of all the frame's voxels map to 0 and 255,
``round(clip((v - lo) / (hi - lo), 0, 1) * 255)``, so a few bright voxels do not darken the
heart. Splits are by patient: ``testing/`` patients form ``test``; of the others, every
``val_every``-th patient number is ``val`` (ACDC numbers patients in blocks of 20 per pathology,
so every 5th gives 4 of each group: a stratified 20 %), unless ``val_patients`` names them.
Reading NIfTI needs nibabel (``pip install wsss[acdc]``), imported only when exporting.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.base import TaggedImageDataset, name_preview
from wsss.data.labels import write_labels
from wsss.data.palette import read_label_png, write_label_png
from wsss.data.voc import build_voc
from wsss.errors import ConfigError, DataError
from wsss.files import atomic_path, write_json, write_text
from wsss.registry import DATASETS

ACDC_CLASSES: tuple[str, ...] = ("background", "RV", "Myo", "LV")
WINDOW_PERCENTILES = (1.0, 99.0)
EXPORT_FILE = "acdc_export.json"
LABELS_FILE = "cls_labels.npz"
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
LIST_DIR = Path("ImageSets") / "Segmentation"
EXPORT_COMMAND = "wsss data acdc --src {src} --root OUT"

_PATIENT = re.compile(r"patient\d+")
_FRAME = re.compile(r"(patient\d+_frame\d+)\.nii(\.gz)?")


def _nibabel() -> Any:
    try:
        import nibabel
    except ModuleNotFoundError as exc:
        raise DataError(
            "reading ACDC NIfTI volumes needs nibabel: pip install wsss[acdc] (or export the PNG slices "
            "on a machine that has it and copy them here)"
        ) from exc
    return nibabel


def window_to_uint8(volume: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """``volume`` as uint8 by its own percentile window (see the module doc); a flat volume
    (``hi <= lo``) is 0, with 255 only where a voxel exceeds ``hi``."""
    v = np.asarray(volume, dtype=np.float64)
    if not np.isfinite(v).all():
        raise DataError("the volume holds NaN or infinite intensities; they cannot be windowed")
    lo, hi = np.percentile(v, percentiles)
    if hi <= lo:
        return np.where(v > hi, 255, 0).astype(np.uint8)
    return np.rint(np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _patient_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT.fullmatch(p.name))


def find_acdc_patients(src_root: str | os.PathLike) -> dict[str, tuple[Path, bool]]:
    """Patient id → (its folder, whether it comes from a ``testing`` folder)."""
    root = Path(src_root)
    if not root.is_dir():
        raise DataError(f"ACDC folder not found: {root}")
    found: dict[str, tuple[Path, bool]] = {}
    for base in (root, root / "database"):
        for sub, testing in (
            (base, base.name == "testing"),
            (base / "training", False),
            (base / "testing", True),
        ):
            for folder in _patient_dirs(sub):
                if folder.name in found and found[folder.name][0] != folder:
                    raise DataError(
                        f"{root}: patient {folder.name} is in {found[folder.name][0]} and {folder}"
                    )
                found[folder.name] = (folder, testing)
    if not found:
        raise DataError(
            f"{root} holds no ACDC patient folders (patientNNN/ with patientNNN_frameMM[_gt].nii.gz, "
            "directly or under training/ or testing/)"
        )
    return dict(sorted(found.items()))


def looks_like_raw_acdc(root: str | os.PathLike) -> bool:
    """Whether ``root`` is an ACDC download (patient folders of NIfTI files), not an export."""
    try:
        patients = find_acdc_patients(root)
    except DataError:
        return False
    return any(any(folder.glob("*.nii*")) for folder, _ in patients.values())


def frame_pairs(patient_dir: Path) -> list[tuple[str, Path, Path]]:
    """(frame name, image volume, ground-truth volume) of every frame with a ``_gt`` file."""
    pairs = []
    for path in sorted(patient_dir.iterdir()):
        match = _FRAME.fullmatch(path.name)
        if match is None:
            continue
        gt = path.with_name(f"{match.group(1)}_gt.nii{match.group(2) or ''}")
        if gt.is_file():
            pairs.append((match.group(1), path, gt))
    return pairs


def patient_splits(
    patients: dict[str, tuple[Path, bool]],
    *,
    val_every: int | None = 5,
    val_patients: Iterable[str] | None = None,
) -> dict[str, str]:
    """Patient id → split (``train``, ``val`` or ``test``; see the module doc)."""
    if val_every is not None and val_every < 1:
        raise ConfigError(f"val_every must be a positive integer or None (no val split), got {val_every}")
    chosen = None if val_patients is None else {str(p) for p in val_patients}
    if chosen is not None:
        unknown = sorted(chosen - set(patients))
        if unknown:
            raise ConfigError(
                f"val_patients names {len(unknown)} patient(s) not in the ACDC folder: "
                f"{name_preview(unknown)}"
            )
    splits = {}
    for pid, (_, testing) in patients.items():
        if testing:
            splits[pid] = "test"
        elif chosen is not None:
            splits[pid] = "val" if pid in chosen else "train"
        else:
            is_val = val_every is not None and int(pid.removeprefix("patient")) % val_every == 0
            splits[pid] = "val" if is_val else "train"
    return splits


def _load_volume(nib: Any, path: Path) -> np.ndarray:
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise DataError(f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return _as_3d(data, path)


def _as_3d(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path} has shape {data.shape}; an ACDC frame is H x W x slices")
    return data


def _gt_labels(gt: np.ndarray, path: Path) -> np.ndarray:
    """The ground truth as uint8 0..3, refusing fractional or out-of-range values."""
    values = np.unique(gt)
    bad = [v for v in values if v != np.round(v) or not 0 <= v < len(ACDC_CLASSES)]
    if bad:
        raise DataError(
            f"{path} holds label value(s) {name_preview([f'{v:g}' for v in bad])}; ACDC ground truth is "
            "0 background, 1 RV, 2 Myo, 3 LV"
        )
    return np.round(gt).astype(np.uint8)


def _resize(slice_2d: np.ndarray, size: int | None, resample: Image.Resampling) -> np.ndarray:
    if size is None or slice_2d.shape == (size, size):
        return slice_2d
    return np.asarray(Image.fromarray(slice_2d).resize((size, size), resample=resample))


def _tags(mask: np.ndarray) -> np.ndarray:
    counts = np.bincount(mask.ravel(), minlength=256)
    return (counts[1 : len(ACDC_CLASSES)] > 0).astype(np.float32)


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """An earlier export into ``out`` with other pixel settings must not be mixed with this one."""
    path = out / EXPORT_FILE
    if overwrite or not path.is_file():
        return
    try:
        before = json.loads(path.read_text()).get("settings", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        before = {}
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
        diff = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
        raise DataError(
            f"{out} holds an ACDC export made with other settings ({diff}); choose a new folder or pass "
            "overwrite=True (CLI: --overwrite) to rewrite every slice"
        )


def export_acdc_slices(
    src_root: str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    size: int | None = None,
    val_every: int | None = 5,
    val_patients: Sequence[str] | None = None,
    skip_empty: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write every ground-truth frame of ``src_root`` as per-slice PNGs into ``out_root``.

    ``size`` resizes each slice to ``size`` x ``size`` (image bilinear after windowing, mask
    nearest); None keeps the scanner's size. Slices whose mask is all background are kept (tags:
    none) unless ``skip_empty``. Slices already on disk are kept unless ``overwrite`` (an
    interrupted export resumes); the split lists, ``classes.txt`` and ``cls_labels.npz`` are
    written last, so a half-done export does not load. Returns counts per split and class.
    """
    start = time.perf_counter()
    if size is not None and size < 1:
        raise ConfigError(f"size must be a positive number of pixels or None, got {size}")
    out = Path(out_root)
    patients = find_acdc_patients(src_root)
    splits = patient_splits(patients, val_every=val_every, val_patients=val_patients)
    settings = {"size": size, "window_percentiles": list(WINDOW_PERCENTILES), "skip_empty": skip_empty}
    _check_settings(out, settings, overwrite)
    nib = _nibabel()
    write_json(out / EXPORT_FILE, {"settings": settings})  # before any slice: a resume checks them
    frames = [(pid, *pair) for pid, (folder, _) in patients.items() for pair in frame_pairs(folder)]
    if not frames:
        raise DataError(f"{src_root}: no frame has a ground truth (patientNNN_frameMM_gt.nii.gz)")

    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    labels: dict[str, np.ndarray] = {}
    written = kept = dropped = empty = 0
    for pid, frame, image_path, gt_path in tqdm(
        frames, desc="ACDC → PNG", unit="frame", disable=not progress
    ):
        gt = _gt_labels(_load_volume(nib, gt_path), gt_path)
        image = _load_volume(nib, image_path)
        if image.shape != gt.shape:
            raise DataError(f"{image_path} has shape {image.shape} but its ground truth {gt_path} {gt.shape}")
        grey = window_to_uint8(image)
        for s in range(gt.shape[2]):
            name = f"{frame}_s{s:02d}"
            mask = _resize(gt[:, :, s], size, Image.Resampling.NEAREST)
            if not mask.any():
                empty += 1
                if skip_empty:
                    dropped += 1
                    continue
            image_file, mask_file = out / IMAGE_DIR / f"{name}.png", out / MASK_DIR / f"{name}.png"
            if image_file.is_file() and mask_file.is_file() and not overwrite:
                kept += 1
                mask = read_label_png(mask_file)
            else:
                with atomic_path(image_file) as tmp:
                    Image.fromarray(_resize(grey[:, :, s], size, Image.Resampling.BILINEAR)).save(tmp, "PNG")
                write_label_png(mask_file, mask)
                written += 1
            names[splits[pid]].append(name)
            labels[name] = _tags(mask)

    if not labels:
        raise DataError(f"{src_root}: every slice is empty and skip_empty is set; there is nothing to load")
    write_labels(out / LABELS_FILE, labels, ACDC_CLASSES)
    write_text(out / "classes.txt", "".join(f"{c}\n" for c in ACDC_CLASSES))
    lists = {}
    for split, split_names in names.items():
        list_file = out / LIST_DIR / f"{split}.txt"
        if split_names:
            write_text(list_file, "".join(f"{n}\n" for n in split_names))
            lists[split] = str(list_file)
        else:
            list_file.unlink(missing_ok=True)  # an earlier export's list would name other slices
    counts = np.stack(list(labels.values())).sum(0).astype(int).tolist()
    summary = {
        "root": str(out),
        "patients": {s: sum(v == s for v in splits.values()) for s in names},
        "frames": len(frames),
        "slices": {s: len(v) for s, v in names.items()},
        "written": written,
        "kept": kept,
        "empty_slices": empty,
        "empty_dropped": dropped,
        "class_slice_counts": dict(zip(ACDC_CLASSES[1:], counts)),
        "list_files": lists,
    }
    write_json(out / EXPORT_FILE, {"settings": settings, "splits": splits, "summary": summary})
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}


@DATASETS.register("acdc")
def build_acdc(
    root: str | os.PathLike,
    split: str = "train",
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    labels_file: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    with_masks: bool = True,
) -> TaggedImageDataset:
    """ACDC slices exported by :func:`export_acdc_slices` (tags from ``cls_labels.npz``, else the masks).

    A raw ACDC folder (patient folders of NIfTI files) is refused with the export command to run.
    """
    if looks_like_raw_acdc(root):
        raise DataError(
            f"{root} is a raw ACDC folder (patient*/ NIfTI volumes); the acdc dataset reads PNG slices: "
            f"export them once with `{EXPORT_COMMAND.format(src=root)}` (or "
            f"wsss.data.acdc.export_acdc_slices('{root}', 'OUT')), then set data.root to OUT"
        )
    if Path(root).is_dir() and not (Path(root) / IMAGE_DIR).is_dir():
        raise DataError(
            f"{root} holds no exported ACDC slices ({IMAGE_DIR}/ is missing); export them with "
            f"`{EXPORT_COMMAND.format(src='ACDC_DIR')}` and set data.root to OUT"
        )
    default_labels = Path(root) / LABELS_FILE
    if labels_file is None and default_labels.is_file():
        labels_file = default_labels
    ds = build_voc(
        root,
        split,
        transform=transform,
        labels_file=labels_file,
        mask_dir=mask_dir,
        with_masks=with_masks,
        image_ext=".png",
    )
    if ds.class_names != ACDC_CLASSES:
        raise DataError(
            f"{root} lists classes {list(ds.class_names)} in classes.txt, not ACDC's {list(ACDC_CLASSES)}; "
            f"export the slices with `{EXPORT_COMMAND.format(src='ACDC_DIR')}`"
        )
    return ds
