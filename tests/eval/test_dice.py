"""Dice beside IoU: hand-counted overlaps, the Dice-IoU identity, the foreground mean under each
convention, and Dice carried into the stored scores, the terminal table and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.eval.confusion import confusion_matrix
from wsss.eval.metrics import dice_per_class, format_table, iou_per_class, mean_dice, scores


def _pixels(*runs: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) made of ``count`` pixels of each (gt class, predicted class, count) run."""
    gt = np.concatenate([np.full(n, g, np.uint8) for g, _, n in runs])
    pred = np.concatenate([np.full(n, p, np.uint8) for _, p, n in runs])
    return gt, pred


# 5 classes. Class 1: TP 6, FP 2, FN 4. Class 2: TP 3, FN 1. Class 3: predicted once, never
# labelled (Dice 0). Class 4: absent from both (undefined). Background: TP 8, FP 5, FN 3.
GT, PRED = _pixels((1, 1, 6), (0, 1, 2), (1, 0, 4), (2, 2, 3), (2, 0, 1), (0, 0, 8), (0, 3, 1))
DICE = [16 / 24, 2 * 6 / (2 * 6 + 2 + 4), 6 / 7, 0.0]


def test_dice_of_a_hand_counted_overlap() -> None:
    m = confusion_matrix(PRED, GT, 5)
    dice = dice_per_class(m)
    assert dice[:4].tolist() == pytest.approx(DICE, abs=1e-12)
    assert math.isnan(float(dice[4]))
    # the foreground mean (background left out), absent class 4 per convention
    assert float(mean_dice(m)) == pytest.approx((2 / 3 + 6 / 7 + 0) / 3, abs=1e-12)
    assert float(mean_dice(m, "absent_as_zero")) == pytest.approx((2 / 3 + 6 / 7) / 4, abs=1e-12)
    assert float(mean_dice(m, "gt_present")) == pytest.approx((2 / 3 + 6 / 7) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="mean convention"):
        mean_dice(m, "micro")


def test_dice_is_two_iou_over_one_plus_iou_and_batches() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, size=(30, 20))
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 5, size=gt.shape))
    m = confusion_matrix(pred, gt, 6)
    iou, dice = iou_per_class(m), dice_per_class(m)
    assert dice.tolist() == pytest.approx((2 * iou / (1 + iou)).tolist(), abs=1e-12)
    assert (dice >= iou).all() and not torch.isnan(dice).any()
    stack = torch.stack([m, torch.eye(6, dtype=torch.long) * 4, m * 3])
    assert mean_dice(stack).tolist() == pytest.approx([float(mean_dice(x)) for x in stack], abs=1e-15)
    assert float(mean_dice(stack[1])) == 1.0
    assert math.isnan(float(mean_dice(torch.zeros(3, 3, dtype=torch.long))))


def test_scores_store_dice_and_the_table_prints_the_mean() -> None:
    s = scores(confusion_matrix(PRED, GT, 5), ["bg", "RV", "Myo", "LV", "x"])
    assert list(s["per_class_dice"]) == ["bg", "RV", "Myo", "LV", "x"]
    assert list(s["per_class_dice"].values())[:4] == pytest.approx(DICE, abs=1e-12)
    assert s["per_class_dice"]["x"] is None  # JSON-ready: undefined, not NaN
    assert s["mean_dice"] == pytest.approx((2 / 3 + 6 / 7) / 3, abs=1e-12)
    last = format_table(s).splitlines()[-1]
    assert f"mean Dice (foreground) {100 * s['mean_dice']:.2f}" in last and last.startswith("mIoU ")
    del s["mean_dice"]  # a result saved before Dice was scored still prints
    assert "Dice" not in format_table(s)


def test_report_carries_dice_beside_miou() -> None:
    from wsss.report.html import _per_class_table, _scored, _summary_table
    from wsss.report.results import collect_results, format_results_table

    record = {
        "stages": {
            "predict": {
                "seconds": 1.0,
                "metrics": {
                    "val": {
                        "miou": 0.5,
                        "all_background_miou": 0.25,
                        "mean_dice": 0.6,
                        "evaluated_on": "val",
                        "per_class_iou": {"background": 0.9, "RV": 0.5},
                        "per_class_dice": {"background": 0.95, "RV": 2 / 3},
                    }
                },
            },
            "eval-cams": {
                "seconds": 1.0,
                "metrics": {"splits": {"val": {"oracle_miou": 0.4, "oracle_threshold": 0.3}}},  # older run
            },
        }
    }
    seg, cams = sorted(collect_results(record), key=lambda r: r.stage != "predict")
    assert (seg.dice, seg.per_class_dice["RV"]) == (0.6, 2 / 3)
    assert cams.dice is None and not cams.per_class_dice
    assert _scored(seg) == "val <b>50.0</b> (all-background 25.0; mean Dice 60.0)"
    assert _scored(cams) == "val <b>40.0</b>"
    assert "mean Dice 60.0" in _summary_table(record, [seg, cams])
    table = _per_class_table([seg, cams], dice=True)
    assert 'id="per-class-dice"' in table and '<td class="l">RV</td><td>66.7</td>' in table
    assert "<b>mean Dice (foreground)</b></td><td><b>60.0</b>" in table
    assert "Dice" not in format_results_table([seg, cams])  # the terminal table is unchanged
