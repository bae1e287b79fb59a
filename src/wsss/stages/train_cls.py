"""Stage ``train-cls``: train the CAM classifier on image-level tags.

TransCAM/BNR protocol by default: AdamW with a constant lr over all parameters, BN in train
mode, random resize-long + flip + colour jitter + crop. Each epoch ends with an atomic
training-state checkpoint (model, optimizer, scaler, epoch, RNG), so an interrupted run resumes
at the last finished epoch and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from wsss.data.transforms import train_transform
from wsss.engine import (
    ScalarWriter,
    autocast,
    epoch_generator,
    export_weights,
    load_training_state,
    load_weights,
    make_grad_scaler,
    save_training_state,
    seed_everything,
    unwrap,
    worker_init_fn,
    wrap_ddp,
)
from wsss.registry import CAM_MODELS, METHODS
from wsss.stages.context import StageContext

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


def run(ctx: StageContext) -> dict[str, Any]:
    r, c = ctx.recipe, ctx.recipe.classifier
    device, dist = ctx.device, ctx.dist
    seed_everything(r.seed)
    transform = train_transform(
        resize_long=c.resize_long, crop_size=c.crop_size, flip=c.flip, color_jitter=c.color_jitter
    )
    ds = ctx.dataset(r.data.train_split, transform=transform, with_masks=False)
    model = build_classifier(ctx, ds.num_classes).to(device)
    method = METHODS.build(c.method, where="classifier.method", **c.method_args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    scaler = make_grad_scaler(device, c.amp)

    start_epoch, step = 0, 0
    state_path = ctx.paths.classifier_state
    if state_path.is_file():
        meta = load_training_state(
            state_path, model=model, optimizer=optimizer, scaler=scaler, map_location=device
        )
        start_epoch, step = int(meta["epoch"]), int(meta["step"])
        ctx.logger.info("resuming %s from %s at epoch %d", NAME, state_path, start_epoch)
    net = wrap_ddp(model, dist)
    writer = ScalarWriter(ctx.run_dir)
    per_rank = c.batch_size // max(1, dist.world_size)
    drop_last = len(ds) >= c.batch_size
    t0, seen = time.time(), 0
    last: dict[str, float] = {}
    for epoch in range(start_epoch, c.epochs):
        net.train()
        gen = epoch_generator(r.seed, epoch)
        if dist.world_size > 1:
            sampler = DistributedSampler(
                ds, dist.world_size, dist.rank, shuffle=True, seed=r.seed, drop_last=drop_last
            )
            sampler.set_epoch(epoch)
            loader = DataLoader(
                ds,
                batch_size=per_rank,
                sampler=sampler,
                drop_last=drop_last,
                num_workers=c.num_workers,
                worker_init_fn=worker_init_fn,
                generator=gen,
            )
        else:
            loader = DataLoader(
                ds,
                batch_size=c.batch_size,
                shuffle=True,
                drop_last=drop_last,
                num_workers=c.num_workers,
                worker_init_fn=worker_init_fn,
                generator=gen,
            )
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"{NAME} epoch {epoch + 1}/{c.epochs}", disable=not dist.is_main, leave=False)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["labels"].to(device, non_blocking=True)
            with autocast(device, c.amp):
                out = net(x, with_attention=method.needs_attention)
                losses = method(out, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += x.shape[0] * dist.world_size
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if step % c.log_every == 0:
                writer.add_scalars({f"{NAME}/{k}": float(v.detach()) for k, v in losses.items()}, step)
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}")
        n = max(1, len(loader))
        last = {k: v / n for k, v in sums.items()}
        ctx.logger.info(
            "%s epoch %d/%d: %s",
            NAME,
            epoch + 1,
            c.epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in last.items()),
        )
        if dist.is_main:
            save_training_state(
                state_path, model=model, optimizer=optimizer, scaler=scaler, epoch=epoch + 1, step=step
            )
    if dist.is_main:
        export_weights(
            ctx.paths.classifier_weights,
            unwrap(net),
            {
                "stage": NAME,
                "model": c.model,
                "backbone": c.backbone,
                "classes": list(ds.class_names),
                "epochs": c.epochs,
            },
        )
    writer.close()
    elapsed = time.time() - t0
    return {
        "epochs": c.epochs,
        "steps": step,
        "final_losses": last,
        "seconds": round(elapsed, 1),
        "images_per_s": round(seen / elapsed, 1) if elapsed > 0 else None,
    }
