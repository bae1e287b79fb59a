"""The sparse random walk against a dense reference written here, plus background planes and labels."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from wsss.errors import ConfigError
from wsss.refine.pairs import pair_indices
from wsss.refine.random_walk import (
    WALK_PRESETS,
    WalkSettings,
    background_plane,
    dense_transition,
    foreground_to_labels,
    pool_to_grid,
    pooled_scores,
    random_walk,
    refine_cams,
    scores_to_labels,
    walk_foreground,
    walk_pairs,
    with_background,
)


def dense_reference(scores: Tensor, aff: Tensor, src: Tensor, dst: Tensor, beta: float, logt: int) -> Tensor:
    """PSA's procedure, spelled out: dense W (+I), W^β, column-normalise, T^(2^logt), right-multiply."""
    c, h, w = scores.shape
    n = h * w
    mat = torch.eye(n, dtype=scores.dtype)
    mat[src, dst] = aff
    mat[dst, src] = aff
    mat = mat**beta
    trans = mat / mat.sum(dim=0, keepdim=True)
    trans_t = torch.linalg.matrix_power(trans, 2**logt)
    return (scores.reshape(c, n) @ trans_t).reshape(c, h, w)


def _problem(h: int, w: int, c: int, radius: int, seed: int, cover: str = "all"):
    gen = torch.Generator().manual_seed(seed)
    src, dst = pair_indices(h, w, radius, cover=cover)
    aff = torch.rand(src.numel(), generator=gen, dtype=torch.float64) * 0.9 + 0.1
    scores = torch.rand(c, h, w, generator=gen, dtype=torch.float64)
    return scores, aff, src, dst


@pytest.mark.parametrize(
    ("h", "w", "radius", "beta", "logt", "cover"),
    [(9, 11, 5, 14.0, 7, "all"), (12, 13, 5, 8.0, 8, "crop"), (7, 6, 3, 2.0, 4, "all")],
)
def test_sparse_walk_equals_dense_reference(h, w, radius, beta, logt, cover) -> None:
    scores, aff, src, dst = _problem(h, w, 4, radius, seed=h * w, cover=cover)
    want = dense_reference(scores, aff, src, dst, beta, logt)
    got = random_walk(scores, aff, src, dst, beta=beta, logt=logt)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    assert torch.equal(got.argmax(0), want.argmax(0))
    # the module's own dense (squaring) path agrees too
    dense = random_walk(scores, aff, src, dst, beta=beta, logt=logt, method="dense")
    torch.testing.assert_close(dense, want, rtol=1e-5, atol=1e-9)


def test_float32_walk_close_to_float64_reference() -> None:
    scores, aff, src, dst = _problem(10, 10, 3, 5, seed=3)
    want = dense_reference(scores, aff, src, dst, 14.0, 7)
    got = random_walk(scores.float(), aff.float(), src, dst, beta=14.0, logt=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_walk_invariants() -> None:
    scores, aff, src, dst = _problem(8, 9, 2, 5, seed=5)
    # zero affinity: T is the identity
    ident = random_walk(scores, torch.zeros_like(aff), src, dst, beta=8.0, logt=6)
    torch.testing.assert_close(ident, scores)
    # a constant map is a fixed point of any column-normalised symmetric walk
    const = torch.full_like(scores, 0.3)
    torch.testing.assert_close(random_walk(const, aff, src, dst, beta=3.0, logt=5), const)
    # logt = 0 is one step: scores · T
    one = random_walk(scores, aff, src, dst, beta=2.0, logt=0)
    trans = dense_transition(aff, src, dst, 72, beta=2.0)
    torch.testing.assert_close(trans.sum(0), torch.ones(72, dtype=torch.float64))
    torch.testing.assert_close(one, (scores.reshape(2, -1) @ trans).reshape(scores.shape))


def test_radius_shrink_on_tiny_grids() -> None:
    # 4x4 grid asks for radius 5: shrinks to 1, which has no pairs, so the walk is the identity
    src, dst = walk_pairs(4, 4, WalkSettings())
    assert src.numel() == 0
    scores = torch.rand(2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(random_walk(scores, torch.zeros(0, dtype=torch.float64), src, dst), scores)
    # 5x8 grid: radius 2, and the walk still matches the dense reference on those pairs
    src, dst = walk_pairs(5, 8, WalkSettings())
    assert src.numel() == len(pair_indices(5, 8, 2, cover="all", shrink=False)[0])
    gen = torch.Generator().manual_seed(1)
    aff = torch.rand(src.numel(), generator=gen, dtype=torch.float64)
    scores = torch.rand(3, 5, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        random_walk(scores, aff, src, dst, beta=4.0, logt=5), dense_reference(scores, aff, src, dst, 4.0, 5)
    )
    # without shrinking, cover "all" still works on the tiny grid (pairs just stop at the border)
    src5, _ = walk_pairs(4, 4, WalkSettings(shrink=False))
    assert src5.numel() > 0


def test_bad_inputs() -> None:
    scores, aff, src, dst = _problem(6, 7, 2, 2, seed=0)
    with pytest.raises(ValueError, match="affinities"):
        random_walk(scores, aff[:-1], src, dst)
    with pytest.raises(ValueError, match="out of range"):
        random_walk(scores[:, :3], aff, src, dst)
    with pytest.raises(ConfigError):
        random_walk(scores, aff, src, dst, method="chunky")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        WalkSettings(bg_mode="otsu")
    with pytest.raises(ConfigError):
        WalkSettings(bg_after_walk=True, bg_mode="power")


def test_background_plane_modes() -> None:
    cams = torch.tensor([[[0.5, 1.0], [0.0, 0.2]], [[0.1, 0.3], [0.0, 0.6]]])
    torch.testing.assert_close(background_plane(cams, "constant", 0.42), torch.full((2, 2), 0.42))
    want = torch.tensor([[0.5**2, 0.0], [1.0, 0.4**2]])
    torch.testing.assert_close(background_plane(cams, "power", 2.0), want)
    stacked = with_background(cams, "power", 2.0)
    assert stacked.shape == (3, 2, 2)
    torch.testing.assert_close(stacked[0], want)
    torch.testing.assert_close(stacked[1:], cams)
    # no foreground class at all: the background is 1 everywhere under the power rule
    torch.testing.assert_close(background_plane(torch.zeros(0, 2, 3), "power", 16.0), torch.ones(2, 3))
    with pytest.raises(ConfigError):
        background_plane(cams, "otsu", 1.0)


def test_presets_carry_the_papers_numbers() -> None:
    assert (WALK_PRESETS["transcam"].beta, WALK_PRESETS["transcam"].logt) == (14.0, 7)
    assert WALK_PRESETS["transcam"].bg_value == 0.42 and WALK_PRESETS["transcam"].bg_mode == "constant"
    psa = WALK_PRESETS["psa"]
    assert (psa.beta, psa.logt, psa.bg_mode, psa.bg_value) == (8.0, 8, "power", 16.0)
    assert WALK_PRESETS["irn"].bg_after_walk and WALK_PRESETS["irn"].beta == 10.0


def test_refine_cams_orders() -> None:
    cams = torch.tensor([[[0.2, 0.8], [0.4, 0.0]]], dtype=torch.float64)
    src, dst = pair_indices(2, 2, 2, cover="all", shrink=False)
    zero = torch.zeros(src.numel(), dtype=torch.float64)
    # PSA order with zero affinity: bg plane stacked in front, nothing moves
    out = refine_cams(cams, zero, src, dst, WalkSettings(bg_value=0.3))
    torch.testing.assert_close(out[0], torch.full((2, 2), 0.3, dtype=torch.float64))
    torch.testing.assert_close(out[1:], cams)
    # IRN order: only cams^power walk, neither normalised nor with a background yet
    irn = WalkSettings(bg_value=0.25, bg_after_walk=True, cam_power=2.0)
    torch.testing.assert_close(walk_foreground(cams, zero, src, dst, irn), cams**2)
    with pytest.raises(ConfigError, match="walk_foreground"):
        refine_cams(cams, zero, src, dst, irn)


def test_power_background_is_built_at_full_resolution_then_pooled() -> None:
    """PSA infer_aff: bg = (1 − max)^α per pixel, then 8×8 (here 2×2) average pooling of the stack."""
    cams = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    psa = WALK_PRESETS["psa"]  # α = 16
    scores = pooled_scores(cams, 2, psa)
    # one cell: fg = mean(1, 0, 0, 0) = 0.25; bg = mean(0^16, 1, 1, 1) = 0.75 (pooling first: 0.75^16 ≈ 0.01)
    torch.testing.assert_close(scores, torch.tensor([[[0.75]], [[0.25]]]))
    walked = refine_cams(cams, torch.zeros(0), *pair_indices(1, 1, 5, cover="all"), psa, stride=2)
    torch.testing.assert_close(walked, scores)
    assert scores_to_labels(walked, (2, 2), 2).eq(0).all()  # bg wins; pooling first made it class 1


def test_constant_background_fades_in_the_zero_padded_cells() -> None:
    """A 3×3 image at stride 2 is padded to 4×4: border cells average 2 (or 1) real pixels of 4."""
    scores = pooled_scores(torch.ones(1, 3, 3), 2, WalkSettings(bg_value=0.42))
    torch.testing.assert_close(scores[0], torch.tensor([[0.42, 0.21], [0.21, 0.105]]))
    torch.testing.assert_close(scores[1], torch.tensor([[1.0, 0.5], [0.5, 0.25]]))


def test_irn_labels_divide_by_the_max_after_upsampling_and_cropping() -> None:
    """Walked [0.2, 1.0] at stride 4, image 4×5: bilinear ×4 gives rows [0.2, 0.2, 0.3, 0.5, 0.7 | 0.9, 1, 1];
    the crop keeps five columns, whose max is 0.7, so every pixel is ≥ 0.2/0.7 > 0.25: all class 7.
    Dividing by the grid's max (1.0) first would leave 0.2 < 0.25 in the first two columns."""
    walked = torch.tensor([[[0.2, 1.0]]])
    labels = foreground_to_labels(walked, (4, 5), 4, 0.25, keys=[7])
    assert labels.tolist() == [[7, 7, 7, 7, 7]] * 4
    grid_max_first = scores_to_labels(
        with_background(walked / walked.max(), "constant", 0.25), (4, 5), 4, [7]
    )
    assert grid_max_first.tolist() == [[0, 0, 7, 7, 7]] * 4


def test_irn_labels_ties_empty_maps_and_bad_sizes() -> None:
    walked = torch.zeros(2, 2, 2)
    walked[0, 0, 0] = 4.0  # ÷ max → 1 at the top-left cell; class 2 stays 0
    walked[1, 1, 1] = 1.0  # ÷ 4 → 0.25, a tie with the background: background wins
    labels = foreground_to_labels(walked, (4, 4), 2, 0.25, keys=[3, 9])
    assert labels[0, 0] == 3 and labels[3, 3] == 0 and not labels.eq(9).any()
    assert foreground_to_labels(torch.zeros(1, 2, 2), (3, 4), 2, 0.25).eq(0).all()  # no NaN from 0/0
    with pytest.raises(ValueError, match="exceeds"):
        foreground_to_labels(walked, (5, 4), 2, 0.25)
    with pytest.raises(ValueError, match="keys"):
        foreground_to_labels(walked, (4, 4), 2, 0.25, keys=[3])


def test_pool_to_grid_pads_with_zeros() -> None:
    cams = torch.arange(15, dtype=torch.float32).view(1, 3, 5)
    got = pool_to_grid(cams, 2)
    want = torch.tensor(
        [[[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 4], [(10 + 11) / 4, (12 + 13) / 4, 14 / 4]]]
    )
    torch.testing.assert_close(got, want)


def test_scores_to_labels_upsample_crop_keys() -> None:
    # 3 channels on a 2x2 grid at stride 2 for a 3x4 image; constant per grid cell
    scores = torch.zeros(3, 2, 2)
    scores[0] = 0.5
    scores[1, 0, 0] = 0.9
    scores[2, 1, 1] = 0.9
    scores[2, 0, 1] = 0.5  # tie with background: background wins
    labels = scores_to_labels(scores, (3, 4), stride=2)
    assert labels.shape == (3, 4)
    assert labels[0, 0] == 1 and labels[2, 3] == 2 and labels[0, 3] == 0
    keyed = scores_to_labels(scores, (3, 4), stride=2, keys=[7, 15])
    assert torch.equal(keyed, torch.tensor([0, 7, 15])[labels])
    with pytest.raises(ValueError):
        scores_to_labels(scores, (5, 4), stride=2)
    with pytest.raises(ValueError):
        scores_to_labels(scores, (3, 4), stride=2, keys=[7])
