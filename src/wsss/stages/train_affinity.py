"""Stage ``train-affinity``: an affinity network (PSA AffinityNet or IRN) on the confident labels.

Pairs within a radius are positive (same label: background or one class) or negative
(different labels); uncertain pixels (255) and, by default, pixels the random crop padded in
are left out. PSA/TransCAM: loss bg/4 + fg/4 + neg/2 on a stride-8 grid, radius 5; IRN: its
class-boundary loss on a stride-4 grid, radius 10 (``stages.affinity_kinds``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from wsss.config.schema import AffinityConfig
from wsss.data.pseudo import PseudoLabelDataset
from wsss.data.transforms import train_transform
from wsss.engine import TrainProgress, export_weights, load_weights, seed_everything
from wsss.registry import AFFINITY_MODELS
from wsss.stages.affinity_kinds import training_loss
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
        a.model,
        where="affinity.model",
        backbone=a.backbone,
        pretrained=a.pretrained if pretrained else None,
        **a.model_args,
    )


def load_trained_affinity(ctx: StageContext) -> nn.Module:
    model = build_affinity_model(ctx, pretrained=False)
    load_weights(ctx.paths.affinity_weights, model)
    return model


def affinity_transform(a: AffinityConfig) -> v2.Compose:
    """The joint image/label augmentation: PSA/TransCAM crop + flip + jitter (no rescale unless
    ``resize_long`` or ``scale`` is set; IRN: ``scale`` 0.5–1.5)."""
    return train_transform(
        resize_long=a.resize_long,
        scale=a.scale,
        crop_size=a.crop_size,
        flip=a.flip,
        color_jitter=a.color_jitter,
    )


def run(ctx: StageContext) -> dict[str, Any]:
    r, a = ctx.recipe, ctx.recipe.affinity
    seed_everything(r.seed)
    split = training_split(ctx)
    transform = affinity_transform(a)
    ds = PseudoLabelDataset(ctx.dataset(split), ctx.affinity_label_dir, transform)
    model = build_affinity_model(ctx).to(ctx.device)

    def step(net: nn.Module, batch: dict[str, Any], _: TrainProgress) -> dict[str, torch.Tensor]:
        return training_loss(net, model, batch, a, ctx.device)

    metrics = train_loop(
        ctx, name=NAME, model=model, dataset=ds, cfg=a, step_fn=step, state_path=ctx.paths.affinity_state
    )
    if ctx.dist.is_main:
        export_weights(
            ctx.paths.affinity_weights,
            model,
            {
                "stage": NAME,
                "model": a.model,
                "backbone": a.backbone,
                "radius": a.radius,
            },
        )
    return metrics
