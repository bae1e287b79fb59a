"""IRN's path index: path cells by hand, direction counts, edge → affinity against a per-pair reference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from wsss.refine.pairs import offset_pairs, pair_indices, radius_offsets
from wsss.refine.path_index import (
    IRN_WALK,
    PathIndex,
    edge_to_affinity,
    path_cells,
    path_indices,
    walk_with_edge,
)
from wsss.refine.random_walk import foreground_to_labels


def naive_affinity(edge: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``1 − max edge`` over the cells within one cell of the segment src→dst, pair by pair."""
    w = edge.shape[1]
    out = []
    for s, d in zip(src.tolist(), dst.tolist()):
        sy, sx, dy, dx = s // w, s % w, d // w - s // w, d % w - s % w
        peak = 0.0
        for y in range(min(0, dy), max(0, dy) + 1):
            for x in range(min(0, dx), max(0, dx) + 1):
                if (dy * x - dx * y) ** 2 < dy * dy + dx * dx:
                    peak = max(peak, float(edge[sy + y, sx + x]))
        out.append(1.0 - peak)
    return torch.tensor(out, dtype=edge.dtype)


def test_path_cells_by_hand() -> None:
    assert path_cells((0, 1)) == [(0, 1), (0, 0)]
    assert path_cells((0, 3)) == [(0, 3), (0, 2), (0, 1), (0, 0)]
    assert path_cells((4, 0)) == [(4, 0), (3, 0), (2, 0), (1, 0), (0, 0)]
    # diagonal (1,1): (x − y)²/2 < 1 keeps all four cells of the 2×2 box
    assert path_cells((1, 1)) == [(1, 1), (0, 1), (1, 0), (0, 0)]
    assert path_cells((1, -1)) == [(1, -1), (0, -1), (1, 0), (0, 0)]
    # (2,2): |x − y| <= 1 only, so the corners (0,2) and (2,0) are off the path
    assert sorted(path_cells((2, 2))) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    # (3,-1): |3x + y| <= 3 holds for the whole 4×2 box
    assert len(path_cells((3, -1))) == 8
    # (3,3) keeps the diagonal band |x − y| <= 1: 4 + 3 + 3 cells
    assert len(path_cells((3, 3))) == 10


def test_path_ends_and_order() -> None:
    for offset, cells in zip(radius_offsets(10), path_indices(10)):
        assert cells[0] == offset  # destination first
        assert cells[-1] == (0, 0)  # source last
        assert len(set(cells)) == len(cells)
        sums = [abs(y) + abs(x) for y, x in cells]
        assert sums == sorted(sums, reverse=True)


def test_direction_counts_radius_5_and_10() -> None:
    assert len(path_indices(5)) == 34
    # radius 10 by rows: dy=0: 9, dy=1..4: 19 each, 5: 17, 6: 15, 7: 15, 8: 11, 9: 9
    assert len(path_indices(10)) == 152
    index = PathIndex.build(10)
    assert index.offsets == tuple(radius_offsets(10))
    assert max(len(p) for p in index.paths) == 22


def test_pair_counts_radius_5_all_and_10_crop() -> None:
    h, w = 13, 15
    edge = torch.rand(2, 1, h, w)
    aff, src, dst = edge_to_affinity(edge, radius=5, cover="all")
    expected = sum((h - abs(dy)) * (w - abs(dx)) for dy, dx in radius_offsets(5))
    assert aff.shape == (2, expected)
    ref_src, ref_dst = pair_indices(h, w, 5, cover="all")
    assert torch.equal(src, ref_src) and torch.equal(dst, ref_dst)
    # IRN's training layout: radius 10 drops the last 9 rows and 9 columns on each side
    h, w = 24, 30
    aff, src, dst = PathIndex.build(10).affinity(torch.rand(1, 1, h, w), cover="crop")
    assert aff.shape == (1, 152 * (h - 9) * (w - 18))
    ref_src, ref_dst = offset_pairs(h, w, radius_offsets(10), "crop")
    assert torch.equal(src, ref_src) and torch.equal(dst, ref_dst)


@pytest.mark.parametrize(("radius", "cover"), [(5, "all"), (3, "crop"), (10, "all")])
def test_affinity_matches_per_pair_reference(radius: int, cover: str) -> None:
    torch.manual_seed(radius)
    edge = torch.rand(2, 1, 9, 12)
    aff, src, dst = edge_to_affinity(edge, radius=radius, cover=cover, shrink=False)
    for b in range(2):
        torch.testing.assert_close(aff[b], naive_affinity(edge[b, 0], src, dst))


def test_vertical_wall_cuts_only_crossing_pairs() -> None:
    h, w, wall = 8, 9, 4
    edge = torch.zeros(1, 1, h, w)
    edge[..., wall] = 1.0
    aff, src, dst = edge_to_affinity(edge, radius=5)
    sx, dx = src % w, dst % w
    crosses = (sx - wall) * (dx - wall) <= 0  # an end on the wall, or the two ends on opposite sides
    assert crosses.any() and (~crosses).any()
    assert torch.all(aff[0, crosses] == 0.0)
    assert torch.all(aff[0, ~crosses] == 1.0)


def test_gradient_goes_to_the_arg_max_cell() -> None:
    torch.manual_seed(0)
    edge = torch.rand(1, 1, 6, 7, requires_grad=True)
    weights = torch.rand(len(pair_indices(6, 7, 3, cover="all")[0]))
    aff, src, dst = edge_to_affinity(edge, radius=3)
    (aff[0] * weights).sum().backward()
    # reference: the same max taken with autograd on the stacked path cells
    ref_edge = edge.detach().clone().requires_grad_(True)
    plane, w = ref_edge[0, 0], 7
    values = []
    for s, d in zip(src.tolist(), dst.tolist()):
        sy, sx, dy, dx = s // w, s % w, d // w - s // w, d % w - s % w
        cells = path_cells((dy, dx))
        values.append(torch.stack([plane[sy + y, sx + x] for y, x in cells]).max())
    ref_aff = 1 - torch.stack(values)
    (ref_aff * weights).sum().backward()
    torch.testing.assert_close(aff[0], ref_aff.detach())
    torch.testing.assert_close(edge.grad, ref_edge.grad)
    assert edge.grad.abs().sum() > 0


def test_no_grad_and_grad_paths_agree() -> None:
    edge = torch.rand(2, 1, 7, 8)
    plain, _, _ = edge_to_affinity(edge, radius=4)
    tracked, _, _ = edge_to_affinity(edge.clone().requires_grad_(True), radius=4)
    torch.testing.assert_close(plain, tracked.detach())


def test_shrink_follows_pair_indices_on_tiny_grids() -> None:
    edge = torch.rand(1, 1, 5, 6)
    aff, src, dst = edge_to_affinity(edge, radius=5, shrink=True)
    ref_src, ref_dst = pair_indices(5, 6, 5, cover="all", shrink=True)
    assert torch.equal(src, ref_src) and torch.equal(dst, ref_dst)
    assert aff.shape == (1, len(ref_src))


def test_bad_edge_shape_and_mismatched_grid() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        PathIndex.build(3).affinity(torch.rand(1, 2, 5, 5))
    with pytest.raises(ValueError, match="same stride-4 grid"):
        walk_with_edge(torch.rand(1, 6, 6), torch.zeros(6, 7))


def test_walk_spreads_a_seed_over_its_own_region_only() -> None:
    h, w, wall = 10, 13, 6
    edge = torch.zeros(h, w)
    edge[:, wall] = 1.0
    cams = torch.zeros(2, h, w)
    cams[0, 4, 2] = 1.0  # class 1 seed, left region
    cams[1, 5, 10] = 0.5  # class 2 seed, right region
    walked = walk_with_edge(cams, edge, IRN_WALK)
    assert walked.shape == (2, h, w)  # foreground only: the background comes after upsampling
    left, right = slice(0, wall), slice(wall + 1, w)
    assert torch.all(walked[0, :, right] == 0) and torch.all(walked[1, :, left] == 0)
    assert torch.all(walked[:, :, wall] == 0)  # the wall itself starts at 0 and is isolated
    # 256 steps flatten each seed over its (equally shaped) region, class 2 at half of class 1
    flat = walked[0, :, left] / walked[0, :, left].max()
    torch.testing.assert_close(flat, torch.ones(h, wall), atol=1e-3, rtol=0)
    torch.testing.assert_close(walked[1, :, right], walked[0, :, left] / 2, atol=1e-6, rtol=1e-3)
    labels = foreground_to_labels(walked, (h * 4, w * 4), 4, IRN_WALK.bg_value)
    assert labels[:, : wall * 4 - 2].eq(1).all() and labels[:, (wall + 1) * 4 + 2 :].eq(2).all()


def test_seed_on_a_boundary_is_removed() -> None:
    edge = torch.zeros(6, 6)
    edge[2, 3] = 1.0
    cams = torch.zeros(1, 6, 6)
    cams[0, 2, 3] = 1.0
    assert torch.all(walk_with_edge(cams, edge) == 0)


def test_cam_power_before_the_walk_and_no_normalisation() -> None:
    edge = torch.zeros(5, 9)
    edge[:, 4] = 1.0
    cams = torch.zeros(1, 5, 9)
    cams[0, :, :4] = 0.5
    cams[0, :, 5:] = 1.0
    walked = walk_with_edge(cams, edge, replace(IRN_WALK, cam_power=1.3))
    # each side is flat, so the walk keeps it as it is: 0.5^1.3 on the left, 1 on the right
    torch.testing.assert_close(walked[0, :, :4], torch.full((5, 4), 0.5**1.3))
    torch.testing.assert_close(walked[0, :, 5:], torch.ones(5, 4))
    assert torch.all(walked[0, :, 4] == 0)
