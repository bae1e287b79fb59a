"""Seed labels: hand-computed cases for the constant-threshold and dual-threshold rules."""

from __future__ import annotations

import torch

from wsss.refine.seeds import confident_labels, threshold_labels


def _cams() -> tuple[torch.Tensor, torch.Tensor]:
    # two classes (label ids 3 and 5) on a 2x3 grid
    a = torch.tensor([[0.9, 0.3, 0.1], [0.25, 0.0, 0.7]])
    b = torch.tensor([[0.2, 0.6, 0.1], [0.10, 0.0, 0.7]])
    return torch.stack([a, b]), torch.tensor([3, 5])


def test_threshold_labels_hand_computed() -> None:
    cams, keys = _cams()
    got = threshold_labels(cams, keys, 0.25)
    # 0.25 exactly at the threshold goes to background; the tie 0.7/0.7 takes the first class
    want = torch.tensor([[3, 5, 0], [0, 0, 3]])
    assert torch.equal(got, want)


def test_confident_labels_hand_computed() -> None:
    cams, keys = _cams()
    got = confident_labels(cams, keys, fg_threshold=0.6, low_threshold=0.2)
    want = torch.tensor([[3, 5, 0], [255, 0, 3]])
    assert torch.equal(got, want)


def test_no_classes_gives_background() -> None:
    cams = torch.zeros(0, 4, 5)
    assert torch.equal(
        threshold_labels(cams, torch.zeros(0, dtype=torch.long), 0.1), torch.zeros(4, 5).long()
    )
