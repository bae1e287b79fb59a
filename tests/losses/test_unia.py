"""UniA's losses against hand-written pair tables, explicit loops and independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from wsss.errors import ConfigError, DataError
from wsss.losses.unia import (
    balanced_seg_loss,
    contrastive_affinity_loss,
    distribution_loss,
    downscale_labels,
    downscale_labels_nearest,
    energy_loss,
    foreground_mask,
    pair_labels,
    patch_contrast_loss,
)

I = 255  # noqa: E741  (ignore, short so the pair tables line up)


# ---------------------------------------------------------------------------------- pair labels

LABELS_2X2 = torch.tensor([[[1, 0], [1, I]]])  # tokens (row-major): 1, 0, 1, ignore


def test_pair_labels_full_grid_diagonal_positive() -> None:
    expected = [
        [1, 0, 1, I],
        [0, 1, 0, I],
        [1, 0, 1, I],
        [I, I, I, I],
    ]
    assert pair_labels(LABELS_2X2).tolist() == [expected]
    assert pair_labels(LABELS_2X2, radius=1).tolist() == [expected]  # 2×2 lies inside a 3×3 window


def test_pair_labels_full_grid_diagonal_ignore() -> None:
    expected = [
        [I, 0, 1, I],
        [0, I, 0, I],
        [1, 0, I, I],
        [I, I, I, I],
    ]
    assert pair_labels(LABELS_2X2, diagonal="ignore").tolist() == [expected]


def test_pair_labels_radius_zero_keeps_only_self_pairs() -> None:
    expected = [
        [1, I, I, I],
        [I, 1, I, I],
        [I, I, 1, I],
        [I, I, I, I],
    ]
    assert pair_labels(LABELS_2X2, radius=0).tolist() == [expected]
    assert (pair_labels(LABELS_2X2, radius=0, diagonal="ignore") == I).all()


def test_pair_labels_radius_is_a_square_window() -> None:
    row = torch.tensor([[[2, 2, 2]]])  # tokens 0 and 2 are two columns apart
    assert pair_labels(row, radius=1).tolist() == [[[1, 1, I], [1, 1, 1], [I, 1, 1]]]
    grid = torch.zeros(1, 3, 3, dtype=torch.long)  # diagonal neighbours are inside a radius-1 square
    table = pair_labels(grid, radius=1)[0]
    assert table[0, 4] == 1 and table[0, 8] == I and table[4].eq(1).all()


def test_pair_labels_custom_ignore_and_bad_arguments() -> None:
    labels = torch.tensor([[[1, -1]]])
    assert pair_labels(labels, ignore_index=-1).tolist() == [[[1, -1], [-1, -1]]]
    with pytest.raises(ConfigError, match="diagonal"):
        pair_labels(LABELS_2X2, diagonal="zero")
    with pytest.raises(ConfigError, match="radius"):
        pair_labels(LABELS_2X2, radius=-1)
    with pytest.raises(DataError, match="integer label map"):
        pair_labels(LABELS_2X2.float())


def test_downscale_nearest_takes_top_left_and_bilinear_compat_invents_labels() -> None:
    labels = torch.arange(16).reshape(1, 4, 4)
    assert downscale_labels_nearest(labels, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    border = torch.tensor([[[0, I, I, I]]])
    assert downscale_labels(border, (1, 2)).tolist() == [[[0, I]]]
    assert downscale_labels(border, (1, 2), mode="bilinear_compat").tolist() == [[[127, I]]]
    with pytest.raises(ConfigError, match="mode"):
        downscale_labels(border, (1, 2), mode="bilinear")
    with pytest.raises(ConfigError, match="size"):
        downscale_labels(border, (0, 2))


def test_foreground_mask() -> None:
    labels = torch.tensor([[[0, 1, 3], [I, 0, 20]]])
    assert foreground_mask(labels).tolist() == [[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]
    assert foreground_mask(labels).dtype == torch.float32


# ------------------------------------------------------------------------------------------ PTC


def test_ptc_identical_features_all_positive() -> None:
    b, h, w = 2, 2, 2
    vec = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0, -2.0], dtype=torch.float64)  # |cos| ignores sign and norm
    feats = (signs[:, None] * vec).T.reshape(1, 3, h, w).repeat(b, 1, 1, 1)
    pairs = pair_labels(torch.ones(b, h, w, dtype=torch.long), diagonal="ignore")
    positives = b * (h * w) * (h * w - 1)
    expected = 0.5 * (1 - positives / (positives + 1))
    assert patch_contrast_loss(feats, pairs).item() == pytest.approx(expected, rel=1e-12)


def test_ptc_orthogonal_negatives_and_antiparallel_negatives() -> None:
    pairs = pair_labels(torch.tensor([[[1, 2]]]), diagonal="ignore")  # two negative pairs, no positive
    orthogonal = torch.tensor([[3.0, 0.0], [0.0, -2.0]]).T.reshape(1, 2, 1, 2)
    assert patch_contrast_loss(orthogonal, pairs).item() == pytest.approx(0.5, abs=1e-7)
    antiparallel = torch.tensor([[1.0, 0.0], [-4.0, 0.0]]).T.reshape(1, 2, 1, 2)
    assert patch_contrast_loss(antiparallel, pairs).item() == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-7)


def test_ptc_matches_loops_and_rejects_bad_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 2, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 1], [I, 2, 0]], [[3, 3, 3], [0, I, 3]]])
    pairs = pair_labels(labels, diagonal="ignore")
    tokens = feats.flatten(2)
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for k in range(2):
        for i in range(6):
            for j in range(6):
                a, c = tokens[k, :, i], tokens[k, :, j]
                cos = abs(float(a @ c) / (float(a.norm()) * float(c.norm())))
                if pairs[k, i, j] == 1:
                    pos_sum, n_pos = pos_sum + cos, n_pos + 1
                elif pairs[k, i, j] == 0:
                    neg_sum, n_neg = neg_sum + cos, n_neg + 1
    expected = 0.5 * (1 - pos_sum / (n_pos + 1)) + 0.5 * neg_sum / (n_neg + 1)
    assert patch_contrast_loss(feats, pairs).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(DataError, match="pair labels"):
        patch_contrast_loss(feats, pairs[:, :5, :5])


# ---------------------------------------------------------------------------- affinity loss


def naive_affinity_loss(aff: torch.Tensor, pairs: torch.Tensor, tau: float) -> float:
    b, n, _ = aff.shape
    total, count = 0.0, 0
    for k in range(b):
        for i in range(n):
            denom = sum(math.exp(float(aff[k, i, m]) / tau) for m in range(n)) + 1e-4
            for j in range(n):
                if pairs[k, i, j] == 1:
                    total += -math.log(math.exp(float(aff[k, i, j]) / tau) / denom)
                    count += 1
    return total / (count + 1) / (2 * b)


def _affinity_case() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    aff = torch.rand(2, 6, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 1], [I, 2, 0]], [[3, 3, 0], [0, I, 3]]])
    return aff, pair_labels(labels, radius=1)


def test_affinity_loss_matches_loops() -> None:
    aff, pairs = _affinity_case()
    assert (pairs == I).any() and (pairs == 0).any()
    for tau in (0.5, 0.1):
        got = contrastive_affinity_loss(aff, pairs, tau=tau).item()
        assert got == pytest.approx(naive_affinity_loss(aff, pairs, tau), abs=1e-6, rel=1e-10)
    got32 = contrastive_affinity_loss(aff.float(), pairs).item()
    assert got32 == pytest.approx(naive_affinity_loss(aff, pairs, 0.5), abs=1e-6)


def test_affinity_loss_falls_when_positive_affinity_rises() -> None:
    aff, pairs = _affinity_case()
    before = contrastive_affinity_loss(aff, pairs)
    raised = torch.where(pairs == 1, aff + 0.3, aff)  # negatives, ignored and out-of-window unchanged
    assert contrastive_affinity_loss(raised, pairs) < before - 1e-6
    lowered_neg = torch.where(pairs != 1, aff - 0.3, aff)  # others fall: the whole row's denominator
    assert contrastive_affinity_loss(lowered_neg, pairs) < before - 1e-6


def test_affinity_loss_is_stable_for_large_logits() -> None:
    aff, pairs = _affinity_case()
    big = aff * 300.0  # e^{600}: overflows float32 (and float64 near 709) in the naive form
    got = contrastive_affinity_loss(big.float(), pairs)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(contrastive_affinity_loss(big, pairs).item(), rel=1e-5)
    with pytest.raises(ConfigError, match="tau"):
        contrastive_affinity_loss(aff, pairs, tau=0.0)


# ---------------------------------------------------------------------------- distribution


def test_distribution_loss_zero_on_match_and_shift() -> None:
    labels = torch.tensor([[[0, 1, 1], [I, 2, 0]], [[3, 0, 0], [0, 0, 0]]])
    mask = foreground_mask(labels)
    assert distribution_loss(mask, mask.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert distribution_loss(mask, mask + 4.2).item() == pytest.approx(0.0, abs=1e-6)
    assert distribution_loss(mask, 1.0 - mask).item() > 0.05


def test_distribution_loss_equals_kl_div_and_resizes_the_mask() -> None:
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 4, 6, generator=gen) > 0.5).double()
    small = F.interpolate(mask[:, None], size=(2, 3), mode="bilinear", align_corners=False)[:, 0]
    reference = F.kl_div(
        F.log_softmax(z.flatten(1), dim=1), F.softmax(small.flatten(1), dim=1), reduction="batchmean"
    )
    got = distribution_loss(mask, z)
    assert got.item() == pytest.approx(reference.item(), rel=1e-12)
    assert got.item() > 0
    got.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(DataError, match="same B"):
        distribution_loss(mask[:1], z)


# ---------------------------------------------------------------------------- segmentation

LOGITS = [[0.2, 1.0, -0.5, 2.0], [1.5, -1.0, 0.3, 0.0]]  # C=2 over 4 pixels (one row)


def ce(z: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in z)) - z[label]


def test_balanced_seg_loss_hand_formula() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 1, I]]])
    per_pixel = [ce([LOGITS[0][p], LOGITS[1][p]], lab) for p, lab in enumerate([0, 0, 1])]
    expected = 0.5 * ((per_pixel[0] + per_pixel[1]) / 2 + per_pixel[2])
    assert balanced_seg_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_seg_loss_all_background_is_half_background_ce() -> None:
    logits = torch.tensor(LOGITS, dtype=torch.float64).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, I, 0]]])
    bg = sum(ce([LOGITS[0][p], LOGITS[1][p]], 0) for p in (0, 1, 3)) / 3
    got = balanced_seg_loss(logits, labels)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(0.5 * bg, rel=1e-6)
    with pytest.raises(DataError, match="outside"):
        balanced_seg_loss(logits, torch.tensor([[[0, 5, 0, 0]]]))


# ---------------------------------------------------------------------------------- energy


def naive_energy(probs, images, roi, sigma_rgb, sigma_xy):
    """−Σ_{i≠j} W_ij ⟨S_i, S_j⟩ / B on the full grid (scale 1), in plain tensors."""
    b, _, h, w = probs.shape
    s = (probs * roi[:, None]).flatten(2)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    total = probs.new_zeros(())
    for k in range(b):
        col = images[k].flatten(1).T.double()
        d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
        d_col = ((col[:, None] - col[None]) ** 2).sum(-1)
        kernel = torch.exp(-d_pos / (2 * sigma_xy**2) - d_col / (2 * sigma_rgb**2))
        kernel = kernel * (1 - torch.eye(h * w, dtype=kernel.dtype))
        total = total - (s[k].T @ s[k] * kernel).sum()
    return total / b


def _energy_case(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    images = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 60
    roi = (torch.rand(2, 4, 5, generator=gen) > 0.2).double()
    return logits, images, roi


def test_energy_matches_naive_value_and_gradient() -> None:
    logits, images, roi = _energy_case()
    probs = logits.softmax(1).requires_grad_(True)
    got = energy_loss(probs, images, roi, sigma_rgb=15.0, sigma_xy=3.0, scale=1.0)
    (grad,) = torch.autograd.grad(got, probs)
    ref_probs = probs.detach().clone().requires_grad_(True)
    ref = naive_energy(ref_probs, images, roi, 15.0, 3.0)
    (ref_grad,) = torch.autograd.grad(ref, ref_probs)
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0


def test_energy_dense_and_window_agree_when_window_covers_grid() -> None:
    logits, images, roi = _energy_case(4)
    probs = logits.softmax(1).requires_grad_(True)
    kwargs = {"sigma_rgb": 20.0, "sigma_xy": 4.0, "scale": 1.0}
    dense = energy_loss(probs, images, roi, **kwargs)
    window = energy_loss(probs, images, roi, max_tokens=0, window_radius=4, **kwargs)
    (g_dense,) = torch.autograd.grad(dense, probs)
    (g_window,) = torch.autograd.grad(window, probs)
    assert window.item() == pytest.approx(dense.item(), rel=1e-10)
    torch.testing.assert_close(g_window, g_dense, rtol=1e-10, atol=1e-12)
    small = energy_loss(probs, images, roi, max_tokens=0, window_radius=1, **kwargs)
    assert small.item() > dense.item()  # truncating the kernel drops (negative) pair terms


def test_energy_window_dilation_weights_hand_count() -> None:
    probs = torch.zeros(1, 2, 1, 5, dtype=torch.float64)
    probs[:, 0] = 1.0
    images = torch.full((1, 3, 1, 5), 80.0, dtype=torch.float64)
    roi = torch.ones(1, 1, 5, dtype=torch.float64)
    got = energy_loss(
        probs, images, roi, sigma_xy=1e9, scale=1.0, max_tokens=0, window_radius=1, window_dilation=2
    )
    # offsets ±2 along the row: ordered pairs (0,2),(1,3),(2,4) and back = 6, each weighted 2² = 4
    assert got.item() == pytest.approx(-24.0, rel=1e-9)


def test_energy_constant_segmentation_beats_random_on_uniform_image() -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.full((1, 3, 8, 8), 120.0)
    roi = torch.ones(1, 8, 8)
    constant = torch.zeros(1, 3, 8, 8)
    constant[:, 1] = 1.0
    random = torch.randn(1, 3, 8, 8, generator=gen).mul(3).softmax(1)
    e_constant = energy_loss(constant, images, roi)
    e_random = energy_loss(random, images, roi)
    assert e_constant < e_random < 0


def test_energy_prefers_segmentation_that_follows_the_edge() -> None:
    images = torch.zeros(1, 3, 8, 8)
    images[..., 4:] = 255.0  # left half black, right half white
    roi = torch.ones(1, 8, 8)
    follows = torch.zeros(1, 2, 8, 8)
    follows[:, 0, :, :4] = 1.0
    follows[:, 1, :, 4:] = 1.0
    cuts = torch.zeros(1, 2, 8, 8)
    cuts[:, 0, :4] = 1.0
    cuts[:, 1, 4:] = 1.0
    for kwargs in ({}, {"max_tokens": 0, "window_radius": 2}):
        assert energy_loss(follows, images, roi, **kwargs) < energy_loss(cuts, images, roi, **kwargs)


def test_energy_scale_works_in_input_pixels_and_roi_gates() -> None:
    logits, images, roi = _energy_case(6)
    logits = logits.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 8×10
    images = images.repeat_interleave(2, -1).repeat_interleave(2, -2)
    roi = roi.repeat_interleave(2, -1).repeat_interleave(2, -2)
    probs = logits.softmax(1)
    half = energy_loss(probs, images, roi, sigma_xy=6.0, scale=0.5)
    small = F.interpolate(probs, size=(4, 5), mode="bilinear", align_corners=False)
    reference = naive_energy(small, images[..., ::2, ::2], roi[..., ::2, ::2], 15.0, 3.0)
    assert half.item() == pytest.approx(reference.item(), rel=1e-10)
    probs = probs.requires_grad_(True)
    gated = energy_loss(probs, images, torch.zeros_like(roi), scale=0.5)
    gated.backward()
    assert gated.item() == 0.0 and probs.grad.abs().sum() == 0


def test_energy_rejects_bad_arguments() -> None:
    probs = torch.rand(1, 2, 4, 4)
    images = torch.rand(1, 3, 4, 4)
    roi = torch.ones(1, 4, 4)
    with pytest.raises(ConfigError, match="scale"):
        energy_loss(probs, images, roi, scale=0.0)
    with pytest.raises(ConfigError, match="sigma_rgb"):
        energy_loss(probs, images, roi, sigma_rgb=-1.0)
    with pytest.raises(ConfigError, match="window_radius"):
        energy_loss(probs, images, roi, window_radius=0)
    with pytest.raises(DataError, match="images"):
        energy_loss(probs, images[:, :2], roi)
