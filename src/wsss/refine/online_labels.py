"""UniA's per-iteration pseudo labels (ToCo lineage): multi-scale CAMs and the labels P1, P2, P3.

All CAMs here are foreground-only ``B×K×H×W``; image labels are ``B×K`` in {0, 1}. Labels are
``B×H×W`` long: 0 background, ``k+1`` for class ``k``, ``ignore_index`` for uncertain pixels.

* P1 (:func:`dual_threshold_labels`): the CAM cut by a high and a low threshold.
* P2 (:func:`refine_with_background`): a constant background score added, softmax, PAR; run once
  with the background at ``high`` and once at ``low``, and combined (:func:`_dual_pass`).
* P3 (:func:`refine_with_affinity`): as P2, but the softmaxed scores are first spread over the
  token grid along the model's affinity (:mod:`wsss.refine.affinity_propagation`).

Everything runs without gradients: these are targets, not predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError, DataError
from wsss.refine.affinity_propagation import normalise_affinity, propagate
from wsss.refine.par import PAR

# (image index, kept channel ids incl. background 0, background value) -> 1×V×h'×w' probabilities
ScoreFn = Callable[[int, Tensor, float], Tensor]


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def _check_inputs(cams: Tensor, image_labels: Tensor, high: float, low: float) -> None:
    if cams.dim() != 4 or image_labels.shape != cams.shape[:2]:
        raise DataError(
            f"need B×K×H×W CAMs and B×K image labels, got {tuple(cams.shape)} and {tuple(image_labels.shape)}"
        )
    if low > high:
        raise ConfigError(f"the low threshold ({low}) must not exceed the high threshold ({high})")


def _check_down_scale(down_scale: int) -> None:
    if int(down_scale) != down_scale or down_scale < 1:
        raise ConfigError(f"down_scale must be an integer >= 1, got {down_scale}")


@torch.no_grad()
def multiscale_cams(cam_fn: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float]) -> Tensor:
    """Flip- and scale-pooled CAMs, min–max normalised per image and class: ``B×K×H×W`` in [0, 1).

    For each scale the images are resized to ``(int(s·H), int(s·W))`` and ``cam_fn`` runs once on the
    images and their horizontal flips together (a batch of 2B); both CAMs are resized to ``H×W``,
    the flip's is un-flipped, and their element-wise max (after ReLU) is summed over scales. Then
    ``cam ← (cam − min) / (max_after_shift + 1e-5)`` per image and class. List 1.0 first in
    ``scales``, as the recipes do; every listed scale is used once.
    """
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"cam scales must be a non-empty list of positive numbers, got {scales}")
    b, _, h, w = images.shape
    total: Tensor | None = None
    for s in scales:
        size = (int(s * h), int(s * w))
        scaled = images if size == (h, w) else _resize(images, size)
        cams = cam_fn(torch.cat([scaled, scaled.flip(-1)], dim=0))
        cams = _resize(cams, (h, w))
        cams = torch.maximum(cams[:b], cams[b:].flip(-1)).relu()
        total = cams if total is None else total + cams
    assert total is not None
    total = total - total.amin(dim=(-2, -1), keepdim=True)
    return total / (total.amax(dim=(-2, -1), keepdim=True) + 1e-5)


@torch.no_grad()
def dual_threshold_labels(
    cams: Tensor, image_labels: Tensor, high: float, low: float, ignore_index: int = 255
) -> Tensor:
    """P1: ``argmax + 1`` of the label-masked CAM; its max ≤ ``high`` → ignore, ≤ ``low`` → 0.

    The CAM is multiplied by the image labels (as in ToCo). The class is the arg-max over present
    classes only, so an absent class is never a label even where every present score is ≤ 0 (there
    the max of the masked CAM is 0 and the thresholds decide).
    """
    _check_inputs(cams, image_labels, high, low)
    present = image_labels.to(device=cams.device, dtype=torch.bool)[..., None, None]
    masked = cams * present.to(cams.dtype)
    peak = masked.amax(dim=1)
    labels = cams.masked_fill(~present, float("-inf")).argmax(dim=1) + 1
    labels[peak <= high] = ignore_index
    labels[peak <= low] = 0
    return labels


def _dual_pass(
    par: PAR,
    images: Tensor,
    image_labels: Tensor,
    scores: ScoreFn,
    high: float,
    low: float,
    down_scale: int,
    ignore_index: int,
) -> Tensor:
    """The high/low background passes of P2 and P3, combined.

    Per image, ``scores`` gives the probabilities over background + present classes at the PAR
    size for the background at ``high`` and at ``low``; both are refined by one PAR call (PAR acts
    on each channel alike), resized to ``H×W``, arg-maxed and mapped back to class ids. Result: the
    high-pass label; where it is background → ignore; where both passes are background → 0.
    """
    b, _, h, w = images.shape
    small = _resize(images, (h // down_scale, w // down_scale))
    out = torch.empty((b, h, w), dtype=torch.long, device=images.device)
    present = image_labels.to(device=images.device).bool()
    for idx in range(b):
        keep = torch.cat([present.new_ones(1), present[idx]]).nonzero()[:, 0]  # background always kept
        probs = torch.cat([scores(idx, keep, high), scores(idx, keep, low)], dim=1)
        refined = _resize(par(small[idx : idx + 1], probs.to(small.dtype)), (h, w))[0]
        n = keep.numel()
        label_h = keep[refined[:n].argmax(dim=0)]
        label_l = keep[refined[n:].argmax(dim=0)]
        label = label_h.clone()
        label[label_h == 0] = ignore_index
        label[(label_h == 0) & (label_l == 0)] = 0
        out[idx] = label
    return out


@torch.no_grad()
def refine_with_background(
    par: PAR,
    images: Tensor,
    cams: Tensor,
    image_labels: Tensor,
    high: float,
    low: float,
    *,
    down_scale: int = 2,
    ignore_index: int = 255,
) -> Tensor:
    """P2 (ToCo's ``refine_cams_with_bkg_v2``): ``B×H×W`` labels from CAMs refined by PAR.

    The CAMs are resized to ``H/down_scale``, a constant background (``high``, then ``low``) is put
    in front, and the softmax over background + present classes is refined by PAR on the resized
    image; see :func:`_dual_pass` for how the two passes combine.
    """
    _check_inputs(cams, image_labels, high, low)
    _check_down_scale(down_scale)
    h, w = images.shape[-2:]
    cams_small = _resize(cams, (h // down_scale, w // down_scale))

    def scores(idx: int, keep: Tensor, bg: float) -> Tensor:
        fg = cams_small[idx : idx + 1]
        stacked = torch.cat([torch.full_like(fg[:, :1], bg), fg], dim=1)
        return stacked[:, keep].softmax(dim=1)

    return _dual_pass(par, images, image_labels, scores, high, low, down_scale, ignore_index)


@torch.no_grad()
def refine_with_affinity(
    par: PAR,
    images: Tensor,
    cams: Tensor,
    affinity: Tensor,
    image_labels: Tensor,
    high: float,
    low: float,
    *,
    grid: tuple[int, int],
    norm: str = "none",
    radius: int | None = None,
    down_scale: int = 2,
    ignore_index: int = 255,
) -> Tensor:
    """P3 (UniA's ``refine_cams_with_bkg_aff``): P2 with an affinity propagation on the token grid.

    The CAMs are resized to ``grid``, the constant background put in front, softmaxed over
    background + present classes, propagated along ``affinity`` (``B×N×N``, ``N = grid[0]·grid[1]``,
    normalised by :func:`normalise_affinity` with ``norm``/``radius``; UniA uses the raw one), resized
    to ``H/down_scale``, then refined and combined as in P2.
    """
    _check_inputs(cams, image_labels, high, low)
    _check_down_scale(down_scale)
    gh, gw = (int(g) for g in grid)
    if affinity.shape != (cams.shape[0], gh * gw, gh * gw):
        raise DataError(
            f"affinity {tuple(affinity.shape)} does not fit {cams.shape[0]} images on a {gh}×{gw} grid"
        )
    h, w = images.shape[-2:]
    aff = normalise_affinity(affinity, norm, radius=radius, grid=(gh, gw))
    cams_grid = _resize(cams, (gh, gw))

    def scores(idx: int, keep: Tensor, bg: float) -> Tensor:
        fg = cams_grid[idx : idx + 1]
        probs = torch.cat([torch.full_like(fg[:, :1], bg), fg], dim=1)[:, keep].softmax(dim=1)
        spread = propagate(probs, aff[idx : idx + 1])
        return _resize(spread, (h // down_scale, w // down_scale))

    return _dual_pass(par, images, image_labels, scores, high, low, down_scale, ignore_index)
