"""Stage ``train-affinity``: PSA's AffinityNet on the confident labels of ``make-labels``.

Pairs within ``radius`` on the stride-8 grid are positive (same label: background or one
class) or negative (different labels); uncertain pixels (255) and, by default, pixels the
random crop padded in are left out. Loss bg/4 + fg/4 + neg/2 (PSA/TransCAM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsss.data.pseudo import PseudoLabelDataset
from wsss.data.transforms import train_transform
from wsss.engine import export_weights, load_weights, seed_everything
from wsss.losses.affinity import affinity_loss
from wsss.models.affinity.psa import pair_affinities
from wsss.refine.pairs import affinity_labels, affinity_training_labels, effective_radius, offset_pairs, radius_offsets
from wsss.registry import AFFINITY_MODELS
from wsss.stages.context import StageContext
from wsss.stages.training import train_loop

NAME = "train-affinity"


def training_split(ctx: StageContext) -> str:
    return ctx.recipe.affinity.split or ctx.recipe.cams.splits[0]


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.affinity_weights.is_file()


def build_affinity_model(ctx: StageContext, *, pretrained: bool = True) -> nn.Module:
    a = ctx.recipe.affinity
    return AFFINITY_MODELS.build(
        a.model, where="affinity.model", backbone=a.backbone,
        pretrained=a.pretrained if pretrained else None, **a.model_args,
    )


def load_trained_affinity(ctx: StageContext) -> nn.Module:
    model = build_affinity_model(ctx, pretrained=False)
    load_weights(ctx.paths.affinity_weights, model)
    return model


def run(ctx: StageContext) -> dict[str, Any]:
    r, a = ctx.recipe, ctx.recipe.affinity
    seed_everything(r.seed)
    split = training_split(ctx)
    transform = train_transform(resize_long=a.resize_long, crop_size=a.crop_size, flip=a.flip,
                                color_jitter=a.color_jitter)
    ds = PseudoLabelDataset(ctx.dataset(split), ctx.paths.label_dir(split), transform)
    model = build_affinity_model(ctx).to(ctx.device)
    stride = model.output_stride
    padding_as = 0 if a.padding_as_background else 255

    def step(net: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        grid = affinity_training_labels(batch["mask"].to(ctx.device), batch["padding"].to(ctx.device),
                                        stride=stride, padding_as=padding_as)
        emb = net(x)
        if emb.shape[-2:] != grid.shape[-2:]:
            raise ValueError(f"embedding grid {tuple(emb.shape[-2:])} != label grid {tuple(grid.shape[-2:])}; "
                             f"use a crop size divisible by {stride}")
        # the radius shrinks on grids too small for it (tiny crops), as PSA/SEAM do
        offsets = radius_offsets(effective_radius(grid.shape[-2], grid.shape[-1], a.radius))
        bg, fg, neg = affinity_labels(grid, offsets, cover="crop")
        src, dst = offset_pairs(grid.shape[-2], grid.shape[-1], offsets, "crop", device=emb.device)
        aff = pair_affinities(emb, src, dst)
        return affinity_loss(aff, bg, fg, neg)

    metrics = train_loop(ctx, name=NAME, model=model, dataset=ds, cfg=a, step_fn=step,
                         state_path=ctx.paths.affinity_state)
    if ctx.dist.is_main:
        export_weights(ctx.paths.affinity_weights, model, {
            "stage": NAME, "model": a.model, "backbone": a.backbone, "radius": a.radius,
        })
    return metrics
