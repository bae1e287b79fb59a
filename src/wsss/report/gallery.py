"""Picture rows for the report: image | ground truth | CAM overlay | pseudo-mask | prediction.

Rows are chosen three ways: an even sample of the split (what a typical image looks like), and
the best and worst images by per-image mIoU of the final output (where the method works and
where it fails), since a mean hides both. Every picture is a small PNG held in memory so the
report can embed it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from wsss.cams.files import is_complete as cam_file_complete
from wsss.cams.files import load_cam
from wsss.data.images import read_image
from wsss.data.palette import IGNORE_INDEX, read_label_png, voc_palette
from wsss.eval.confusion import confusion_matrix
from wsss.eval.metrics import mean_iou

COLUMNS = ("image", "ground truth", "CAM", "pseudo-mask", "prediction")
_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
_IGNORE_RGB = np.array([255, 255, 255], dtype=np.uint8)  # white, as VOC's boundary class is drawn


@dataclass
class ImageRow:
    """One image's pictures (PNG bytes or None when that output does not exist) and its score."""

    name: str
    pictures: dict[str, bytes | None]
    classes: list[str]
    score: float | None = None  # per-image mIoU of the scored output against ground truth
    scored: str | None = None  # which output the score is of


@dataclass
class Gallery:
    split: str
    sample: list[ImageRow] = field(default_factory=list)
    best: list[ImageRow] = field(default_factory=list)
    worst: list[ImageRow] = field(default_factory=list)
    scored_output: str | None = None  # e.g. "prediction"; None when the split has no ground truth
    size: int = 0  # images in the split
    ranked: int = 0  # images scored for the best / worst rows


def per_image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> float | None:
    """One image's mIoU over the classes present in either map; None if nothing can be scored.

    The dataset-level scoring applied to one image (:func:`confusion_matrix`, mean ``all``), so an
    uncertain (255) pixel of a pseudo-mask counts as background here exactly as in ``eval/``.
    """
    if num_classes is None:  # enough classes for every label either map holds
        num_classes = (
            int(max(pred[pred != IGNORE_INDEX].max(initial=0), gt[gt != IGNORE_INDEX].max(initial=0))) + 1
        )
    value = float(mean_iou(confusion_matrix(pred, gt, num_classes)))
    return None if math.isnan(value) else value


def colour_labels(label: np.ndarray) -> np.ndarray:
    """HxW index map -> HxWx3 uint8 in the VOC palette, ignore (255) drawn white."""
    rgb = _PALETTE[label]
    rgb[label == IGNORE_INDEX] = _IGNORE_RGB
    return rgb


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The strongest class score per pixel, min-max scaled, as a jet heat map over the image."""
    lo, hi = float(cam.min()), float(cam.max())
    scaled = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    heat = colormaps["jet"](scaled)[..., :3] * 255.0
    return (alpha * heat + (1 - alpha) * image.astype(np.float64)).astype(np.uint8)


def png_bytes(rgb: np.ndarray, max_side: int) -> bytes:
    """Encode an HxWx3 uint8 picture as PNG, shrunk so its longer side is at most ``max_side``."""
    img = Image.fromarray(rgb)
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _read_label(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    return read_label_png(path, expected_size=size) if path.is_file() else None


def _cam_map(cam_dir: Path, name: str) -> np.ndarray | None:
    path = cam_dir / f"{name}.npz"
    if not cam_file_complete(path):
        return None
    rec = load_cam(path)
    full = rec.full_resolution().numpy()
    return full.max(axis=0) if full.shape[0] else np.zeros(rec.size, dtype=np.float32)


@dataclass(frozen=True)
class GallerySources:
    """Where one run's per-image outputs are (folders of ``<name>.png`` / ``<name>.npz``)."""

    cam_dir: Path
    pseudo_dirs: tuple[Path, ...]  # first existing file wins: random-walk masks, then make-labels
    prediction_dir: Path


def build_row(ds, i: int, sources: GallerySources, max_side: int) -> ImageRow:
    """One image's pictures; a column whose output does not exist is None."""
    name = ds.names[i]
    image = read_image(ds.image_path(i))
    size = image.shape[:2]
    gt = ds.read_mask(i, expected_size=size) if ds.has_masks else None
    cam = _cam_map(sources.cam_dir, name)
    pseudo = next(
        (lab for d in sources.pseudo_dirs if (lab := _read_label(d / f"{name}.png", size)) is not None), None
    )
    pred = _read_label(sources.prediction_dir / f"{name}.png", size)
    pictures = {
        "image": png_bytes(image, max_side),
        "ground truth": png_bytes(colour_labels(gt), max_side) if gt is not None else None,
        "CAM": png_bytes(cam_overlay(image, cam), max_side) if cam is not None else None,
        "pseudo-mask": png_bytes(colour_labels(pseudo), max_side) if pseudo is not None else None,
        "prediction": png_bytes(colour_labels(pred), max_side) if pred is not None else None,
    }
    tags = [ds.class_names[k + 1] for k in np.flatnonzero(ds.labels[i])]
    return ImageRow(name, pictures, tags)


def _evenly_spaced(n: int, k: int) -> list[int]:
    """``min(k, n)`` indices spread evenly over ``range(n)``, first and last included."""
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist())) if n else []


def build_gallery(
    ds,
    split: str,
    sources: GallerySources,
    *,
    n_sample: int = 6,
    n_extreme: int = 4,
    max_side: int = 160,
    max_ranked: int = 2000,
) -> Gallery:
    """An even sample of ``ds`` plus, when it has ground truth, its best and worst images.

    Ranking reads every image's masks, so on a large split (COCO val: 40k images) it runs over
    ``max_ranked`` evenly spaced images, and the page says so.
    """
    n = len(ds)
    gallery = Gallery(split, size=n)
    sample_idx = _evenly_spaced(n, n_sample)
    scored_idx: list[tuple[float, int]] = []
    rows: dict[int, ImageRow] = {}
    # the final output of this split: predictions if it was predicted, else its pseudo-masks
    has_pred = n > 0 and (sources.prediction_dir / f"{ds.names[0]}.png").is_file()
    folders = (sources.prediction_dir,) if has_pred else sources.pseudo_dirs
    if ds.has_masks:
        gallery.scored_output = "prediction" if has_pred else "pseudo-mask"
        for i in _evenly_spaced(n, max_ranked):  # scoring needs the images' labels, not their pictures
            name = ds.names[i]
            path = next((d / f"{name}.png" for d in folders if (d / f"{name}.png").is_file()), None)
            if path is None:
                continue
            gt = ds.read_mask(i)
            score = per_image_miou(read_label_png(path, expected_size=gt.shape), gt, ds.num_classes)
            if score is not None:
                scored_idx.append((score, i))
    scored_idx.sort()
    gallery.ranked = len(scored_idx)
    k = min(n_extreme, len(scored_idx) // 2)  # best and worst never share an image
    worst = [i for _, i in scored_idx[:k]]
    best = [i for _, i in reversed(scored_idx[len(scored_idx) - k :])]
    scores = {i: s for s, i in scored_idx}
    for i in dict.fromkeys(sample_idx + best + worst):
        row = build_row(ds, i, sources, max_side)
        row.score, row.scored = scores.get(i), gallery.scored_output if i in scores else None
        rows[i] = row
    gallery.sample = [rows[i] for i in sample_idx]
    gallery.best = [rows[i] for i in best]
    gallery.worst = [rows[i] for i in worst]
    return gallery
