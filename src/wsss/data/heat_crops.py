"""PMM's heatmap-guided crops: classifier training on windows relabelled from rough masks.

Phase B of PMM trains on windows cut from the image at one of several scales instead of one
random crop, and gives each window its own label vector: a tag stays only where the phase-A
rough mask puts enough of that class inside the window. Small objects thus get zoomed-in
views with a label that matches what the window shows.

The window grid is shared with multi-crop CAM inference (:mod:`wsss.cams.multicrop`). Two rules
exist, chosen by ``compat``:

* ``clean``: ``window``-wide windows every ``stride`` pixels, the last one shifted inside the image
  (the rule the paper text describes).
* ``authors_code``: PMM's ``get_multi_crop_params``, where every window but the last of a row or
  column is only ``stride`` wide ([i·stride, (i+1)·stride)) and the last is
  [max(0, L − window), L); the scaled length is ``int(L·s)`` and boxes map back with ``int(x / s)``.

Both cover the whole axis, and an axis shorter than the window is one window covering all of it.
Boxes are ``(top, left, bottom, right)``, half-open, so ``image[:, top:bottom, left:right]`` is the
crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from wsss.data.base import TaggedImageDataset, name_preview
from wsss.data.palette import read_label_png
from wsss.data.transforms import normalize_steps
from wsss.errors import ConfigError, DataError

Box = tuple[int, int, int, int]
"""(top, left, bottom, right) of a window, half-open, in pixels."""


def window_spans(
    length: int, window: int, stride: int, *, authors_code: bool = False
) -> list[tuple[int, int]]:
    """Half-open (start, end) spans tiling ``[0, length)``: 1 + ceil(max(0, L − window) / stride) of them.

    The last span is [max(0, L − window), L) so the border is never padded; the others start at
    i·stride and are ``window`` long (``authors_code``: ``stride`` long, as PMM's code cuts them).
    """
    if length < 1 or window < 1 or stride < 1:
        raise ConfigError(
            f"window grid needs positive sizes, got length {length}, window {window}, stride {stride}"
        )
    if not authors_code and stride > window:
        raise ConfigError(f"window stride {stride} > window {window} would leave pixels no window covers")
    n = 1 + math.ceil(max(0, length - window) / stride)
    spans = [(i * stride, i * stride + (stride if authors_code else window)) for i in range(n - 1)]
    return [*spans, (max(0, length - window), length)]


def window_grid(size: tuple[int, int], window: int, stride: int, *, authors_code: bool = False) -> list[Box]:
    """Every window over an H×W image, column by column as PMM lists them."""
    rows = window_spans(size[0], window, stride, authors_code=authors_code)
    cols = window_spans(size[1], window, stride, authors_code=authors_code)
    return [(y0, x0, y1, x1) for x0, x1 in cols for y0, y1 in rows]


def grid_size(size: tuple[int, int], scale: float, *, authors_code: bool = False) -> tuple[int, int]:
    """The scaled image's size: rounded (``clean``, as ``scaled_size(…, "relative")``) or floored (PMM)."""
    if authors_code:
        return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def scaled_windows(
    size: tuple[int, int], scale: float, window: int, stride: int, *, authors_code: bool = False
) -> list[Box]:
    """The grid over the image scaled by ``scale``, mapped back to original (H, W) pixel boxes.

    ``clean`` maps by the exact ratio of the two sizes, rounded, so the last window ends on the
    border; ``authors_code`` floors ``x / scale`` as PMM does (its last row/column can fall one
    pixel short). Every box keeps at least one pixel.
    """
    scaled = grid_size(size, scale, authors_code=authors_code)

    def back(v: int, axis: int) -> int:
        if authors_code:
            return int(v / scale)  # PMM: int(float(x) / s)
        return round(v * size[axis] / scaled[axis])

    boxes = []
    for y0, x0, y1, x1 in window_grid(scaled, window, stride, authors_code=authors_code):
        y0, x0 = min(back(y0, 0), size[0] - 1), min(back(x0, 1), size[1] - 1)
        boxes.append((y0, x0, max(back(y1, 0), y0 + 1), max(back(x1, 1), x0 + 1)))
    return boxes


def class_pixel_counts(rough: np.ndarray, num_fg: int) -> np.ndarray:
    """(K,) confident pixels per foreground class of a rough label map (id k + 1 ↔ index k; 255 unsure)."""
    return np.bincount(rough.ravel(), minlength=256)[1 : num_fg + 1]


def crop_labels(
    rough: np.ndarray, box: Box, num_fg: int, keep: float, totals: np.ndarray | None = None
) -> np.ndarray:
    """PMM's relabelling: class k stays iff the crop holds > ``keep`` of its confident pixels
    or they fill > ``keep`` of the crop. Returns a (K,) bool vector.

    Confident pixels are rough == k + 1 (PMM: rough_k > 0.9; the rough PNG stores that as the id).
    """
    totals = class_pixel_counts(rough, num_fg) if totals is None else totals
    y0, x0, y1, x1 = box
    inside = class_pixel_counts(rough[y0:y1, x0:x1], num_fg)
    area = (y1 - y0) * (x1 - x0)
    share_of_class = inside / np.maximum(totals, 1)
    share_of_crop = inside / area
    return (totals > 0) & ((share_of_class > keep) | (share_of_crop > keep))


def pick_window(
    rough: np.ndarray, boxes: Sequence[Box], tags: np.ndarray, keep: float, *, authors_code: bool = False
) -> tuple[Box, np.ndarray]:
    """A random window whose relabelled vector is non-empty, and that vector (float32, ⊆ ``tags``).

    At most one try per window (torch RNG). ``clean`` tries the windows in a random order, so a
    window holding a class is found whenever one exists; ``authors_code`` draws with replacement
    as PMM does, so it can miss one (with 3 windows and one good: (2/3)³ ≈ 30 % of the time).
    Fallback when no try holds a class: PMM's, the last window tried with an all-zero label (a
    crop the multi-label loss reads as background only). Classes the image is not tagged with are
    dropped: rough masks come from tag-masked CAMs, so this only guards hand-made masks.
    """
    num_fg = len(tags)
    totals = class_pixel_counts(rough, num_fg)
    tagged = np.asarray(tags) > 0.5
    n = len(boxes)
    order = torch.randint(n, (n,)) if authors_code else torch.randperm(n)
    for j in order.tolist():
        labels = crop_labels(rough, boxes[j], num_fg, keep, totals) & tagged
        if labels.any():
            break
    return boxes[j], labels.astype(np.float32)


def heat_crop_transform(
    crop_size: int, flip: bool, color_jitter: tuple[float, float, float, float] | None
) -> v2.Compose:
    """Crop → crop_size² (bicubic, antialiased), flip, colour jitter, normalise.

    Bicubic like the rest of wsss's training resizes and the CAM inference resize (PMM: PIL
    bilinear). Resizing first (PMM jitters first) keeps the jitter's cost fixed; jitter is
    per-pixel, so the order changes only rounding.
    """
    steps: list[v2.Transform] = [
        v2.Resize((crop_size, crop_size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter is not None:
        b, c, s, h = color_jitter
        steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    return v2.Compose(steps + normalize_steps())


class HeatCropDataset(Dataset):
    """``base``'s images as heatmap-guided crops relabelled from ``mask_dir/<name>.png``.

    Items: ``{"name", "image" (float 3×crop×crop, normalised), "labels" (the crop's (K,) vector,
    ⊆ the image's tags), "size" (original (H, W)), "box" (int64 (4,) top, left, bottom, right in
    the original), "scale"}``. Randomness is torch's, so DataLoader worker seeding applies.
    """

    def __init__(
        self,
        base: TaggedImageDataset,
        mask_dir: str | Path,
        *,
        crop_size: int,
        scales: Sequence[float],
        stride: int,
        keep: float = 0.1,
        flip: bool = True,
        color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
        authors_code: bool = False,
    ) -> None:
        if not scales or min(scales) <= 0:
            raise ConfigError(f"classifier.heat_scales must be positive factors, got {list(scales)}")
        self.base = base
        self.mask_dir = Path(mask_dir)
        self.crop_size, self.scales, self.stride, self.keep = int(crop_size), list(scales), int(stride), keep
        self.authors_code = authors_code
        self.transform = heat_crop_transform(self.crop_size, flip, color_jitter)
        self._check_masks()
        self.names, self.class_names, self.num_classes = base.names, base.class_names, base.num_classes
        self.labels = base.labels

    def _check_masks(self) -> None:
        """Fail before training, naming the missing PNGs and the run that writes them."""
        missing = [str(self.mask_path(i)) for i in range(len(self.base)) if not self.mask_path(i).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.base)} rough masks for heat crops are missing: "
                f"{name_preview(missing)}; classifier.heat_masks must be the labels folder of a phase-A run "
                "whose make-labels used labels.mode: rough (run that recipe's make-labels first)"
            )

    def mask_path(self, i: int) -> Path:
        return self.mask_dir / f"{self.base.names[i]}.png"

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        size = tuple(item["size"])
        rough = read_label_png(self.mask_path(i), expected_size=size)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        boxes = scaled_windows(size, scale, self.crop_size, self.stride, authors_code=self.authors_code)
        box, labels = pick_window(
            rough, boxes, self.base.labels[i], self.keep, authors_code=self.authors_code
        )
        y0, x0, y1, x1 = box
        crop = tv_tensors.Image(item["image"][:, y0:y1, x0:x1].contiguous())
        return {
            "name": item["name"],
            "image": self.transform(crop),
            "labels": torch.from_numpy(labels),
            "size": size,
            "box": torch.tensor(box, dtype=torch.int64),
            "scale": float(scale),
        }
