"""What differs between the affinity networks the pipeline can train and walk with.

* ``psa`` (PSA/TransCAM AffinityNet): stride-8 embedding; pairs within the radius (5) are
  labelled from the confident labels, downscaled by their block's top-left pixel (TransCAM's
  OpenCV ``RescaleNearest``); affinity = exp(−mean |f_i − f_j|); the walk input is the
  full-resolution CAM stack with its background plane, pooled onto the grid.
* ``irn`` (IRN's class-boundary branch): stride-4 boundary map; labels downscaled by the
  block's centre pixel (IRN's PIL nearest); pairs within radius 10 in training, 5 at inference;
  affinity = 1 − max boundary on the path. The walk runs on IRN's strided CAM (the CAM file's
  own maps when it is stored at the walk's stride, else the full-resolution maps pooled);
  CAM × (1 − edge) is walked, upsampled, cropped, divided by its max, and only then does the
  constant background go in front (``make_sem_seg_labels``).

Both give the stages the same two operations: a training loss for a batch, and the walked
label map of one image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.cams.files import CamRecord
from wsss.config.schema import AffinityConfig
from wsss.losses.affinity import affinity_loss
from wsss.losses.irn import irn_loss
from wsss.models.affinity.irn import IRNet, irn_refine
from wsss.models.affinity.psa import pair_affinities
from wsss.refine.pairs import (
    affinity_labels,
    affinity_training_labels,
    effective_radius,
    offset_pairs,
    radius_offsets,
)
from wsss.refine.random_walk import (
    WalkSettings,
    pool_to_grid,
    pooled_scores,
    random_walk,
    scores_to_labels,
    walk_pairs,
)

IRN_TRAIN_RADIUS = 10


def _grid_labels(
    batch: dict[str, Any],
    stride: int,
    padding_as: int,
    device: torch.device,
    sample: Literal["corner", "centre"],
) -> Tensor:
    return affinity_training_labels(
        batch["mask"].to(device), batch["padding"].to(device), stride, padding_as, sample
    )


def training_loss(
    net: nn.Module, model: nn.Module, batch: dict[str, Any], cfg: AffinityConfig, device: torch.device
) -> dict[str, Tensor]:
    """The affinity loss of one batch (``net`` may be the DDP wrapper of ``model``)."""
    x = batch["image"].to(device, non_blocking=True)
    padding_as = 0 if cfg.padding_as_background else 255
    if isinstance(model, IRNet):
        grid = _grid_labels(batch, model.output_stride, padding_as, device, "centre")
        radius = effective_radius(grid.shape[-2], grid.shape[-1], IRN_TRAIN_RADIUS)
        pairs = model.forward_pairs(x, radius, "crop")
        bg, fg, neg = affinity_labels(grid, radius_offsets(radius), cover="crop")
        return irn_loss(pairs.affinity, bg, fg, neg, pairs.displacement, pairs.src, pairs.dst)
    grid = _grid_labels(batch, model.output_stride, padding_as, device, "corner")
    emb = net(x)
    if emb.shape[-2:] != grid.shape[-2:]:
        raise ValueError(
            f"embedding grid {tuple(emb.shape[-2:])} != label grid {tuple(grid.shape[-2:])}; "
            f"use a crop size divisible by {model.output_stride}"
        )
    offsets = radius_offsets(effective_radius(grid.shape[-2], grid.shape[-1], cfg.radius))
    bg, fg, neg = affinity_labels(grid, offsets, cover="crop")
    src, dst = offset_pairs(grid.shape[-2], grid.shape[-1], offsets, "crop", device=emb.device)
    return affinity_loss(pair_affinities(emb, src, dst), bg, fg, neg)


def cams_for_walk(model: nn.Module, rec: CamRecord, device: torch.device | str) -> tuple[Tensor, int]:
    """``(maps, stride)`` the walk of ``model`` starts from for a CAM file.

    IRN walks its strided CAM: a file stored at the edge map's stride gives its own maps
    (float32), untouched. Everything else gets the full-resolution maps (stride 1): PSA builds
    its background there, and IRN pools them when the file has another stride.
    """
    if isinstance(model, IRNet) and rec.stride == model.output_stride:
        return torch.from_numpy(rec.cams.astype(np.float32)).to(device), rec.stride
    return rec.full_resolution(device=device), 1


def _irn_grid(cams: Tensor, cam_stride: int, stride: int) -> Tensor:
    if cam_stride == stride:
        return cams
    if cam_stride != 1:
        raise ValueError(f"IRN walks CAMs at stride {stride} or full resolution, not stride {cam_stride}")
    return pool_to_grid(cams, stride)


@torch.no_grad()
def walk_image(
    model: nn.Module,
    image: Tensor,
    cams: Tensor,
    keys: Tensor,
    settings: WalkSettings,
    cam_stride: int = 1,
) -> np.ndarray:
    """Walked label map (H×W uint8, label-space ids) of one image.

    ``image``: normalised (3, H, W) on the model's device; ``cams``: (K, H, W) foreground maps,
    or (K, ceil(H/s), ceil(W/s)) at ``cam_stride`` s (IRN: its walk stride only, see
    :func:`cams_for_walk`); ``keys``: their label ids.
    """
    h, w = image.shape[-2:]
    if len(keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    if isinstance(model, IRNet):
        grid = _irn_grid(cams, cam_stride, model.output_stride)
        labels = irn_refine(grid, image, model, replace(settings, bg_after_walk=True), keys.to(image.device))
        return labels.cpu().numpy().astype(np.uint8)
    if cam_stride != 1:
        raise ValueError("the AffinityNet walk builds its background at full resolution: pass (K, H, W) CAMs")
    stride = model.output_stride
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
    emb = model(F.pad(image, (0, pw - w, 0, ph - h))[None])
    gh, gw = emb.shape[-2:]
    src, dst = walk_pairs(gh, gw, settings, device=emb.device)
    aff = pair_affinities(emb, src, dst)[0].float()
    scores = pooled_scores(cams.to(emb.device), stride, settings)
    if scores.shape[-2:] != (gh, gw):
        raise ValueError(
            f"CAM grid {tuple(scores.shape[-2:])} != embedding grid {(gh, gw)} at stride {stride}"
        )
    walked = random_walk(scores, aff, src, dst, settings.beta, settings.logt, settings.method)
    return scores_to_labels(walked.cpu(), (h, w), stride, keys.cpu()).numpy().astype(np.uint8)
