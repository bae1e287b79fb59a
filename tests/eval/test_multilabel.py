"""Held-out tag metrics: AP, F1 and the 'did not learn' warning on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.eval.multilabel import average_precision, f1_scores, learning_warning, multilabel_report


def test_average_precision_hand_case() -> None:
    # ranks 1 and 3 are positives: precisions 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # a perfect ranking scores 1 whatever the scores' scale
    assert average_precision(np.array([3.0, -1.0, 2.0]), np.array([1, 0, 1])) == 1.0
    # a tie between a positive and a negative counts the negative first
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_f1_per_class_and_micro() -> None:
    predicted = np.array([[1, 0], [1, 1], [0, 0]])
    targets = np.array([[1, 0], [0, 1], [0, 1]])
    per_class, micro = f1_scores(predicted, targets)
    np.testing.assert_allclose(per_class, [2 / 3, 2 / 3])  # class 0: tp 1, 2 predicted, 1 true
    assert micro == pytest.approx(4 / 6)  # tp 2 of 3 predicted and 3 true
    per_class, _ = f1_scores(np.zeros((2, 1)), np.zeros((2, 1)))
    assert math.isnan(per_class[0])  # neither predicted nor present: undefined, not 0


def test_report_leaves_classes_without_positives_out_of_map() -> None:
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.6, 0.7, 0.2], [0.2, 0.1, 0.1]])
    tags = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    r = multilabel_report(probs, tags, ["cat", "dog", "cow"])
    assert r["unscored"] == ["cow"] and r["per_class"]["cow"]["ap"] is None
    # cat: the positive ranks first (AP 1); dog: positives at ranks 1 and 2 (AP 1)
    assert r["map"] == pytest.approx(1.0)
    assert r["chance_map"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert r["per_class"]["dog"]["positives"] == 2 and r["images"] == 4
    # at 0.5: cat predicted on images 0 and 2 (tp 1) → 2/3; dog on 1 and 2 (tp 2) → 1; cow never → undefined
    assert r["per_class"]["cat"]["f1"] == pytest.approx(2 / 3) and r["per_class"]["cow"]["f1"] is None
    assert r["f1_macro"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="N×3"):
        multilabel_report(probs[:, :2], tags, ["cat", "dog", "cow"])


def test_learning_warning_only_near_chance() -> None:
    base = {"images": 20, "chance_map": 0.5}
    assert learning_warning({**base, "map": 0.9}) is None
    text = learning_warning({**base, "map": 0.55})
    assert text is not None and "55.0 %" in text and "50.0 %" in text and "classifier.epochs" in text
    assert learning_warning({**base, "map": None}) is None
