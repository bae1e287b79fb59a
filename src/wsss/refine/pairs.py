"""Pixel pairs within a radius on a feature grid, and the affinity labels PSA trains on.

AffinityNet (PSA, CVPR'18) predicts how likely two nearby pixels of the stride-8 grid belong
to the same class. Every pair is listed once through a *half* neighbourhood of offsets
``(dy, dx)``: the rest of the disc is the same pairs seen from the other end, which the random
walk restores by symmetrising.

Pair layout. Pairs are flat index tensors ``(src, dst)`` into the row-major ``h·w`` grid, in
**offset-major** order: all pairs of the first offset, then all of the second, and so on.
Two coverages exist:

* ``cover="crop"`` (PSA's training layout): the sources are the grid minus a border, chosen so
  that every offset lands inside the grid — the last ``max dy`` rows and ``r−1`` columns on
  each side for the radius offsets. Every offset then has the same sources, so the pairs form
  an ``(n_offsets, n_sources)`` block: 34 × (56−4)·(56−8) on a 448 crop. We keep this for
  training because the loss and label layout are then exactly PSA's/TransCAM's.
* ``cover="all"`` (for the random walk): every source pixel with every offset whose
  destination is inside the grid (IRN gets the same set by padding). After symmetrisation each
  pixel is joined to *all* its neighbours within the radius, border pixels included. PSA's own
  inference reused the crop layout, which leaves border pixels with fewer links; ``"crop"``
  reproduces that when parity matters.

Label preparation for training (``affinity_training_labels``) turns a confident-label map
(0 background, 1..K classes, 255 uncertain) into the grid the network sees (1/8 for PSA's
AffinityNet, 1/4 for IRN), sampling each block where the authors' resize does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from wsss.data.palette import IGNORE_INDEX

Offset = tuple[int, int]
Cover = Literal["crop", "all"]
COVERS = ("crop", "all")


def radius_offsets(radius: int = 5) -> list[Offset]:
    """PSA's half-disc: ``(0, 1..r−1)`` then rows ``dy = 1..r−1`` with ``dy² + dx² < r²``.

    Radius 5 gives 34 offsets. Order matters: it is the offset-major order of the pair layout.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        offsets += [(dy, dx) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius]
    return offsets


def effective_radius(h: int, w: int, radius: int = 5) -> int:
    """The radius actually used on an ``h×w`` grid (SEAM/TransCAM's rule for tiny maps).

    When the short side is below ``2r+1`` the radius drops to ``(short side − 1) // 2`` so the
    cropped source region stays non-empty; otherwise it is ``radius``.
    """
    short = min(h, w)
    return (short - 1) // 2 if short < 2 * radius + 1 else radius


def source_margins(offsets: list[Offset]) -> tuple[int, int, int]:
    """``(bottom, left, right)`` border the ``crop`` layout removes so every offset stays inside.

    Offsets never point upwards (``dy >= 0``), so no top margin is needed.
    """
    if not offsets:
        raise ValueError("offsets must not be empty")
    if any(dy < 0 for dy, _ in offsets):
        raise ValueError("half-neighbourhood offsets must have dy >= 0")
    bottom = max(dy for dy, _ in offsets)
    left = max(max(-dx for _, dx in offsets), 0)
    right = max(max(dx for _, dx in offsets), 0)
    return bottom, left, right


def offset_pairs(
    h: int, w: int, offsets: list[Offset], cover: Cover = "crop", device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """``(src, dst)`` int64 flat indices of the pairs ``(p, p + offset)`` on an ``h×w`` grid.

    See the module docstring for the offset-major layout and the two coverages.
    """
    if cover not in COVERS:
        raise ValueError(f"cover must be one of {COVERS}, got {cover!r}")
    grid = torch.arange(h * w, device=device).view(h, w)
    srcs: list[Tensor] = []
    dsts: list[Tensor] = []
    if cover == "crop":
        bottom, left, right = source_margins(offsets)
        rows, cols = h - bottom, w - left - right
        if rows <= 0 or cols <= 0:
            raise ValueError(
                f"a {h}x{w} grid is too small for these offsets (needs more than {bottom} rows and "
                f"{left + right} columns); use effective_radius() to shrink the radius"
            )
        src = grid[:rows, left : left + cols].reshape(-1)
        for dy, dx in offsets:
            srcs.append(src)
            dsts.append(grid[dy : dy + rows, left + dx : left + dx + cols].reshape(-1))
    else:
        for dy, dx in offsets:
            y0, y1 = max(0, -dy), min(h, h - dy)
            x0, x1 = max(0, -dx), min(w, w - dx)
            if y1 <= y0 or x1 <= x0:
                continue
            srcs.append(grid[y0:y1, x0:x1].reshape(-1))
            dsts.append(grid[y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1))
    if not srcs:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    return torch.cat(srcs), torch.cat(dsts)


def pair_indices(
    h: int,
    w: int,
    radius: int = 5,
    cover: Cover = "crop",
    shrink: bool = True,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(src, dst)`` for the radius-``radius`` half-neighbourhood of an ``h×w`` grid.

    ``shrink`` applies :func:`effective_radius` first (TransCAM/SEAM do; PSA does not and fails
    on tiny maps). ``cover="crop"``: PSA's training layout; ``"all"``: every pair, for the walk.
    """
    r = effective_radius(h, w, radius) if shrink else radius
    if r < 1:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    return offset_pairs(h, w, radius_offsets(r), cover, device)


def affinity_labels(
    label_grid: Tensor, offsets: list[Offset], cover: Cover = "crop"
) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean ``(bg_pos, fg_pos, neg)`` masks over the pairs of ``label_grid`` (``(..., h, w)``).

    ``bg_pos``: both ends background (0); ``fg_pos``: both ends the same class 1..K; ``neg``:
    both ends certain (not 255) with different labels. Pairs touching 255 are in none of them.
    Masks have shape ``(..., n_pairs)`` in the layout of :func:`offset_pairs` with ``cover``.
    """
    h, w = label_grid.shape[-2:]
    src, dst = offset_pairs(h, w, offsets, cover, device=label_grid.device)
    flat = label_grid.flatten(-2).long()
    a, b = flat[..., src], flat[..., dst]
    valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
    same = a == b
    bg_pos = same & (a == 0)
    fg_pos = same & valid & (a != 0)
    neg = ~same & valid
    return bg_pos, fg_pos, neg


Sample = Literal["corner", "centre"]
SAMPLES = ("corner", "centre")


def downscale_labels(labels: Tensor, stride: int = 8, sample: Sample = "corner") -> Tensor:
    """Nearest-neighbour label map at ``1/stride`` (``ceil(side/stride)`` cells per side).

    The two authors' codes pick different pixels of each ``stride×stride`` block, so a class
    boundary lands up to half a block apart:

    * ``"corner"``: the top-left pixel, index ``stride·i`` — OpenCV's ``INTER_NEAREST``
      (``floor(i·stride)``), i.e. TransCAM's ``RescaleNearest(0.125)`` for AffinityNet labels;
    * ``"centre"``: index ``stride·i + stride//2`` (the last cell clamped into the map) — PIL's
      ``NEAREST`` (``floor((i + 0.5)·stride)``), i.e. IRN's ``pil_rescale(label, 0.25, 0)``.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if sample not in SAMPLES:
        raise ValueError(f"sample must be one of {SAMPLES}, got {sample!r}")
    if sample == "corner":
        return labels[..., ::stride, ::stride].contiguous()
    h, w = labels.shape[-2:]
    rows = _centre_indices(h, stride, labels.device)
    cols = _centre_indices(w, stride, labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols).contiguous()


def _centre_indices(size: int, stride: int, device: torch.device) -> Tensor:
    """``min(stride·i + stride//2, size − 1)`` for ``i < ceil(size/stride)``."""
    cells = -(-size // stride)
    idx = torch.arange(cells, device=device) * stride + stride // 2
    return idx.clamp_max(size - 1)


PADDING_CHOICES = (IGNORE_INDEX, 0)


def affinity_training_labels(
    labels: Tensor,
    padding: Tensor | None = None,
    stride: int = 8,
    padding_as: int = IGNORE_INDEX,
    sample: Sample = "corner",
) -> Tensor:
    """The AffinityNet target grid from a cropped confident-label map ``(..., H, W)``.

    ``padding`` is a boolean map (same shape) of the pixels the random crop filled in rather
    than took from the image. ``padding_as=255`` (clean default, PSA's ``no_score_region``)
    ignores them; ``padding_as=0`` is TransCAM's behaviour, where the zero-filled crop reads as
    confident background in both CRF label maps, so padding teaches "background" affinities.
    ``sample`` picks the pixel of each block (:func:`downscale_labels`: TransCAM ``corner``, IRN
    ``centre``).
    """
    if padding_as not in PADDING_CHOICES:
        raise ValueError(f"padding_as must be 255 (ignore) or 0 (background, TransCAM), got {padding_as}")
    out = labels.clone()
    if padding is not None:
        if padding.shape != labels.shape:
            raise ValueError(f"padding mask shape {tuple(padding.shape)} != labels {tuple(labels.shape)}")
        out[padding.bool()] = padding_as
    return downscale_labels(out, stride, sample)


def merge_la_ha(la: Tensor, ha: Tensor) -> Tensor:
    """TransCAM's confident map from its two CRF label maps (bg scores 0.60 → ``la``, 0.25 → ``ha``).

    Foreground from ``la``; background only where both say background; 255 elsewhere.
    """
    if la.shape != ha.shape:
        raise ValueError(f"la shape {tuple(la.shape)} != ha shape {tuple(ha.shape)}")
    out = la.clone()
    out[la == 0] = IGNORE_INDEX
    out[(la == 0) & (ha == 0)] = 0
    return out
