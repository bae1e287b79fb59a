"""Stage ``train-uns``: SPU's uncertainty-guided noise suppression network on the confident labels.

The label-conditioned two-head network (``models/seg/uns.py``) learns per-pixel classes from
``make-labels``' confident labels (255 = uncertain, ignored) with the recipe's ``uns.loss`` (SPU:
the uncertainty-rectified loss, which needs both heads). Augmentation as released: random rescale,
flip, crop. The loop (exact resume, DDP, AMP) is ``stages.training``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsss.config.schema import UNSConfig
from wsss.data.pseudo import PseudoLabelDataset
from wsss.data.transforms import train_transform
from wsss.engine import TrainProgress, export_weights, load_weights, seed_everything
from wsss.errors import ConfigError
from wsss.models.seg.uns import UNSNet, build_uns
from wsss.registry import LOSSES
from wsss.stages.context import StageContext
from wsss.stages.training import train_loop

NAME = "train-uns"


def uns_config(ctx: StageContext) -> UNSConfig:
    """The recipe's ``uns`` section, or a ConfigError saying what to add."""
    if ctx.recipe.uns is None:
        raise ConfigError(
            "stages train-uns and make-uns-cams need the recipe's 'uns' section (SPU's noise suppression); "
            "add one (see synth/spu-nano) or drop those stages"
        )
    return ctx.recipe.uns


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.uns_weights.is_file()


def build_uns_model(ctx: StageContext, num_classes: int, *, pretrained: bool = True) -> UNSNet:
    u = uns_config(ctx)
    return build_uns(u.backbone, num_classes, pretrained=u.pretrained if pretrained else None, **u.model_args)


def load_trained_uns(ctx: StageContext, num_classes: int) -> UNSNet:
    model = build_uns_model(ctx, num_classes, pretrained=False)
    load_weights(ctx.paths.uns_weights, model)
    return model


def build_uns_loss(u: UNSConfig, compat: str) -> nn.Module:
    """``uns.loss`` built with ``uns.loss_args`` (and the stage's compat: SPU's released scalar
    confidence under ``authors_code``); it must score the main and the auxiliary head."""
    loss = LOSSES.build_with_compat(u.loss, "uns.loss", u.loss_args, compat)
    if not getattr(loss, "needs_aux_head", False):
        raise ConfigError(
            f"uns.loss '{u.loss}' scores one head; the UNS network trains both of its heads together "
            "(use uncertainty_rectified)"
        )
    return loss


def run(ctx: StageContext) -> dict[str, Any]:
    r, u = ctx.recipe, uns_config(ctx)
    seed_everything(r.seed)
    loss_fn = build_uns_loss(u, u.compat or r.compat)
    transform = train_transform(
        resize_long=None, scale=u.scale, crop_size=u.crop_size, flip=u.flip, color_jitter=u.color_jitter
    )
    ds = PseudoLabelDataset(ctx.dataset(r.cams.splits[0]), ctx.paths.label_dir, transform)
    model = build_uns_model(ctx, ds.num_classes).to(ctx.device)

    def step(net: nn.Module, batch: dict[str, Any], _: TrainProgress) -> dict[str, torch.Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["mask"].to(ctx.device, non_blocking=True).long()
        out = net(x, batch["labels"].to(ctx.device, non_blocking=True))
        return loss_fn(out.logits, y, out.aux)

    metrics = train_loop(
        ctx, name=NAME, model=model, dataset=ds, cfg=u, step_fn=step, state_path=ctx.paths.uns_state
    )
    if ctx.dist.is_main:
        export_weights(
            ctx.paths.uns_weights,
            model,
            {"stage": NAME, "backbone": u.backbone, "classes": list(ds.class_names), "epochs": u.epochs},
        )
    return metrics
