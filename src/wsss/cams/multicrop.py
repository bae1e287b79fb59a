"""PMM's multi-crop CAM inference: every scale's image tiled by windows, overlaps averaged.

Where multi-scale inference shows the network the whole image at each scale, this shows it
window×window crops of the scaled image — the views a heat-crop classifier was trained on — so
large scales do not need a large input. Each window (and its flip) is run, its foreground maps
upsampled back to the window's pixels, multiplied by the image's label vector and added to a
canvas whose per-pixel counter then divides it. Any classifier works: only the CAM function
(:data:`wsss.cams.inference.CamFn`) is called.

Two accumulation rules, by ``authors_code`` (the recipe's ``compat``):

* clean (default): the image is resized to each scale (``resize`` kernel), tiled with the clean
  grid of :mod:`wsss.data.heat_crops`, and each window is resized only when it is smaller than
  window×window (an image side shorter than the window). Every scale has its own canvas and
  counter; the per-scale means are resized to the output grid and averaged over scales.
* authors_code (PMM's ``infer_multi_crop.py``): PMM's grid is mapped back to the *original* image,
  each box is cut from the original and resized to window×window (PMM: PIL bilinear; here the
  ``resize`` kernel), and one canvas and one counter at the original resolution collect every
  window of every scale and flip, so scales that overlap more at a pixel weigh more there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsss.cams.inference import CamFn, _check_kernel, _to_target, normalise_image, resize_image
from wsss.data.heat_crops import Box, grid_size, scaled_windows, window_grid


def _window_batch(
    source: torch.Tensor, boxes: Sequence[Box], window: int, kernel: str, device: torch.device
) -> torch.Tensor:
    """The boxes of a uint8 image as one normalised N×3×window×window batch."""
    crops = []
    for y0, x0, y1, x1 in boxes:
        crop = source[:, y0:y1, x0:x1]
        if crop.shape[-2:] != (window, window):
            crop = resize_image(crop.contiguous(), (window, window), kernel, device)
        crops.append(normalise_image(crop.to(device)))
    return torch.stack(crops)


def _forward(cam_fn: CamFn, batch: torch.Tensor, max_batch: int) -> torch.Tensor:
    """``cam_fn`` over ``batch`` in fixed chunks (the same chunks every run: CPU kernels block by size)."""
    return torch.cat([cam_fn(batch[i : i + max_batch]) for i in range(0, len(batch), max_batch)])


@dataclass(frozen=True)
class _Passes:
    """How each window goes through the network (the same for every scale)."""

    cam_fn: CamFn
    window: int
    flip: bool
    max_batch: int
    output_stride: int
    kernel: str


def _accumulate(
    passes: _Passes,
    source: torch.Tensor,
    boxes: Sequence[Box],
    label: torch.Tensor,
    present: torch.Tensor,
    total: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """Add each window's (and its flip's) label-weighted fg maps and a count of 1 per pass, in place."""
    batch = _window_batch(source, boxes, passes.window, passes.kernel, total.device)
    if passes.flip:
        batch = torch.cat([batch, batch.flip(-1)])
    fg = _forward(passes.cam_fn, batch, passes.max_batch)[:, 1:][:, present].float()
    weights = label[present].view(-1, 1, 1)
    n, size = len(boxes), (passes.window, passes.window)
    for j, (y0, x0, y1, x1) in enumerate(boxes):
        runs = [(fg[j], False)] + ([(fg[n + j], True)] if passes.flip else [])
        for raw, flipped in runs:
            maps = _to_target(raw[None], size, passes.output_stride, (y1 - y0, x1 - x0))[0]
            total[:, y0:y1, x0:x1] += (maps.flip(-1) if flipped else maps) * weights
            count[y0:y1, x0:x1] += 1


def _resize_map(maps: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[None], size=target, mode="bilinear", align_corners=False)[0]


def _image_cams(
    passes: _Passes,
    image: torch.Tensor,
    label: torch.Tensor,
    scales: Sequence[float],
    *,
    stride: int,
    target: tuple[int, int],
    authors_code: bool,
    device: torch.device,
) -> torch.Tensor:
    """(K, *target) mean CAMs of one image; classes with a zero label are zero and never computed."""
    size = (int(image.shape[-2]), int(image.shape[-1]))
    label = label.to(device=device, dtype=torch.float32).flatten()
    present = torch.nonzero(label).flatten()
    out = torch.zeros(len(label), *target, device=device)
    if len(present) == 0:
        return out

    def canvas(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(present), h, w, device=device), torch.zeros(h, w, device=device)

    if authors_code:
        total, count = canvas(*size)
        for scale in scales:
            boxes = scaled_windows(size, scale, passes.window, stride, authors_code=True)
            _accumulate(passes, image, boxes, label, present, total, count)
        out[present] = _resize_map(total / count.clamp_min(1), target)  # PMM: uncovered pixels stay 0
        return out
    for scale in scales:
        scaled_hw = grid_size(size, scale)
        total, count = canvas(*scaled_hw)
        scaled = resize_image(image, scaled_hw, passes.kernel, device)
        _accumulate(
            passes, scaled, window_grid(scaled_hw, passes.window, stride), label, present, total, count
        )
        out[present] += _resize_map(total / count, target)
    return out / len(scales)


@torch.no_grad()
def multicrop_cams(
    cam_fn: CamFn,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    scales: Sequence[float],
    *,
    window: int,
    window_stride: int,
    flip: bool = True,
    batched: bool = True,
    max_batch: int = 16,
    output_stride: int = 16,
    target_stride: int = 1,
    device: torch.device | str = "cpu",
    resize: str = "pil",
    authors_code: bool = False,
) -> list[torch.Tensor]:
    """Un-normalised foreground CAMs per image, (K, ceil(H/s), ceil(W/s)), as ``multiscale_cams`` returns.

    ``images``: uint8 3×H×W; ``labels``: K-dim multi-hot; ``scales``: relative factors. The maps are
    means over windows (and scales), not sums: the per-class normalisation of ``make-cams`` makes
    the two equal. ``batched``: each scale's windows (+ flips) go through in chunks of
    ``max_batch``; otherwise one at a time. Images are processed one by one, so an image's maps do
    not depend on its neighbours in a ``make-cams`` group.
    """
    _check_kernel(resize)
    device = torch.device(device)
    passes = _Passes(cam_fn, window, flip, max_batch if batched else 1, output_stride, resize)
    out = []
    for image, label in zip(images, labels):
        h, w = image.shape[-2:]
        target = (math.ceil(h / target_stride), math.ceil(w / target_stride))
        source = image.to(device) if resize == "torch" else image
        out.append(
            _image_cams(
                passes,
                source,
                label,
                scales,
                stride=window_stride,
                target=target,
                authors_code=authors_code,
                device=device,
            )
        )
    return out


def multicrop_forwards(
    size: tuple[int, int],
    scales: Sequence[float],
    window: int,
    stride: int,
    *,
    flip: bool = True,
    authors_code: bool = False,
) -> int:
    """Network passes (window-sized images) one image of ``size`` costs: the budget to expect."""
    windows = sum(len(scaled_windows(size, s, window, stride, authors_code=authors_code)) for s in scales)
    return windows * (2 if flip else 1)
