"""PAR: neighbour layout, affinity mass, edge-aware sharpening and scale invariance."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError
from wsss.refine.par import PAR, dilated_neighbours


def two_region_image(size: int = 16, noise: float = 0.01) -> torch.Tensor:
    """Left half one colour, right half another, plus a little noise (so local stds are not 0)."""
    gen = torch.Generator().manual_seed(0)
    img = torch.empty(1, 3, size, size)
    img[..., : size // 2] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    img[..., size // 2 :] = torch.tensor([0.1, 0.3, 0.8])[:, None, None]
    return img + noise * torch.rand(img.shape, generator=gen)


def ramp_mask(size: int = 16) -> torch.Tensor:
    """1 on the far left, 0 on the far right, a linear ramp over 8 columns across the border."""
    cols = torch.arange(size, dtype=torch.float32)
    return ((size / 2 + 3.5 - cols) / 8).clamp(0, 1).expand(1, 1, size, size).clone()


def test_neighbours_hand_checked_with_replicate_padding() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    neigh = dilated_neighbours(x, (1,))
    assert neigh.shape == (1, 1, 8, 3, 3)
    # centre pixel (value 4): its 8 neighbours in raster order
    assert neigh[0, 0, :, 1, 1].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    # top-left corner (value 0): replicate padding repeats the border
    assert neigh[0, 0, :, 0, 0].tolist() == [0, 0, 1, 0, 1, 3, 3, 4]


def test_position_distances_match_neighbour_offsets() -> None:
    par = PAR(dilations=(1, 3))
    rows, cols = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    coords = torch.stack([rows, cols])[None]  # 1×2×9×9
    neigh = dilated_neighbours(coords, par.dilations)[0, :, :, 4, 4]  # 2×M at the interior pixel (4, 4)
    dist = ((neigh - 4.0) ** 2).sum(dim=0).sqrt()
    assert torch.allclose(dist, par.distances.float(), atol=1e-6)
    assert par.distances.numel() == 16 and math.isclose(
        float(par.distances.max()), 3 * math.sqrt(2), rel_tol=1e-6
    )


def test_affinity_sums_to_one_plus_w2_and_channel_sum_grows_accordingly() -> None:
    img = two_region_image()
    par = PAR(num_iter=4, w2=0.05)
    aff = par.affinity(img)
    assert torch.allclose(aff.sum(dim=2), torch.full((1, 1, 16, 16), 1.05), atol=1e-5)
    masks = torch.cat([ramp_mask(), 1 - ramp_mask()], dim=1)
    out = par(img, masks)
    assert torch.allclose(out.sum(dim=1), torch.full((1, 16, 16), 1.05**4), atol=1e-5)


def test_sharpens_a_ramp_towards_the_colour_edge() -> None:
    img, soft = two_region_image(), ramp_mask()
    step = torch.zeros_like(soft)
    step[..., :8] = 1.0
    par = PAR()
    out = par(img, soft)
    before = (soft - step).abs().mean().item()
    # the constant (1 + w2)^n growth is divided out before measuring
    after = (out / (1 + par.w2) ** par.num_iter - step).abs().mean().item()
    assert before == pytest.approx(0.125)
    assert after < 0.05
    # the border columns now fall on the right side of 0.5
    assert (out[..., 7] > 0.9).all() and (out[..., 8] < 0.1).all()


def test_values_stay_in_the_input_range_up_to_the_w2_growth() -> None:
    img, soft = two_region_image(), ramp_mask() * 0.8 + 0.1  # input range [0.1, 0.9]
    par = PAR()
    out = par(img, soft)
    grow = (1 + par.w2) ** par.num_iter
    assert out.min() >= 0.1 * grow - 1e-5 and out.max() <= 0.9 * grow + 1e-5
    assert out.max() > 0.9  # the growth is real: w2 > 0 is not a convex combination
    convex = PAR(w2=0.0)(img, soft)  # w2 = 0: a convex combination, so exactly within the range
    assert convex.min() >= 0.1 - 1e-6 and convex.max() <= 0.9 + 1e-6


def test_invariant_to_image_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 12, 10, generator=gen)
    masks = torch.rand(2, 3, 6, 5, generator=gen)
    par = PAR(dilations=(1, 2, 4))
    out = par(img, masks)
    assert out.shape == (2, 3, 12, 10)
    assert torch.allclose(out, par(img * 255.0, masks), atol=1e-5)


def test_masks_are_resized_with_align_corners() -> None:
    img = torch.full((1, 3, 5, 5), 0.5)
    masks = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    out = PAR(num_iter=0)(img, masks)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="dilations"):
        PAR(dilations=())
    with pytest.raises(ConfigError, match="w1"):
        PAR(w1=0.0)
