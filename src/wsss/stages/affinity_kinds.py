"""What differs between the affinity networks the pipeline can train and walk with.

* ``psa`` (PSA/TransCAM AffinityNet): stride-8 embedding; pairs within the radius (5) are
  labelled from the confident labels; affinity = exp(−mean |f_i − f_j|); the walk scores carry
  the background plane from the start.
* ``irn`` (IRN's class-boundary branch): stride-4 boundary map; pairs within radius 10 in
  training, 5 at inference; affinity = 1 − max boundary on the path; CAM × (1 − edge), the walk
  runs on the foreground and the constant background is put in front afterwards (IRN's order).

Both give the stages the same two operations: a training loss for a batch, and the walked
label map of one image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.config.schema import AffinityConfig
from wsss.losses.affinity import affinity_loss
from wsss.losses.irn import irn_loss
from wsss.models.affinity.irn import IRNet
from wsss.models.affinity.psa import pair_affinities
from wsss.refine.pairs import (
    affinity_labels,
    affinity_training_labels,
    effective_radius,
    offset_pairs,
    radius_offsets,
)
from wsss.refine.path_index import refine_with_edge
from wsss.refine.random_walk import WalkSettings, pool_to_grid, refine_cams, scores_to_labels, walk_pairs

IRN_TRAIN_RADIUS = 10


def _grid_labels(batch: dict[str, Any], stride: int, padding_as: int, device: torch.device) -> Tensor:
    return affinity_training_labels(
        batch["mask"].to(device), batch["padding"].to(device), stride=stride, padding_as=padding_as
    )


def training_loss(
    net: nn.Module, model: nn.Module, batch: dict[str, Any], cfg: AffinityConfig, device: torch.device
) -> dict[str, Tensor]:
    """The affinity loss of one batch (``net`` may be the DDP wrapper of ``model``)."""
    x = batch["image"].to(device, non_blocking=True)
    padding_as = 0 if cfg.padding_as_background else 255
    if isinstance(model, IRNet):
        grid = _grid_labels(batch, 4, padding_as, device)
        radius = effective_radius(grid.shape[-2], grid.shape[-1], IRN_TRAIN_RADIUS)
        pairs = model.forward_pairs(x, radius, "crop")
        bg, fg, neg = affinity_labels(grid, radius_offsets(radius), cover="crop")
        return irn_loss(pairs.affinity, bg, fg, neg, pairs.displacement, pairs.src, pairs.dst)
    grid = _grid_labels(batch, model.output_stride, padding_as, device)
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


@torch.no_grad()
def walk_image(
    model: nn.Module, image: Tensor, cams: Tensor, keys: Tensor, settings: WalkSettings
) -> np.ndarray:
    """Walked label map (H×W uint8, label-space ids) of one image.

    ``image``: normalised (3, H, W) on the model's device; ``cams``: (K, H, W) foreground maps;
    ``keys``: their label ids.
    """
    h, w = image.shape[-2:]
    if len(keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    if isinstance(model, IRNet):
        stride = 4
        edge = model.edge_map(image[None])[0, 0]
        grid = pool_to_grid(cams, stride)[:, : edge.shape[0], : edge.shape[1]]
        scores = refine_with_edge(grid, edge, replace(settings, bg_after_walk=True))
    else:
        stride = model.output_stride
        ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
        emb = model(F.pad(image, (0, pw - w, 0, ph - h))[None])
        gh, gw = emb.shape[-2:]
        src, dst = walk_pairs(gh, gw, settings, device=emb.device)
        aff = pair_affinities(emb, src, dst)[0].float()
        scores = refine_cams(pool_to_grid(cams, stride)[:, :gh, :gw], aff, src, dst, settings)
    return scores_to_labels(scores.cpu(), (h, w), stride, keys.cpu()).numpy().astype(np.uint8)
