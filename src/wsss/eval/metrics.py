"""Scores from a confusion matrix: per-class IoU, Dice, precision, recall, FP/FN rates, mIoU, mean Dice.

Definitions for class c, with TP = M[c, c], GT = row sum (pixels labelled c), P = column sum
(pixels predicted c), union U = GT + P - TP:

* IoU = TP / U; precision = TP / P; recall = TP / GT.
* Dice (DSC, F1 of the pixels) = 2 TP / (GT + P) = 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU):
  the medical-imaging score (ACDC), from the same matrix, so it is pooled over every pixel of
  the split (not ACDC's per-volume average).
* FP rate = (P - TP) / U and FN rate = (GT - TP) / U, as printed by SEAM/TransCAM's
  ``evaluation.py``: the share of the union that is over-activation and under-activation, so
  IoU + FP rate + FN rate = 1 for every class that occurs, which makes the two easy to compare.
* Pixel accuracy = trace(M) / sum(M).

A ratio whose denominator is 0 is undefined (``None`` in the returned dict, NaN in tensors).
A class with ground-truth pixels but no correct prediction has IoU 0.

Mean convention (``mean=``):

* ``"all"`` (default): mean over all classes, leaving out only a class that is *absent*
  (no ground-truth and no predicted pixel, so its IoU is 0/0). This is chainercv/IRN's
  ``nanmean``. On full VOC/COCO splits every class occurs and it equals every other convention;
  on small subsets and users' own data an absent class says nothing about the model, so it must
  neither pull the mean down (as with ``absent_as_zero``) nor be skipped when it was wrongly
  predicted (as with ``gt_present``): a class predicted but never labelled has IoU 0 and counts.
* ``"absent_as_zero"``: TransCAM/SEAM's ``evaluation.py`` (mean over all C classes, 0/0 → 0),
  for reproducing their numbers on subsets.
* ``"gt_present"``: ToCo's mean over classes with ground-truth pixels only.

Mean Dice (``mean_dice``) is taken over the *foreground* classes only (ACDC reports RV, Myo and LV,
never background) under the same convention as the mIoU it is shown beside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

MEAN_CONVENTIONS: dict[str, str] = {
    "all": "mean over classes that occur in the ground truth or the prediction (absent classes excluded)",
    "absent_as_zero": "mean over all classes, an absent class counting as IoU 0 (TransCAM/SEAM)",
    "gt_present": "mean over classes with ground-truth pixels only (ToCo)",
}


def _check_matrix(matrix: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(matrix)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"confusion matrix must be (..., C, C), got shape {tuple(m.shape)}")
    return m.to(torch.float64)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, math.nan))


def iou_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """IoU of every class, float64 ``(..., C)``; NaN for a class absent from both GT and prediction."""
    m = _check_matrix(matrix)
    tp = m.diagonal(dim1=-2, dim2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    return _ratio(tp, union)


def mean_iou(matrix: torch.Tensor, mean: str = "all") -> torch.Tensor:
    """mIoU of a matrix or a stack of matrices (``(..., C, C)`` → ``(...)``) under one convention."""
    if mean not in MEAN_CONVENTIONS:
        raise ValueError(f"unknown mean convention {mean!r}; choose one of {', '.join(MEAN_CONVENTIONS)}")
    m = _check_matrix(matrix)
    iou = iou_per_class(m)
    if mean == "all":
        return iou.nanmean(-1)
    if mean == "absent_as_zero":
        return iou.nan_to_num(0.0).mean(-1)
    present = m.sum(-1) > 0
    return iou.nan_to_num(0.0).mul(present).sum(-1) / present.sum(-1)


def dice_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """Dice of every class, float64 ``(..., C)``; NaN for a class absent from both GT and prediction
    (as IoU: 0/0 says nothing about the model)."""
    m = _check_matrix(matrix)
    tp = m.diagonal(dim1=-2, dim2=-1)
    return _ratio(2 * tp, m.sum(-1) + m.sum(-2))


def mean_dice(matrix: torch.Tensor, mean: str = "all") -> torch.Tensor:
    """Mean Dice over the foreground classes (index 1 on; ACDC's mean DSC leaves background out),
    absent classes handled by the mIoU convention ``mean``; NaN when no foreground class counts."""
    if mean not in MEAN_CONVENTIONS:
        raise ValueError(f"unknown mean convention {mean!r}; choose one of {', '.join(MEAN_CONVENTIONS)}")
    m = _check_matrix(matrix)
    dice = dice_per_class(m)[..., 1:]
    if mean == "all":
        return dice.nanmean(-1)
    if mean == "absent_as_zero":
        return dice.nan_to_num(0.0).mean(-1)
    present = m.sum(-1)[..., 1:] > 0
    return dice.nan_to_num(0.0).mul(present).sum(-1) / present.sum(-1)


def all_background_miou(matrix: torch.Tensor, mean: str = "all") -> torch.Tensor:
    """mIoU of predicting background (class 0) for every pixel of the same ground truth.

    The trivial baseline every scored output must beat: it needs only the matrix's row sums
    (the ground-truth pixels per class), so it comes free with every score. Background's IoU is
    its share of the pixels; every class with ground truth scores 0.
    """
    m = _check_matrix(matrix)
    trivial = torch.zeros_like(m)
    trivial[..., :, 0] = m.sum(-1)
    return mean_iou(trivial, mean)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _nanmean(t: torch.Tensor) -> float | None:
    return _num(float(t.nanmean())) if t.numel() else None


def scores(
    matrix: torch.Tensor,
    class_names: Sequence[str] | None = None,
    mean: str = "all",
) -> dict[str, Any]:
    """A JSON-ready summary of one ``(C, C)`` matrix; see the module docstring for definitions."""
    m = _check_matrix(matrix)
    if m.ndim != 2:
        raise ValueError(f"scores() takes one (C, C) matrix, got shape {tuple(m.shape)}")
    c = m.shape[0]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(c)]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}-class confusion matrix")
    tp = m.diagonal()
    gt = m.sum(1)
    pred = m.sum(0)
    union = gt + pred - tp
    iou = _ratio(tp, union)
    dice = _ratio(2 * tp, gt + pred)
    precision = _ratio(tp, pred)
    recall = _ratio(tp, gt)
    fp_rate = _ratio(pred - tp, union)
    fn_rate = _ratio(gt - tp, union)
    total = float(m.sum())
    per_class = [
        {
            "index": i,
            "name": str(class_names[i]),
            "iou": _num(float(iou[i])),
            "precision": _num(float(precision[i])),
            "recall": _num(float(recall[i])),
            "fp_rate": _num(float(fp_rate[i])),
            "fn_rate": _num(float(fn_rate[i])),
            "gt_pixels": int(gt[i]),
            "pred_pixels": int(pred[i]),
        }
        for i in range(c)
    ]
    return {
        "miou": _num(float(mean_iou(m, mean))),
        "all_background_miou": _num(float(all_background_miou(m, mean))),
        "mean_dice": _num(float(mean_dice(m, mean))),
        # by class name, beside (not inside) ``per_class``, whose entries keep their keys
        "per_class_dice": {str(class_names[i]): _num(float(dice[i])) for i in range(c)},
        "mean_convention": mean,
        "mean_convention_text": MEAN_CONVENTIONS[mean],
        "pixel_accuracy": _num(float(tp.sum()) / total) if total > 0 else None,
        "mean_precision": _nanmean(precision),
        "mean_recall": _nanmean(recall),
        "mean_fp_rate": _nanmean(fp_rate),
        "mean_fn_rate": _nanmean(fn_rate),
        "num_classes": c,
        "pixels": int(total),
        "per_class": per_class,
    }


def format_table(result: dict[str, Any]) -> str:
    """Render a ``scores()`` dict as a fixed-width table in percent (``-`` where undefined)."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    rows = [("class", "IoU", "prec", "recall", "FP", "FN", "GT px")]
    for r in result["per_class"]:
        rows.append(
            (
                r["name"],
                pct(r["iou"]),
                pct(r["precision"]),
                pct(r["recall"]),
                pct(r["fp_rate"]),
                pct(r["fn_rate"]),
                str(r["gt_pixels"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    # results saved before Dice was scored have none
    dice = f"mean Dice (foreground) {pct(result['mean_dice'])}  " if "mean_dice" in result else ""
    lines.append(
        f"mIoU {pct(result['miou'])}  {dice}pixel acc {pct(result['pixel_accuracy'])}  "
        f"({result['mean_convention']}: {result['mean_convention_text']})"
    )
    return "\n".join(lines)
