"""Stage ``train-cls``: train the CAM classifier on image-level tags.

TransCAM/BNR protocol by default: AdamW with a constant lr over all parameters, BN in train
mode, random resize-long + flip + colour jitter + crop; the IRN-style plain CAM uses poly SGD
with 10× lr on its classifier. The loop (exact resume, DDP, AMP) is ``stages.training``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from wsss.config.schema import ClassifierConfig
from wsss.data.heat_crops import HeatCropDataset
from wsss.data.transforms import train_transform
from wsss.engine import export_weights, load_weights, seed_everything
from wsss.errors import ConfigError
from wsss.registry import CAM_MODELS, METHODS
from wsss.stages.context import StageContext
from wsss.stages.training import train_loop

NAME = "train-cls"


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.classifier_weights.is_file()


def build_classifier(ctx: StageContext, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    c = ctx.recipe.classifier
    return CAM_MODELS.build(
        c.model,
        where="classifier.model",
        backbone=c.backbone,
        num_classes=num_classes,
        pretrained=c.pretrained if pretrained else None,
        **c.model_args,
    )


def load_trained_classifier(ctx: StageContext, num_classes: int) -> nn.Module:
    """The classifier with the weights this run's ``train-cls`` exported."""
    model = build_classifier(ctx, num_classes, pretrained=False)
    load_weights(ctx.paths.classifier_weights, model)
    return model


def heat_mask_folder(classifier: ClassifierConfig) -> Path:
    """``classifier.heat_masks`` as an existing folder, or a ConfigError saying what it must be
    (the pipeline asks before any stage runs)."""
    folder = classifier.heat_masks
    what = "the labels folder of a phase-A run whose make-labels used labels.mode: rough"
    if folder is None:
        raise ConfigError(
            f"classifier.crops is 'heat' but classifier.heat_masks is not set; set it to {what}"
        )
    if not Path(folder).is_dir():
        raise ConfigError(f"classifier.heat_masks {folder} is not a folder; it must be {what}")
    return Path(folder)


def training_set(ctx: StageContext) -> Dataset:
    """The train split with the classifier's augmentation: random crops, or PMM's heat crops."""
    r, c = ctx.recipe, ctx.recipe.classifier
    if c.crops == "heat":
        return HeatCropDataset(
            ctx.dataset(r.data.train_split, with_masks=False),
            heat_mask_folder(c),
            crop_size=c.crop_size,
            scales=c.heat_scales,
            stride=c.heat_stride,
            keep=c.heat_keep,
            flip=c.flip,
            color_jitter=c.color_jitter,
            authors_code=(c.compat or r.compat) == "authors_code",
        )
    transform = train_transform(
        resize_long=c.resize_long, crop_size=c.crop_size, flip=c.flip, color_jitter=c.color_jitter
    )
    return ctx.dataset(r.data.train_split, transform=transform, with_masks=False)


def run(ctx: StageContext) -> dict[str, Any]:
    r, c = ctx.recipe, ctx.recipe.classifier
    seed_everything(r.seed)
    ds = training_set(ctx)
    model = build_classifier(ctx, ds.num_classes).to(ctx.device)
    method = METHODS.build(c.method, where="classifier.method", **c.method_args)

    def step(net: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["labels"].to(ctx.device, non_blocking=True)
        return method.step(net, x, y)

    metrics = train_loop(
        ctx,
        name=NAME,
        model=model,
        dataset=ds,
        cfg=c,
        step_fn=step,
        state_path=ctx.paths.classifier_state,
        ddp_static_graph=method.forwards_per_step > 1,
    )
    if ctx.dist.is_main:
        export_weights(
            ctx.paths.classifier_weights,
            model,
            {
                "stage": NAME,
                "model": c.model,
                "backbone": c.backbone,
                "classes": list(ds.class_names),
                "epochs": c.epochs,
            },
        )
    return metrics
