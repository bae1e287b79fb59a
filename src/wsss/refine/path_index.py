"""IRN's path index: pair affinities from a class-boundary map, ``aff = 1 − max(edge along the path)``.

IRN (Ahn et al., CVPR'19) does not predict affinities directly. It predicts a boundary map
``edge`` in [0, 1] on the stride-4 grid, and two pixels are as similar as the strongest
boundary between them allows: ``aff(p, q) = 1 − max_{c ∈ path(p, q)} edge(c)``. The path of a
direction ``(dy, dx)`` is the set of grid cells of the bounding box of ``(0, 0)`` and
``(dy, dx)`` whose centre lies less than one cell from the straight segment between them
(squared perpendicular distance ``(dy·x − dx·y)² / (dy² + dx²) < 1``). Both end cells belong to
it, so a pixel sitting on a boundary has no affinity to anything.

The directions are PSA's half-disc (:func:`wsss.refine.pairs.radius_offsets`): radius 10
(152 directions) for IRN training, radius 5 (34) for the random walk. Pairs are listed in
exactly the layout of :func:`wsss.refine.pairs.offset_pairs` (offset-major; ``cover="all"``
for the walk, ``"crop"`` for training — at radius 10 the crop layout drops the last 9 rows and
9 columns on each side, IRN's own training layout). IRN groups directions by path length
instead; the pair set is the same, only the order differs, and IRN's walk pads the edge map
with 1 so that off-grid pairs get affinity 0, which is what leaving them out does.

The maximum is taken by slicing shifted views of the edge map, never by materialising one
index per path cell and pair. When the edge map needs a gradient, the arg-max cell of every
pair is found without autograd and the affinity is a single ``gather``, so backward keeps one
index per pair rather than every path cell (IRN's ``max_pool2d`` also sends the gradient to
one cell per pair).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from wsss.refine.pairs import (
    COVERS,
    Cover,
    Offset,
    effective_radius,
    offset_pairs,
    radius_offsets,
    source_margins,
)
from wsss.refine.random_walk import WALK_PRESETS, WalkSettings, random_walk

IRN_TRAIN_RADIUS = 10
IRN_WALK_RADIUS = 5


def path_cells(offset: Offset) -> list[Offset]:
    """Cells ``(y, x)`` (relative to the source) on the straight path to ``offset``, destination first.

    Ordered by decreasing ``|y| + |x|`` (row-major among equals), so the first cell is the
    destination and the last the source ``(0, 0)``.
    """
    dy, dx = offset
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        raise ValueError("the offset (0, 0) has no path")
    cells = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < length_sq
    ]
    return sorted(cells, key=lambda c: -(abs(c[0]) + abs(c[1])))


def path_indices(radius: int) -> list[list[Offset]]:
    """For every direction of :func:`radius_offsets` (same order), its :func:`path_cells`."""
    return [path_cells(offset) for offset in radius_offsets(radius)]


@dataclass(frozen=True)
class PathIndex:
    """The directions of a radius and the path cells of each (IRN's ``PathIndex``)."""

    radius: int
    offsets: tuple[Offset, ...]
    paths: tuple[tuple[Offset, ...], ...]

    @classmethod
    def build(cls, radius: int) -> PathIndex:
        offsets = tuple(radius_offsets(radius))
        return cls(radius, offsets, tuple(tuple(path_cells(o)) for o in offsets))

    def pairs(
        self, h: int, w: int, cover: Cover = "all", device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(src, dst)`` flat indices of this index's pairs on an ``h×w`` grid (``offset_pairs`` layout)."""
        return offset_pairs(h, w, list(self.offsets), cover, device)

    def affinity(self, edge: Tensor, cover: Cover = "all") -> tuple[Tensor, Tensor, Tensor]:
        """``(aff (B, P), src, dst)``: ``1 − max edge`` along each pair's path, for ``edge`` ``(B, 1, h, w)``."""
        if edge.dim() != 4 or edge.shape[1] != 1:
            raise ValueError(f"edge map must be (B, 1, h, w), got shape {tuple(edge.shape)}")
        if cover not in COVERS:
            raise ValueError(f"cover must be one of {COVERS}, got {cover!r}")
        b, _, h, w = edge.shape
        src, dst = self.pairs(h, w, cover, device=edge.device)
        boxes = _source_boxes(h, w, self.offsets, cover)
        plane = edge[:, 0]
        track_grad = torch.is_grad_enabled() and edge.requires_grad
        parts: list[Tensor] = []
        with torch.no_grad() if track_grad else nullcontext():
            for path, box in zip(self.paths, boxes):
                if box is None:
                    continue
                y0, y1, x0, x1 = box
                views = torch.stack([plane[:, y0 + cy : y1 + cy, x0 + cx : x1 + cx] for cy, cx in path])
                if not track_grad:
                    parts.append(views.amax(dim=0).reshape(b, -1))
                    continue
                # flat grid index of each pair's arg-max cell: source index + the cell's flat shift
                shift = torch.tensor([cy * w + cx for cy, cx in path], device=edge.device)
                rows = torch.arange(y0, y1, device=edge.device)[:, None] * w
                base = rows + torch.arange(x0, x1, device=edge.device)[None, :]
                parts.append((base + shift[views.argmax(dim=0)]).reshape(b, -1))
        if not parts:
            return edge.new_zeros(b, 0), src, dst
        if not track_grad:
            return 1.0 - torch.cat(parts, dim=1), src, dst
        peak = plane.reshape(b, -1).gather(1, torch.cat(parts, dim=1))
        return 1.0 - peak, src, dst


def _source_boxes(
    h: int, w: int, offsets: tuple[Offset, ...], cover: Cover
) -> list[tuple[int, int, int, int] | None]:
    """Per offset, the source rectangle ``(y0, y1, x0, x1)`` that :func:`offset_pairs` uses (None: no pairs).

    Every path cell lies in the bounding box of source and destination, so it is on the grid
    whenever both ends are.
    """
    if cover == "crop":
        bottom, left, right = source_margins(list(offsets))
        rows, cols = h - bottom, w - left - right
        if rows <= 0 or cols <= 0:
            raise ValueError(
                f"a {h}x{w} grid is too small for these offsets (needs more than {bottom} rows and "
                f"{left + right} columns); use a smaller radius or cover='all'"
            )
        return [(0, rows, left, left + cols)] * len(offsets)
    boxes: list[tuple[int, int, int, int] | None] = []
    for dy, dx in offsets:
        y0, y1 = max(0, -dy), min(h, h - dy)
        x0, x1 = max(0, -dx), min(w, w - dx)
        boxes.append((y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None)
    return boxes


def edge_to_affinity(
    edge: Tensor, radius: int = IRN_WALK_RADIUS, cover: Cover = "all", shrink: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """``(aff (B, P), src, dst)`` for an edge map ``(B, 1, h, w)``, laid out as ``pair_indices``.

    With the same ``radius``, ``cover`` and ``shrink`` the pairs are exactly those of
    :func:`wsss.refine.pairs.pair_indices`, so the result feeds ``random_walk`` directly.
    ``shrink`` lowers the radius on grids shorter than ``2·radius + 1`` (IRN never shrinks;
    it only matters for images under ~44 px at stride 4).
    """
    h, w = edge.shape[-2:]
    r = effective_radius(h, w, radius) if shrink else radius
    if r < 1:
        empty = torch.zeros(0, dtype=torch.long, device=edge.device)
        return edge.new_zeros(edge.shape[0], 0), empty, empty.clone()
    return PathIndex.build(r).affinity(edge, cover)


IRN_WALK: WalkSettings = WALK_PRESETS["irn"]


def walk_with_edge(cams: Tensor, edge: Tensor, settings: WalkSettings = IRN_WALK) -> Tensor:
    """IRN's semantic random walk (``propagate_to_edge``) of foreground CAMs ``(K, h, w)`` over a boundary map ``(h, w)``.

    Raise the CAMs to ``settings.cam_power`` (IRN 1, SPU 1.3, AMR 1.5), multiply them by
    ``1 − edge`` (scores on boundaries start at 0), walk with affinities ``1 − max edge`` on the
    radius pairs (β, ``2^logt`` steps). Returns the walked foreground ``(K, h, w)``, neither
    normalised nor with a background: IRN takes the max only after upsampling and cropping
    (:func:`wsss.refine.random_walk.foreground_to_labels`).
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (K, h, w), got shape {tuple(cams.shape)}")
    if edge.dim() == 4 and edge.shape[:2] == (1, 1):
        edge = edge[0, 0]
    if edge.shape != cams.shape[-2:]:
        raise ValueError(
            f"edge map {tuple(edge.shape)} and CAM grid {tuple(cams.shape[-2:])} differ: both must be "
            "on the same stride-4 grid (ceil(H/4) x ceil(W/4))"
        )
    edge = edge.to(device=cams.device, dtype=cams.dtype)
    fg = cams.clamp_min(0.0) ** settings.cam_power if settings.cam_power != 1.0 else cams
    fg = fg * (1.0 - edge)
    aff, src, dst = edge_to_affinity(edge[None, None], settings.radius, settings.cover, settings.shrink)
    return random_walk(fg, aff[0], src, dst, settings.beta, settings.logt, settings.method)
