"""Background-threshold evaluation of CAMs: a one-pass sweep over many thresholds, and one fixed threshold.

A CAM becomes a label map at threshold t by TransCAM's rule: a pixel takes the foreground class
with the highest score when that score is *strictly* greater than t, otherwise background (a
score exactly at t is background, as in TransCAM's ``evaluation.py`` where the constant
background plane comes first and wins the argmax tie). Scores are compared in float64 with the
thresholds as given. The rule itself is :func:`wsss.refine.seeds.threshold_labels`, the function
that also writes the pseudo-labels.

The sweep never loops over thresholds. Per pixel it needs only the ground truth g, the winning
class c and k = the number of thresholds below the pixel's score (``torch.searchsorted``): the
pixel is foreground c at thresholds 0..k-1 and background from k on. One ``bincount`` of
(g, c, k) per image gives a (C, C, m+1) histogram; at the end a reverse cumulative sum over k
gives the foreground part of every threshold's confusion matrix and a forward cumulative sum
gives the background column. The cost is that of evaluating one threshold.

Picking the best threshold on the evaluated split's own ground truth leaks labels into the
score, so that result is labelled :data:`ORACLE_LABEL` everywhere it is reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from wsss.data.palette import IGNORE_INDEX
from wsss.eval.confusion import ConfusionMatrix, all_reduce_sum, as_label_tensor
from wsss.eval.metrics import mean_iou, scores
from wsss.refine.seeds import threshold_labels

ORACLE_LABEL = "oracle (threshold chosen on this split's ground truth)"

ArrayLike = torch.Tensor | np.ndarray


def threshold_range(start: float, stop: float, step: float) -> list[float]:
    """Thresholds ``start, start+step, ...`` below ``stop`` (like ``arange``), rounded to 10 decimals.

    Rounding makes 0.07 come out as 0.07 rather than 0.07000000000000001, so the values match the
    ones users type (``threshold_range(0, 0.6, 0.01)`` is TransCAM's 60-value sweep).
    """
    if not step > 0:
        raise ValueError(f"threshold step must be > 0, got {step}")
    if not stop > start:
        raise ValueError(f"threshold stop ({stop}) must be greater than start ({start})")
    n = math.ceil((stop - start) / step - 1e-9)
    return [round(start + i * step, 10) for i in range(n)]


def _prepare(
    cams: ArrayLike,
    keys: Sequence[int] | ArrayLike,
    num_classes: int | None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one image's CAM stack and class keys; return (cams (n, H, W) float, keys long)."""
    cam_t = torch.as_tensor(np.ascontiguousarray(cams) if isinstance(cams, np.ndarray) else cams)
    if cam_t.ndim != 3:
        raise ValueError(f"cams must be (n_keys, H, W), got shape {tuple(cam_t.shape)}")
    if not cam_t.is_floating_point():
        raise ValueError(f"cams must be floating point scores, got dtype {cam_t.dtype}")
    if torch.isnan(cam_t).any():
        raise ValueError("CAM scores contain NaN")
    if not isinstance(keys, torch.Tensor | np.ndarray):
        keys = np.asarray(list(keys), dtype=np.int64)
    key_t = as_label_tensor(keys, device=device).reshape(-1)
    if key_t.numel() != cam_t.shape[0]:
        raise ValueError(f"{key_t.numel()} keys for {cam_t.shape[0]} CAM planes")
    top = num_classes - 1 if num_classes is not None else None
    if key_t.numel() and (int(key_t.min()) < 1 or (top is not None and int(key_t.max()) > top)):
        raise ValueError(
            f"CAM keys {key_t.tolist()} must be foreground class indices in 1..{top or 'K'} "
            "(label space, background excluded)"
        )
    return cam_t.to(device), key_t


def _max_score(cam_t: torch.Tensor, key_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: highest foreground score (float64; -inf without keys) and its class index."""
    h, w = cam_t.shape[1:]
    if cam_t.shape[0] == 0:
        return (
            torch.full((h, w), -math.inf, dtype=torch.float64, device=cam_t.device),
            torch.zeros((h, w), dtype=torch.long, device=cam_t.device),
        )
    score, arg = cam_t.max(0)
    return score.to(torch.float64), key_t[arg]


def cam_to_label(cams: ArrayLike, keys: Sequence[int] | ArrayLike, threshold: float) -> torch.Tensor:
    """Label map (H, W) int64 at one background threshold: argmax class where its score > t, else 0.

    Checks (numpy or torch) inputs and applies :func:`wsss.refine.seeds.threshold_labels` to them in
    float64, the precision :class:`ThresholdSweep` compares in, so both score the same label maps.
    """
    cam_t, key_t = _prepare(cams, keys, num_classes=None)
    return threshold_labels(cam_t.to(torch.float64), key_t, threshold)


def _check_gt(gt: ArrayLike, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    gt_t = as_label_tensor(gt, device=device)
    if tuple(gt_t.shape) != tuple(shape):
        raise ValueError(f"ground-truth shape {tuple(gt_t.shape)} != CAM size {tuple(shape)}")
    return gt_t


class ThresholdSweep:
    """Confusion matrices of CAM predictions at every threshold, accumulated in one pass."""

    def __init__(
        self,
        num_classes: int,
        thresholds: Sequence[float],
        ignore_index: int = IGNORE_INDEX,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        values = [float(t) for t in thresholds]
        if not values:
            raise ValueError("ThresholdSweep needs at least one threshold")
        if any(not math.isfinite(t) for t in values):
            raise ValueError(f"thresholds must be finite, got {values}")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError("thresholds must be strictly increasing")
        self.num_classes = num_classes
        self.thresholds = values
        self.ignore_index = ignore_index
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._thr = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._bins = len(values) + 1
        self._hist = torch.zeros(num_classes * num_classes * self._bins, dtype=torch.long, device=self.device)
        self._images = torch.zeros(1, dtype=torch.long, device=self.device)

    @property
    def images(self) -> int:
        """How many images have been added (summed over ranks after ``all_reduce``)."""
        return int(self._images)

    def update(self, cams: ArrayLike, keys: Sequence[int] | ArrayLike, gt: ArrayLike) -> None:
        """Add one image: ``cams`` (n_keys, H, W) foreground scores for class ``keys``; ``gt`` (H, W)."""
        cam_t, key_t = _prepare(cams, keys, self.num_classes, self.device)
        gt_t = _check_gt(gt, tuple(cam_t.shape[1:]), self.device).reshape(-1)
        score, cls = _max_score(cam_t, key_t)
        below = torch.searchsorted(self._thr, score.reshape(-1), side="left")
        keep = gt_t != self.ignore_index
        gt_t, cls, below = gt_t[keep], cls.reshape(-1)[keep], below[keep]
        if gt_t.numel() and (int(gt_t.min()) < 0 or int(gt_t.max()) >= self.num_classes):
            bad = torch.unique(gt_t[(gt_t < 0) | (gt_t >= self.num_classes)])[:8].tolist()
            raise ValueError(
                f"ground truth holds values {bad} outside 0..{self.num_classes - 1} "
                f"(and not the ignore value {self.ignore_index})"
            )
        flat = (gt_t * self.num_classes + cls) * self._bins + below
        self._hist += torch.bincount(flat, minlength=self._hist.numel())
        self._images += 1

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum counts over a ``torch.distributed`` group (every rank calls it once); no-op without one."""
        all_reduce_sum(self._hist, group)
        all_reduce_sum(self._images, group)

    def reset(self) -> None:
        self._hist.zero_()
        self._images.zero_()

    def matrices(self) -> torch.Tensor:
        """``(m, C, C)`` int64 confusion matrices, one per threshold in ``self.thresholds`` order."""
        c, m = self.num_classes, len(self.thresholds)
        h = self._hist.view(c, c, self._bins)
        # Pixels with k thresholds below their score are foreground at thresholds 0..k-1.
        fg = h.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # fg[g, c, j] = sum_{k > j} h[g, c, k]
        bg = h.sum(1).cumsum(-1)[..., :m]  # bg[g, j] = sum_{k <= j} sum_c h[g, c, k]
        out = fg.permute(2, 0, 1).clone()
        out[:, :, 0] += bg.T
        return out

    def matrix_at(self, threshold: float) -> torch.Tensor:
        """The ``(C, C)`` matrix at one of the swept thresholds."""
        for i, t in enumerate(self.thresholds):
            if math.isclose(t, threshold, rel_tol=0.0, abs_tol=1e-12):
                return self.matrices()[i]
        raise ValueError(f"threshold {threshold} was not swept; swept: {self.thresholds}")

    def results(self, mean: str = "all") -> dict[str, Any]:
        """mIoU at every threshold and the best one, labelled as an oracle choice."""
        mious = mean_iou(self.matrices(), mean)
        values = [None if math.isnan(float(v)) else float(v) for v in mious]
        best = None
        if any(v is not None for v in values):
            i = int(torch.argmax(mious.nan_to_num(-math.inf)))  # first (lowest) threshold on ties
            best = {"threshold": self.thresholds[i], "miou": values[i], "index": i, "label": ORACLE_LABEL}
        return {
            "thresholds": list(self.thresholds),
            "miou": values,
            "best": best,
            "mean_convention": mean,
            "images": self.images,
        }


class FixedThreshold:
    """Scores CAMs at one given background threshold (e.g. a GT-free default chosen elsewhere)."""

    def __init__(
        self,
        num_classes: int,
        threshold: float,
        ignore_index: int = IGNORE_INDEX,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        self.threshold = float(threshold)
        self.num_classes = num_classes
        self.confusion = ConfusionMatrix(num_classes, ignore_index, device=device)

    @property
    def matrix(self) -> torch.Tensor:
        return self.confusion.matrix

    def update(self, cams: ArrayLike, keys: Sequence[int] | ArrayLike, gt: ArrayLike) -> None:
        """Add one image, as :meth:`ThresholdSweep.update`."""
        cam_t, key_t = _prepare(cams, keys, self.num_classes, self.confusion.device)
        gt_t = _check_gt(gt, tuple(cam_t.shape[1:]), self.confusion.device)
        self.confusion.update(cam_to_label(cam_t, key_t, self.threshold), gt_t)

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        self.confusion.all_reduce(group)

    def results(self, class_names: Sequence[str] | None = None, mean: str = "all") -> dict[str, Any]:
        """``scores()`` at this threshold, plus the threshold itself."""
        return {"threshold": self.threshold, **scores(self.matrix, class_names, mean)}
