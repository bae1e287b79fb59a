"""How well a classifier tells image tags apart: average precision and F1 on held-out tags.

A CAM is only as good as the classifier behind it: one that cannot rank the images carrying a
tag above the others cannot say where that tag's object is. These numbers are read before any
CAM is made (train-cls validation), so a classifier that did not learn shows up at once.

``chance`` is what a classifier that ranks at random scores: a class's expected AP is its
positive rate, so the chance mAP is the mean positive rate over the classes scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# A classifier whose mAP is within this margin of chance is reported as not having learnt.
LEARNT_MARGIN = 0.10


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: the mean, over its positive images, of the precision at that image's
    rank (ties broken pessimistically: a tied negative ranks first). NaN without positives."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.lexsort((targets, -scores))  # by score descending, negatives before positives on ties
    hits = targets[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].sum() / positives)


def f1_scores(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class F1 (NaN for a class neither predicted nor present) and micro F1 over all labels."""
    p, t = np.asarray(predicted) > 0.5, np.asarray(targets) > 0.5
    tp = (p & t).sum(axis=0).astype(np.float64)
    denom = p.sum(axis=0) + t.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denom > 0, 2 * tp / denom, np.nan)
    total = p.sum() + t.sum()
    micro = float(2 * tp.sum() / total) if total > 0 else float("nan")
    return per_class, micro


def multilabel_report(
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP, chance mAP, macro/micro F1 at ``threshold`` and per-class AP / F1 / positives.

    ``probabilities`` and ``targets`` are N×K (foreground classes, ``class_names`` of length K).
    Classes without a positive image are left out of mAP (their AP is undefined) and listed.
    """
    probs, tgt = np.asarray(probabilities, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if probs.shape != tgt.shape or probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(
            f"scores {probs.shape} and targets {tgt.shape} must both be N×{len(class_names)} (one column per class)"
        )
    ap = np.array([average_precision(probs[:, k], tgt[:, k]) for k in range(probs.shape[1])])
    f1, micro = f1_scores(probs >= threshold, tgt)
    positives = (tgt > 0.5).sum(axis=0)
    scored = ~np.isnan(ap)
    rate = positives / max(1, len(tgt))
    return {
        "images": len(tgt),
        "map": float(ap[scored].mean()) if scored.any() else None,
        "chance_map": float(rate[scored].mean()) if scored.any() else None,
        "f1_macro": float(np.nanmean(f1)) if not np.isnan(f1).all() else None,
        "f1_micro": None if np.isnan(micro) else micro,
        "threshold": threshold,
        "per_class": {
            name: {
                "ap": None if np.isnan(ap[k]) else float(ap[k]),
                "f1": None if np.isnan(f1[k]) else float(f1[k]),
                "positives": int(positives[k]),
            }
            for k, name in enumerate(class_names)
        },
        "unscored": [name for k, name in enumerate(class_names) if not scored[k]],
    }


def learning_warning(report: dict[str, Any]) -> str | None:
    """A warning when the held-out mAP is within ``LEARNT_MARGIN`` of chance, saying what to try."""
    m, chance = report.get("map"), report.get("chance_map")
    if m is None or chance is None or m - chance >= LEARNT_MARGIN:
        return None
    return (
        f"the classifier barely beats chance on held-out tags (mAP {100 * m:.1f} % vs {100 * chance:.1f} % "
        f"for a random ranking, {report['images']} images): its CAMs cannot locate what it cannot recognise. "
        "Train longer (classifier.epochs), check the tags (wsss data check), start from ImageNet weights "
        "(classifier.pretrained) or use larger images (classifier.resize_long / crop_size)"
    )
