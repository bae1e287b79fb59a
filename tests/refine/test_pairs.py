"""Radius pairs, affinity labels and label preparation: exact sets, hand-made grids, brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.refine.pairs import (
    affinity_labels,
    affinity_training_labels,
    downscale_labels,
    effective_radius,
    merge_la_ha,
    offset_pairs,
    pair_indices,
    radius_offsets,
    source_margins,
)

# PSA's 34 offsets for radius 5, written out row by row
PSA_OFFSETS_R5 = (
    [(0, 1), (0, 2), (0, 3), (0, 4)]
    + [(1, dx) for dx in (-4, -3, -2, -1, 0, 1, 2, 3, 4)]
    + [(2, dx) for dx in (-4, -3, -2, -1, 0, 1, 2, 3, 4)]
    + [(3, dx) for dx in (-3, -2, -1, 0, 1, 2, 3)]
    + [(4, dx) for dx in (-2, -1, 0, 1, 2)]
)


def test_radius_5_has_psa_34_offsets_in_order() -> None:
    got = radius_offsets(5)
    assert len(got) == 34
    assert got == PSA_OFFSETS_R5


def test_small_radii() -> None:
    assert radius_offsets(1) == []
    assert radius_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    with pytest.raises(ValueError):
        radius_offsets(0)


def test_half_disc_covers_every_neighbour_exactly_once() -> None:
    half = set(radius_offsets(5))
    full = {(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25}
    mirrored = {(-dy, -dx) for dy, dx in half}
    assert half.isdisjoint(mirrored)
    assert half | mirrored == full


def test_margins_and_crop_layout_size_on_448_crop() -> None:
    assert source_margins(radius_offsets(5)) == (4, 4, 4)
    src, dst = pair_indices(56, 56, 5, cover="crop")
    n_src = (56 - 4) * (56 - 8)
    assert src.shape == dst.shape == (34 * n_src,)
    # offset-major: every offset block has the same sources, and dst - src is that offset
    src_b, dst_b = src.view(34, n_src), dst.view(34, n_src)
    assert torch.equal(src_b, src_b[:1].expand(34, -1))
    for k, (dy, dx) in enumerate(PSA_OFFSETS_R5):
        assert torch.equal(dst_b[k] // 56 - src_b[k] // 56, torch.full((n_src,), dy))
        assert torch.equal(dst_b[k] % 56 - src_b[k] % 56, torch.full((n_src,), dx))


def test_crop_layout_hand_computed() -> None:
    # 3x4 grid, radius 2: sources = rows 0..1, columns 1..2 → flat 1, 2, 5, 6
    src, dst = pair_indices(3, 4, 2, cover="crop", shrink=False)
    assert src.tolist() == [1, 2, 5, 6] * 4
    assert dst.tolist() == [2, 3, 6, 7, 4, 5, 8, 9, 5, 6, 9, 10, 6, 7, 10, 11]


def _brute_force_pairs(h: int, w: int, r: int) -> set[frozenset[int]]:
    pairs = set()
    for i in range(h * w):
        for j in range(h * w):
            dy, dx = j // w - i // w, j % w - i % w
            if i != j and dy * dy + dx * dx < r * r:
                pairs.add(frozenset((i, j)))
    return pairs


@pytest.mark.parametrize(("h", "w", "r"), [(6, 7, 3), (9, 12, 5), (1, 6, 3)])
def test_all_cover_lists_every_neighbour_pair_once(h: int, w: int, r: int) -> None:
    src, dst = pair_indices(h, w, r, cover="all", shrink=False)
    listed = [frozenset((int(a), int(b))) for a, b in zip(src, dst)]
    assert len(listed) == len(set(listed))  # no pair twice, in either direction
    assert set(listed) == _brute_force_pairs(h, w, r)


def test_effective_radius_shrinks_on_tiny_grids() -> None:
    assert effective_radius(56, 56, 5) == 5
    assert effective_radius(11, 30, 5) == 5
    assert effective_radius(10, 30, 5) == 4
    assert effective_radius(30, 3, 5) == 1
    assert effective_radius(2, 2, 5) == 0
    # with shrink a 6x6 grid uses radius 2 in the crop layout: 4 offsets x (6-1)*(6-2) sources
    src, _ = pair_indices(6, 6, 5, cover="crop")
    assert src.numel() == 4 * 5 * 4
    empty_src, empty_dst = pair_indices(2, 2, 5)
    assert empty_src.numel() == 0 and empty_dst.numel() == 0
    with pytest.raises(ValueError, match="too small"):
        pair_indices(6, 6, 5, cover="crop", shrink=False)


def test_affinity_labels_hand_computed() -> None:
    # 2x2 grid, radius 2, cover "all": pairs (0,1) (2,3) (1,2) (0,2) (1,3) (0,3)
    src, dst = offset_pairs(2, 2, radius_offsets(2), cover="all")
    assert list(zip(src.tolist(), dst.tolist())) == [(0, 1), (2, 3), (1, 2), (0, 2), (1, 3), (0, 3)]
    grid = torch.tensor([[0, 0], [1, 255]], dtype=torch.uint8)
    bg, fg, neg = affinity_labels(grid, radius_offsets(2), cover="all")
    assert bg.tolist() == [True, False, False, False, False, False]
    assert fg.tolist() == [False] * 6
    assert neg.tolist() == [False, False, True, True, False, False]
    grid2 = torch.tensor([[3, 0], [3, 3]])
    bg, fg, neg = affinity_labels(grid2, radius_offsets(2), cover="all")
    assert bg.tolist() == [False] * 6
    assert fg.tolist() == [False, True, False, True, False, True]
    assert neg.tolist() == [True, False, True, False, True, False]


def test_affinity_labels_match_brute_force_on_crop_layout_and_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    grids = torch.randint(0, 4, (2, 12, 14), generator=gen)
    grids[grids == 3] = 255
    offsets = radius_offsets(5)
    bg, fg, neg = affinity_labels(grids, offsets)
    src, dst = offset_pairs(12, 14, offsets, "crop")
    assert bg.shape == (2, src.numel())
    for b in range(2):
        flat = grids[b].flatten()
        a, c = flat[src], flat[dst]
        assert torch.equal(bg[b], (a == 0) & (c == 0))
        assert torch.equal(fg[b], (a == c) & (a > 0) & (a < 255))
        assert torch.equal(neg[b], (a != c) & (a < 255) & (c < 255))
        # the three sets are disjoint and skip every pair that touches 255
        assert not (bg[b] & fg[b]).any() and not (bg[b] & neg[b]).any() and not (fg[b] & neg[b]).any()
        assert not ((bg[b] | fg[b] | neg[b]) & ((a == 255) | (c == 255))).any()


def test_downscale_labels_picks_block_top_left() -> None:
    labels = torch.arange(16 * 16).view(16, 16)
    assert downscale_labels(labels, 8).tolist() == [[0, 8], [128, 136]]
    assert downscale_labels(torch.zeros(3, 17, 9), 8).shape == (3, 3, 2)
    assert downscale_labels(torch.zeros(448, 448, dtype=torch.uint8)).shape == (56, 56)


def test_downscale_labels_centre_picks_pils_nearest_pixel() -> None:
    """IRN: pil_rescale(label, 0.25, order 0) samples floor((i + 0.5)·4) = 4i + 2."""
    labels = torch.arange(64).view(8, 8)
    assert downscale_labels(labels, 4, "centre").tolist() == [[18, 22], [50, 54]]
    assert downscale_labels(labels, 4).tolist() == [[0, 4], [32, 36]]  # TransCAM's corner, for contrast
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(32, 48), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(noise).resize((12, 8), Image.Resampling.NEAREST))
    assert np.array_equal(downscale_labels(torch.from_numpy(noise), 4, "centre").numpy(), pil)
    # a side that is no multiple: ceil(10/4) = 3 cells, the last centre (10) clamped to 9
    assert downscale_labels(torch.arange(10).view(1, 10), 4, "centre").tolist() == [[2, 6, 9]]
    with pytest.raises(ValueError, match="sample"):
        downscale_labels(labels, 4, "middle")  # type: ignore[arg-type]


def test_training_labels_sample_choice() -> None:
    labels = torch.zeros(8, 8, dtype=torch.uint8)
    labels[:, 2:] = 5  # a boundary inside the first 4×4 block
    assert affinity_training_labels(labels, stride=4, sample="centre").tolist() == [[5, 5], [5, 5]]
    assert affinity_training_labels(labels, stride=4).tolist() == [[0, 5], [0, 5]]


def test_training_labels_padding_choice() -> None:
    labels = torch.full((16, 16), 2, dtype=torch.uint8)
    labels[8:, :8] = 255
    padding = torch.zeros(16, 16, dtype=torch.bool)
    padding[:, 8:] = True  # right half filled in by the crop
    clean = affinity_training_labels(labels, padding)
    assert clean.tolist() == [[2, 255], [255, 255]]
    compat = affinity_training_labels(labels, padding, padding_as=0)
    assert compat.tolist() == [[2, 0], [255, 0]]
    assert affinity_training_labels(labels).tolist() == [[2, 2], [255, 2]]
    assert labels[0, 8] == 2  # input untouched
    with pytest.raises(ValueError):
        affinity_training_labels(labels, padding, padding_as=7)


def test_merge_la_ha() -> None:
    la = torch.tensor([[0, 0, 5], [0, 7, 0]], dtype=torch.uint8)
    ha = torch.tensor([[0, 5, 5], [3, 7, 0]], dtype=torch.uint8)
    assert merge_la_ha(la, ha).tolist() == [[0, 255, 5], [255, 7, 0]]
