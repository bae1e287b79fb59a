"""IRN's loss on hand-computed pairs: affinity terms, displacement terms and their combination."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.losses.irn import EPS, IRNLoss, displacement_loss, irn_affinity_loss, irn_loss, pair_offsets
from wsss.registry import LOSSES


def _case():
    aff = torch.tensor([[0.9, 0.5, 0.2, 0.7], [0.1, 0.8, 0.6, 0.3]])
    bg = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    fg = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 0, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)
    return aff, bg, fg, neg


def test_affinity_loss_hand_computed() -> None:
    aff, bg, fg, neg = _case()
    out = irn_affinity_loss(aff, bg, fg, neg)
    e = EPS
    bg_ref = (-math.log(0.9 + e) - math.log(0.8 + e)) / (2 + e)
    fg_ref = (-math.log(0.5 + e) - math.log(0.7 + e)) / (2 + e)
    neg_ref = (-math.log(1 + e - 0.2) - math.log(1 + e - 0.1) - math.log(1 + e - 0.6)) / (3 + e)
    pos_ref = bg_ref / 2 + fg_ref / 2
    assert float(out["bg"]) == pytest.approx(bg_ref, rel=1e-6)
    assert float(out["fg"]) == pytest.approx(fg_ref, rel=1e-6)
    assert float(out["pos"]) == pytest.approx(pos_ref, rel=1e-6)
    assert float(out["neg"]) == pytest.approx(neg_ref, rel=1e-6)
    assert float(out["loss"]) == pytest.approx((pos_ref + neg_ref) / 2, rel=1e-6)


def test_empty_sets_contribute_zero_and_perfect_affinities_cost_almost_nothing() -> None:
    aff = torch.tensor([[1.0, 0.0]])
    none = torch.zeros(1, 2, dtype=torch.bool)
    out = irn_affinity_loss(aff, torch.tensor([[True, False]]), none, torch.tensor([[False, True]]))
    assert float(out["fg"]) == 0.0
    assert float(out["loss"]) == pytest.approx(0.0, abs=1e-4)


def test_mask_shape_mismatch_is_an_error() -> None:
    aff, bg, fg, neg = _case()
    with pytest.raises(ValueError, match="fg_pos mask shape"):
        irn_affinity_loss(aff, bg, fg[:, :3], neg)


def test_pair_offsets() -> None:
    src, dst = torch.tensor([0, 3, 7]), torch.tensor([1, 8, 10])
    # width 4: 0→1 is (0, 1); 3 (0,3) → 8 (2,0) is (2, −3); 7 (1,3) → 10 (2,2) is (1, −1)
    assert pair_offsets(src, dst, 4).tolist() == [[0, 2, 1], [1, -3, -1]]


def test_displacement_loss_hand_computed() -> None:
    # grid 1×3; pairs (0→1) offset (0, 1) and (0→2) offset (0, 2)
    src, dst = torch.tensor([0, 0]), torch.tensor([1, 2])
    disp = torch.zeros(1, 2, 1, 3)
    disp[0, 0] = torch.tensor([0.5, 0.0, 0.0])  # dy
    disp[0, 1] = torch.tensor([2.0, 1.0, 0.0])  # dx: a field pointing at column 2 (the "centroid")
    fg = torch.tensor([[True, True]])
    bg = torch.tensor([[False, True]])
    out = displacement_loss(disp, src, dst, bg, fg)
    # D(src) − D(dst): pair 1 (0.5, 1.0) vs target (0, 1) → |0.5| + 0; pair 2 (0.5, 2.0) vs (0, 2) → 0.5
    assert float(out["dp_fg"]) == pytest.approx((0.5 + 0.5) / (2 * 2 + EPS), rel=1e-6)
    # background pair 2: |0.5| + |2.0| over 2·1
    assert float(out["dp_bg"]) == pytest.approx(2.5 / (2 + EPS), rel=1e-6)
    # a field that points exactly at a centroid has zero foreground loss
    exact = torch.zeros(1, 2, 1, 3)
    exact[0, 1] = torch.tensor([2.0, 1.0, 0.0])
    assert float(displacement_loss(exact, src, dst, bg, fg)["dp_fg"]) == 0.0


def test_total_loss_adds_half_the_displacement_terms() -> None:
    aff = torch.tensor([[0.6, 0.3]])
    bg, fg = torch.tensor([[False, True]]), torch.tensor([[True, False]])
    neg = torch.tensor([[False, False]])
    src, dst = torch.tensor([0, 0]), torch.tensor([1, 2])
    disp = torch.randn(1, 2, 1, 3)
    total = irn_loss(aff, bg, fg, neg, disp, src, dst)
    parts = irn_affinity_loss(aff, bg, fg, neg)
    dp = displacement_loss(disp, src, dst, bg, fg)
    expected = (parts["pos"] + parts["neg"]) / 2 + (dp["dp_fg"] + dp["dp_bg"]) / 2
    torch.testing.assert_close(total["loss"], expected)
    assert set(total) == {"loss", "pos", "neg", "bg", "fg", "dp_fg", "dp_bg"}
    with pytest.raises(ValueError, match="src and dst"):
        irn_loss(aff, bg, fg, neg, disp)


def test_registry_module_matches_function() -> None:
    aff, bg, fg, neg = _case()
    module = LOSSES.build("irn")
    assert isinstance(module, IRNLoss)
    torch.testing.assert_close(module(aff, bg, fg, neg)["loss"], irn_affinity_loss(aff, bg, fg, neg)["loss"])
