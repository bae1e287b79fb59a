"""Radius masks, affinity normalisations (none / row / Sinkhorn) and propagation."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.refine.affinity_propagation import normalise_affinity, propagate, radius_mask


def random_affinity(b: int = 2, n: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, n, generator=gen) * 0.98 + 0.01


def test_radius_mask_hand_checked_on_3x3() -> None:
    mask = radius_mask(3, 3, 1)
    assert mask.shape == (9, 9) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [4, 6, 4, 6, 9, 6, 4, 6, 4]
    assert mask[0].nonzero()[:, 0].tolist() == [0, 1, 3, 4]  # corner: itself, right, below, diagonal
    assert torch.equal(mask, mask.T)
    assert radius_mask(3, 3, 0).equal(torch.eye(9, dtype=torch.bool))
    # rows and columns are not confused on a non-square grid: token 0 of a 2×4 grid
    assert radius_mask(2, 4, 1)[0].nonzero()[:, 0].tolist() == [0, 1, 4, 5]


def test_none_is_raw_and_masked_outside_the_radius() -> None:
    aff = random_affinity()
    assert torch.equal(normalise_affinity(aff), aff)
    out = normalise_affinity(aff, "none", radius=1, grid=(4, 4))
    inside = radius_mask(4, 4, 1)
    assert torch.equal(out[:, inside], aff[:, inside])
    assert (out[:, ~inside] == 0).all()


def test_row_normalisation_rows_sum_to_one() -> None:
    aff = random_affinity()
    for radius in (None, 1):
        out = normalise_affinity(aff, "row", radius=radius)  # 16 tokens: the square 4×4 grid is inferred
        assert torch.allclose(out.sum(dim=-1), torch.ones(2, 16), atol=1e-6)
    masked = aff * radius_mask(4, 4, 1)
    assert torch.allclose(out, masked / masked.sum(dim=-1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("radius", [None, 1])
def test_sinkhorn_is_doubly_stochastic(radius: int | None) -> None:
    out = normalise_affinity(random_affinity(), "sinkhorn", radius=radius, iters=50, eps=0.5)
    assert torch.allclose(out.sum(dim=-1), torch.ones(2, 16), atol=1e-4)
    assert torch.allclose(out.sum(dim=-2), torch.ones(2, 16), atol=1e-4)
    if radius is not None:
        assert (out[:, ~radius_mask(4, 4, radius)] == 0).all()


def test_sinkhorn_matches_plain_domain_reference_row_then_column() -> None:
    aff = random_affinity(b=1, n=9, seed=3).double()
    kernel = torch.exp(aff[0] / 0.5) * radius_mask(3, 3, 1)
    for _ in range(3):
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        kernel = kernel / kernel.sum(dim=0, keepdim=True)
    out = normalise_affinity(aff, "sinkhorn", radius=1, iters=3, eps=0.5)[0]
    assert torch.allclose(out, kernel, atol=1e-10)


def test_sinkhorn_small_eps_stays_finite() -> None:
    out = normalise_affinity(random_affinity() * 50.0, "sinkhorn", eps=0.01)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.sum(dim=-2), torch.ones(2, 16), atol=1e-5)


def test_unknown_norm_and_bad_grid() -> None:
    with pytest.raises(ConfigError, match="none, row, sinkhorn"):
        normalise_affinity(random_affinity(), "softmax")
    with pytest.raises(ConfigError, match="grid"):
        normalise_affinity(torch.rand(1, 6, 6), radius=1)
    with pytest.raises(DataError):
        normalise_affinity(random_affinity(), radius=1, grid=(3, 3))


def test_propagate_identity_and_index_convention() -> None:
    cams = torch.rand(2, 3, 2, 3)
    assert torch.allclose(propagate(cams, torch.eye(6).expand(2, 6, 6)), cams)
    # A(i, j) sends source i to target j: a single 1 at (0, 5) moves token 0's score to token 5
    aff = torch.zeros(1, 6, 6)
    aff[0, 0, 5] = 2.0
    out = propagate(cams[:1], aff)
    assert torch.allclose(out[0, :, 1, 2], 2.0 * cams[0, :, 0, 0])
    assert out.flatten(2)[..., :5].abs().sum() == 0
    with pytest.raises(DataError):
        propagate(cams, torch.eye(5).expand(2, 5, 5))
