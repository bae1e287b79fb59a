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

from wsss.cams.files import load_cam
from wsss.data.palette import read_label_png

BINS = 50  # histogram bins over [0, 1]
# maps whose 10th percentile is above this are flat: 90 % of a tagged class's pixels score high
FLAT_P10 = 0.3
# a threshold that marks more than this share of the pixels foreground labels the background too
MAX_FOREGROUND = 0.7
IGNORE = 255


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
    threshold: float | None,
    mask_dir: Path | None = None,
) -> dict[str, Any]:
    """Histogram, percentiles and foreground shares of the CAM files of ``names``, with warnings.

    Values are read at the files' stride (a uniform sample of the full-resolution maps) and clipped
    to [0, 1]. ``threshold`` (the background score the labels will use) gives the share of pixels
    it marks foreground: where the image's highest tagged map exceeds it. ``mask_dir`` adds the
    share of object pixels in the ground truth (255 left out).
    """
    per_class = np.zeros((len(class_names), BINS), np.int64)
    shares, gt_shares, norms = [], [], set()
    for name in names:
        rec = load_cam(cam_dir / f"{name}.npz")
        norms.add(rec.norm)
        maps = np.clip(np.asarray(rec.cams, np.float32), 0.0, 1.0)
        for key, plane in zip(rec.keys, maps):
            per_class[int(key)] += np.histogram(plane, bins=BINS, range=(0.0, 1.0))[0]
        if threshold is not None:
            shares.append(float((maps.max(axis=0) > threshold).mean()) if len(maps) else 0.0)
        if mask_dir is not None:
            mask = read_label_png(mask_dir / f"{name}.png")
            valid = mask != IGNORE
            gt_shares.append(float(((mask > 0) & valid).sum() / max(int(valid.sum()), 1)))
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
    out: dict[str, Any] = {
        "images": len(names),
        "norm": "/".join(sorted(norms)),
        "threshold": threshold,
        "histogram": overall.tolist(),
        "p10": _percentile(overall, 0.1),
        "p50": _percentile(overall, 0.5),
        "per_class": classes,
        "foreground_share": float(np.mean(shares)) if shares else None,
        "gt_foreground_share": float(np.mean(gt_shares)) if gt_shares else None,
    }
    out["warnings"] = cam_warnings(out)
    return out


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
