"""Segmentation cross-entropy and PMM's Pretended Under-Fitting, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.losses.seg import (
    CrossEntropySegLoss,
    PretendedUnderFittingLoss,
    deep_supervision_loss,
    pixel_cross_entropy,
    puf_reduce,
)
from wsss.registry import LOSSES

# A hand-made per-pixel loss map (1×2×2) with every pixel labelled: mean = 2.0 / 4 = 0.5.
LOSS_MAP = torch.tensor([[[0.1, 0.2], [0.3, 1.4]]])
ALL_VALID = torch.ones_like(LOSS_MAP, dtype=torch.bool)


def test_puf_is_plain_ce_at_or_above_the_gate():
    out = puf_reduce(LOSS_MAP, ALL_VALID, beta=0.5, k=0.5)  # mean 0.5 is not < β = 0.5
    assert out["loss"].item() == pytest.approx(0.5)
    assert out["ce"].item() == pytest.approx(0.5)
    assert out["gated"].item() == 0.0
    assert out["above_k"].item() == pytest.approx(0.25)  # only 1.4 exceeds k


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("clamp", (0.1 + 0.2 + 0.3 + 0.5) / 4),  # 1.4 → k = 0.5
        ("pow", (math.sqrt(0.1) + math.sqrt(0.2) + math.sqrt(0.3) + math.sqrt(1.4)) / 4),  # ℓ^0.5
        ("ignore", (0.1 + 0.2 + 0.3 + 0.0) / 4),  # 1.4 > k dropped, still counted
    ],
)
def test_puf_below_the_gate(mode, expected):
    out = puf_reduce(LOSS_MAP, ALL_VALID, beta=0.6, k=0.5, mode=mode)
    assert out["gated"].item() == 1.0
    assert out["ce"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(expected)


def test_gate_over_all_pixels_or_over_labelled_pixels():
    loss_map = torch.tensor([[[0.2, 0.0], [0.4, 0.9]]])  # the 0.0 pixel is ignored
    valid = torch.tensor([[[True, False], [True, True]]])
    # over all pixels (mmseg 0.8): mean 1.5/4 = 0.375 < 0.45 → clamp 0.9 → 0.5, mean 1.1/4
    every = puf_reduce(loss_map, valid, beta=0.45, k=0.5, gate_over="all")
    assert every["ce"].item() == pytest.approx(0.375)
    assert every["loss"].item() == pytest.approx(1.1 / 4)
    # over labelled pixels: mean 1.5/3 = 0.5 ≥ 0.45 → not gated, plain mean 0.5
    labelled = puf_reduce(loss_map, valid, beta=0.45, k=0.5, gate_over="valid")
    assert labelled["gated"].item() == 0.0
    assert labelled["loss"].item() == pytest.approx(0.5)
    assert labelled["above_k"].item() == pytest.approx(1 / 3)


def test_clamped_pixels_give_no_gradient():
    loss_map = LOSS_MAP.clone().requires_grad_(True)
    puf_reduce(loss_map, ALL_VALID, beta=0.6, k=0.5)["loss"].backward()
    torch.testing.assert_close(loss_map.grad, torch.tensor([[[0.25, 0.25], [0.25, 0.0]]]))


def test_pow_mode_has_finite_gradients_at_ignored_pixels():
    loss_map = torch.tensor([[[0.0, 0.16], [0.25, 0.04]]], requires_grad=True)
    valid = torch.tensor([[[False, True], [True, True]]])
    out = puf_reduce(loss_map, valid, beta=1.0, k=0.5, mode="pow", gate_over="valid")
    assert out["loss"].item() == pytest.approx((0.4 + 0.5 + 0.2) / 3)
    out["loss"].backward()
    assert torch.isfinite(loss_map.grad).all()
    assert loss_map.grad[0, 0, 0].item() == 0.0
    assert loss_map.grad[0, 0, 1].item() == pytest.approx(0.5 / math.sqrt(0.16) / 3)  # d(ℓ^½)/dℓ / N


def _two_pixel_batch():
    """Logits [3, 0] at two pixels; labels 0 and 1 → ℓ = log(1 + e^-3) and log(1 + e^3)."""
    logits = torch.tensor([[[[3.0, 3.0]], [[0.0, 0.0]]]])  # 1×2×1×2
    labels = torch.tensor([[[0, 1]]])
    easy, hard = math.log1p(math.exp(-3.0)), math.log1p(math.exp(3.0))
    return logits, labels, easy, hard


def test_puf_on_logits_matches_hand_computed_cross_entropy():
    logits, labels, easy, hard = _two_pixel_batch()
    loss_map, valid = pixel_cross_entropy(logits, labels)
    torch.testing.assert_close(loss_map, torch.tensor([[[easy, hard]]]))
    assert valid.all()
    ce = CrossEntropySegLoss()(logits, labels)["loss"].item()
    assert ce == pytest.approx((easy + hard) / 2)
    below = PretendedUnderFittingLoss(beta=2.0, k=0.5)(logits, labels)  # mean 1.55 < 2 → clamp
    assert below["loss"].item() == pytest.approx((easy + 0.5) / 2)
    above = PretendedUnderFittingLoss(beta=1.0, k=0.5)(logits, labels)  # mean 1.55 ≥ 1 → CE
    assert above["loss"].item() == pytest.approx(ce)


def test_ce_ignores_255_and_upsamples_logits_to_the_labels():
    num_classes = 21
    logits = torch.zeros(2, num_classes, 3, 3, requires_grad=True)  # uniform softmax: ℓ = log C everywhere
    labels = torch.randint(0, num_classes, (2, 12, 12))
    labels[0, :4] = 255
    out = CrossEntropySegLoss()(logits, labels)
    assert out["loss"].item() == pytest.approx(math.log(num_classes))
    counted = CrossEntropySegLoss(mean_over="all")(logits, labels)["loss"].item()
    assert counted == pytest.approx(math.log(num_classes) * (288 - 48) / 288)
    out["loss"].backward()
    assert logits.grad.shape == (2, num_classes, 3, 3)


def test_bilinear_upsampling_of_logits_is_align_corners_false():
    logits = torch.tensor([[[[0.0, 4.0]], [[0.0, 0.0]]]])  # 1×2×1×2 → 1×2×1×4
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    loss_map, _ = pixel_cross_entropy(logits, labels)
    # align_corners=False samples class-0 logits at 0, 1, 3, 4 along the row
    expected = [math.log1p(math.exp(-v)) for v in (0.0, 1.0, 3.0, 4.0)]
    torch.testing.assert_close(loss_map[0, 0], torch.tensor(expected))


def test_all_ignored_batch_gives_zero_loss_with_a_graph():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), 255)
    for loss in (
        CrossEntropySegLoss(),
        PretendedUnderFittingLoss(gate_over="valid"),
        PretendedUnderFittingLoss(),
    ):
        out = loss(logits, labels)
        assert out["loss"].item() == 0.0
        out["loss"].backward()


def test_bad_labels_raise_data_errors():
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(DataError, match=r"values \[7\] outside 0..2"):
        CrossEntropySegLoss()(logits, torch.tensor([[[0, 1], [7, 255]]]))
    with pytest.raises(DataError, match="integer tensor"):
        CrossEntropySegLoss()(logits, torch.zeros(1, 2, 2))
    with pytest.raises(DataError, match="same B"):
        PretendedUnderFittingLoss()(logits, torch.zeros(2, 2, 2, dtype=torch.long))


def test_deep_supervision_adds_the_weighted_aux_loss():
    logits, labels, easy, hard = _two_pixel_batch()
    aux = torch.zeros_like(logits)  # ℓ = log 2 at both pixels
    out = deep_supervision_loss(CrossEntropySegLoss(), logits, labels, aux, aux_weight=0.4)
    assert out["loss"].item() == pytest.approx((easy + hard) / 2 + 0.4 * math.log(2))
    assert out["aux_loss"].item() == pytest.approx(math.log(2))
    plain = deep_supervision_loss(CrossEntropySegLoss(), logits, labels, None, aux_weight=0.4)
    assert set(plain) == {"loss", "ce"}


def test_registry_builds_and_rejects_bad_settings():
    coco = LOSSES.build("puf", beta=0.8, k=0.8)
    assert (coco.beta, coco.k, coco.mode, coco.gate_over) == (0.8, 0.8, "clamp", "all")
    assert isinstance(LOSSES.build("ce"), CrossEntropySegLoss)
    with pytest.raises(ConfigError, match="did you mean 'clamp'"):
        LOSSES.build("puf", mode="clam")
    with pytest.raises(ConfigError, match="beta must be a positive number"):
        LOSSES.build("puf", beta=0)
    with pytest.raises(ConfigError, match="gate_over"):
        LOSSES.build("puf", gate_over="pixels")
