"""What the CAM values look like, so that maps no threshold can use are reported, not scored quietly.

A classifier that learned a tag from images that nearly all carry it fires on the whole image: after
normalisation its maps are flat (every pixel high), a fixed background threshold then marks nearly
every pixel foreground, and the seeds score below the all-background prediction. These statistics
need no ground truth; with masks they also give the true object share to compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.cams.files import load_cam, strided_size
from wsss.data.palette import IGNORE_INDEX, read_label_png

BINS = 50  # histogram bins over [0, 1] (the picture, the percentiles)
THRESHOLD_BINS = 100  # bins of the per-pixel maximum: the 0.01 grid of the threshold sweep
# maps whose 10th percentile is above this are flat: 90 % of a tagged class's pixels score high
FLAT_P10 = 0.3
# a threshold that marks more than this share of the pixels foreground labels the background too
MAX_FOREGROUND = 0.7
# a map "peaks on the border" when its maximum lies within this many cells of the image's edge;
# more than BORDER_PEAKS of the maps doing so (and 3x what peaks anywhere would give) is an artefact
BORDER_CELLS = 1
BORDER_PEAKS = 0.5


def _percentile(hist: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0-1) of values binned in ``hist`` over [0, 1] (the bin's upper edge)."""
    total = hist.sum()
    if total == 0:
        return float("nan")
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return (idx + 1) / len(hist)


def cam_value_stats(
    cam_dir: Path,
    names: Sequence[str],
    class_names: Sequence[str],
    threshold: float | None = None,
    mask_dir: Path | None = None,
) -> dict[str, Any]:
    """Histograms, percentiles and foreground shares of the CAM files of ``names``, with warnings.

    Values are read at the files' stride (a uniform sample of the full-resolution maps) and clipped
    to [0, 1]. Besides each class's values, the histogram of each pixel's highest tagged map is
    kept (0 for an image without tags): what a background threshold is compared with, so the share
    of pixels any threshold marks foreground, and :func:`otsu_threshold`, come from it.
    ``mask_dir`` adds the share of object pixels in the ground truth (255 left out).
    """
    per_class = np.zeros((len(class_names), BINS), np.int64)
    pixel_max = np.zeros(THRESHOLD_BINS, np.int64)
    gt_objects = gt_valid = 0
    peaks = on_border = 0
    border_area = 0.0
    norms = set()
    for name in names:
        rec = load_cam(cam_dir / f"{name}.npz")
        norms.add(rec.norm)
        maps = np.clip(np.asarray(rec.cams, np.float32), 0.0, 1.0)
        for key, plane in zip(rec.keys, maps):
            per_class[int(key)] += np.histogram(plane, bins=BINS, range=(0.0, 1.0))[0]
            on_border += _peaks_on_border(plane)
            border_area += _border_share(plane.shape)
            peaks += 1
        if len(maps):
            pixel_max += np.histogram(maps.max(axis=0), bins=THRESHOLD_BINS, range=(0.0, 1.0))[0]
        else:
            h, w = strided_size(rec.size, rec.stride)
            pixel_max[0] += h * w
        if mask_dir is not None:
            mask = read_label_png(mask_dir / f"{name}.png")
            valid = mask != IGNORE_INDEX
            gt_objects += int(((mask > 0) & valid).sum())
            gt_valid += int(valid.sum())
    overall = per_class.sum(axis=0)
    classes = {
        class_names[k]: {
            "values": int(h.sum()),
            "p10": _percentile(h, 0.1),
            "p50": _percentile(h, 0.5),
            "p90": _percentile(h, 0.9),
        }
        for k, h in enumerate(per_class)
        if h.sum()
    }
    stats: dict[str, Any] = {
        "images": len(names),
        "norm": "/".join(sorted(norms)),
        "histogram": overall.tolist(),
        "pixel_max_histogram": pixel_max.tolist(),
        "p10": _percentile(overall, 0.1),
        "p50": _percentile(overall, 0.5),
        "per_class": classes,
        "gt_foreground_share": gt_objects / gt_valid if gt_valid else None,
        "border_peak_share": on_border / peaks if peaks else None,
        "border_area_share": border_area / peaks if peaks else None,
    }
    return at_threshold(stats, threshold)


def gt_foreground_share(per_class: Sequence[dict[str, Any]]) -> float | None:
    """The object share of the ground truth from a scored split's per-class rows (``gt_pixels``,
    background first, 255 already left out): what ``mask_dir`` gives without reading the masks again."""
    total = sum(int(row["gt_pixels"]) for row in per_class)
    return 1.0 - int(per_class[0]["gt_pixels"]) / total if total else None


def _peaks_on_border(plane: np.ndarray) -> bool:
    """Whether the map's maximum lies within BORDER_CELLS of an edge of its grid."""
    h, w = plane.shape
    i, j = np.unravel_index(int(np.argmax(plane)), plane.shape)
    return min(i, j, h - 1 - i, w - 1 - j) < BORDER_CELLS + 1


def _border_share(shape: tuple[int, ...]) -> float:
    """The share of a grid's cells within BORDER_CELLS of its edge (where uniform peaks would land)."""
    h, w = shape
    inner = max(h - 2 * (BORDER_CELLS + 1), 0) * max(w - 2 * (BORDER_CELLS + 1), 0)
    return 1.0 - inner / (h * w)


def at_threshold(stats: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """``stats`` with the share of pixels ``threshold`` marks foreground and the warnings it raises."""
    out = dict(stats)
    out["threshold"] = threshold
    out["foreground_share"] = None
    hist = np.asarray(stats["pixel_max_histogram"])
    if threshold is not None and hist.sum():
        first = int(np.floor(threshold * len(hist) + 1e-6))  # bins at or above the threshold
        out["foreground_share"] = float(hist[first:].sum() / hist.sum())
    out["warnings"] = cam_warnings(out)
    return out


def otsu_threshold(hist: Sequence[int]) -> float:
    """Otsu's background threshold of a histogram over [0, 1]: the bin edge that maximises the
    between-class variance of the values below and above it. Needs no ground truth."""
    h = np.asarray(hist, dtype=np.float64)
    if h.sum() == 0:
        raise ValueError("Otsu's threshold needs a non-empty histogram")
    p = h / h.sum()
    centres = (np.arange(len(h)) + 0.5) / len(h)
    w0 = np.cumsum(p)[:-1]  # below the edge after each bin
    m0 = np.cumsum(p * centres)[:-1]
    w1, total = 1.0 - w0, float((p * centres).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float((int(np.argmax(between)) + 1) / len(h))


def cam_warnings(stats: dict[str, Any]) -> list[str]:
    """The loud, actionable messages for flat maps and for a threshold that labels most pixels."""
    warnings = []
    p10 = stats["p10"]
    if p10 == p10 and p10 > FLAT_P10:  # not NaN
        flat = [c for c, s in stats["per_class"].items() if s["p10"] > FLAT_P10]
        warnings.append(
            f"the CAMs are flat: 90 % of the pixels of a tagged class's map score above {p10:.2f} after "
            f"'{stats['norm']}' normalisation (classes: {', '.join(flat) or 'all together'}), so the "
            "classifier fires on whole images, not on objects. Check the training tags (wsss data check: "
            "a tag on nearly every image cannot be localised), train the classifier longer, or start "
            "from a recipe for photos"
        )
    border, area = stats.get("border_peak_share"), stats.get("border_area_share")
    if border is not None and border > BORDER_PEAKS and border > 3 * area:
        warnings.append(
            f"{100 * border:.0f} % of the class maps peak at the image border (peaks spread evenly would "
            f"land there {100 * area:.0f} % of the time): the classifier has likely learned the border or "
            "the crop padding, not the objects, and these maps are not usable. Retrain with another seed, "
            "or crops that need no padding (classifier.crop_size at most the smallest resized image)"
        )
    share, t = stats["foreground_share"], stats["threshold"]
    if share is not None and share > MAX_FOREGROUND:
        gt = stats["gt_foreground_share"]
        truth = f" (ground truth: {100 * gt:.0f} %)" if gt is not None else ""
        warnings.append(
            f"the background threshold {t:.2f} marks {100 * share:.0f} % of the pixels foreground{truth}: "
            "the labels will call most of the background an object. Raise evaluate.fixed_threshold "
            "(or labels.bg_threshold) towards the maps' median "
            f"{stats['p50']:.2f}, or fix the maps (see the warning above, if any)"
        )
    return warnings
