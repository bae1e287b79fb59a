"""PSA's affinity loss on six written-out pairs, empty sets, gradients and the registry entry."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.losses.affinity import AffinityLoss, affinity_loss
from wsss.registry import LOSSES

# six pairs: two background-positive, one foreground-positive, two negative, one unlabelled
AFF = [0.9, 0.5, 0.2, 0.8, 0.1, 0.6]
BG = [1, 1, 0, 0, 0, 0]
FG = [0, 0, 1, 0, 0, 0]
NEG = [0, 0, 0, 1, 1, 0]


def _tensors(aff=AFF, bg=BG, fg=FG, neg=NEG):
    return (
        torch.tensor(aff, dtype=torch.float64),
        torch.tensor(bg, dtype=torch.bool),
        torch.tensor(fg, dtype=torch.bool),
        torch.tensor(neg, dtype=torch.bool),
    )


def test_hand_computed_six_pairs() -> None:
    out = affinity_loss(*_tensors())
    bg = -(math.log(0.90001) + math.log(0.50001)) / 2  # = 0.39924...
    fg = -math.log(0.20001)  # = 1.60939...
    neg = -(math.log(1.00001 - 0.8) + math.log(1.00001 - 0.1)) / 2  # = 0.85737...
    assert out["bg"].item() == pytest.approx(bg, rel=1e-12)
    assert out["fg"].item() == pytest.approx(fg, rel=1e-12)
    assert out["neg"].item() == pytest.approx(neg, rel=1e-12)
    assert out["loss"].item() == pytest.approx(bg / 4 + fg / 4 + neg / 2, rel=1e-12)
    assert out["loss"].item() == pytest.approx(0.39924 / 4 + 1.60939 / 4 + 0.85737 / 2, abs=1e-4)


def test_empty_set_contributes_zero_and_unlabelled_pairs_are_ignored() -> None:
    out = affinity_loss(*_tensors(fg=[0] * 6))
    assert out["fg"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["bg"].item() / 4 + out["neg"].item() / 2)
    # changing the affinity of the unlabelled pair changes nothing
    moved = affinity_loss(*_tensors(aff=[*AFF[:5], 0.01]))
    assert moved["loss"].item() == pytest.approx(affinity_loss(*_tensors())["loss"].item())


def test_batch_counts_run_over_the_whole_batch() -> None:
    aff, bg, fg, neg = _tensors()
    batched = affinity_loss(aff.view(2, 3), bg.view(2, 3), fg.view(2, 3), neg.view(2, 3))
    torch.testing.assert_close(batched["loss"], affinity_loss(aff, bg, fg, neg)["loss"])


def test_gradients_pull_positives_up_and_negatives_down() -> None:
    aff, bg, fg, neg = _tensors()
    aff.requires_grad_(True)
    affinity_loss(aff, bg, fg, neg)["loss"].backward()
    g = aff.grad
    assert (g[:3] < 0).all()  # raising a positive pair's affinity lowers the loss
    assert (g[3:5] > 0).all()
    assert g[5] == 0
    # d/da of −log(a+ε)/(4·2) at a = 0.9
    assert g[0].item() == pytest.approx(-1 / (0.90001 * 8))


def test_shape_mismatch_and_registry() -> None:
    aff, bg, fg, neg = _tensors()
    with pytest.raises(ValueError, match="fg_pos"):
        affinity_loss(aff, bg, fg[:5], neg)
    loss = LOSSES.build("psa_affinity")
    assert isinstance(loss, AffinityLoss)
    torch.testing.assert_close(loss(aff, bg, fg, neg)["loss"], affinity_loss(aff, bg, fg, neg)["loss"])
