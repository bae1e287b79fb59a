"""The one training loop every training stage uses (classifier, affinity net, segmentation).

Epoch-level exact resume: each epoch ends with an atomic checkpoint of model, optimizer,
scheduler, scaler, epoch, step and RNG state; a rerun continues from the last finished epoch
and ends with the same weights as an uninterrupted run. Shuffling depends only on (seed,
epoch), so the data order after a resume is the one the uninterrupted run would have seen.
Works single-process or under ``torchrun`` (DistributedSampler, DDP), with optional AMP.

A loss term or gradient that is NaN or infinite never reaches the weights: ``cfg.nonfinite``
(:mod:`wsss.stages.nonfinite`) either stops with an error naming the step and its images or skips
that optimizer step. A skipped step still counts as a step and advances the lr schedule, as a step
fp16 AMP's GradScaler skips does, so the schedule and the checkpoints' step counts stay those of
the batches seen; only the weights, optimizer state and scaler are left as they were.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from wsss.config.schema import TrainerConfig
from wsss.engine import (
    ScalarWriter,
    TrainProgress,
    all_reduce_sum,
    autocast,
    barrier,
    epoch_generator,
    load_training_state,
    make_grad_scaler,
    make_sgd,
    param_groups,
    save_training_state,
    warmup_poly_lr_lambda,
    worker_init_fn,
    wrap_ddp,
)
from wsss.stages.context import StageContext
from wsss.stages.nonfinite import (
    SkipBudget,
    Where,
    batch_names,
    nonfinite_error,
    nonfinite_grads,
    nonfinite_terms,
    section_of,
    shorten,
)

StepFn = Callable[[nn.Module, dict[str, Any], TrainProgress], dict[str, torch.Tensor]]
"""(network, batch, progress) → losses dict with a ``loss`` entry to back-propagate."""


def build_optimizer(
    model: nn.Module, cfg: TrainerConfig, total_steps: int, compat: str
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """AdamW or SGD over the model's parameter groups.

    Groups, in order of precedence: the model's own ``optimizer_groups(lr, weight_decay,
    head_lr_mult)`` when it defines one (IRN: edge ×1, displacement ×``head_lr_mult``, decay on
    all, as ``train_irn.py``); DeepLab-style groups from its ``head_names`` when
    ``head_lr_mult`` ≠ 1; else one group. ``compat`` is the recipe's; ``cfg.compat`` overrides it
    for this stage.
    """
    compat = cfg.compat or compat
    own_groups = getattr(model, "optimizer_groups", None)
    head_names = tuple(getattr(model, "head_names", ()))
    if callable(own_groups):
        params: Any = own_groups(cfg.lr, cfg.weight_decay, cfg.head_lr_mult)
    elif cfg.head_lr_mult != 1.0 and head_names:
        params = param_groups(model, head_names, cfg.lr, cfg.weight_decay, head_lr_mult=cfg.head_lr_mult)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    steps = max(1, total_steps)
    if cfg.optimizer == "sgd":
        opt, sched = make_sgd(
            params,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            max_steps=steps,
            momentum=cfg.momentum,
            compat=compat,
        )
    else:  # adam: L2 decay added to the gradient (torch.optim.Adam, SPU's UNS); adamw: decoupled decay
        optimizer_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        opt = optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9)
    if cfg.schedule == "warmup_poly":
        lam = warmup_poly_lr_lambda(steps, cfg.warmup_steps, cfg.warmup_ratio)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lam)
    return opt, (sched if cfg.schedule == "poly" else None)


def _loader(ds: Dataset, cfg: TrainerConfig, ctx: StageContext, epoch: int, drop_last: bool) -> DataLoader:
    dist, seed = ctx.dist, ctx.recipe.seed
    gen = epoch_generator(seed, epoch)
    common = dict(
        num_workers=cfg.num_workers, worker_init_fn=worker_init_fn, generator=gen, drop_last=drop_last
    )
    if dist.world_size > 1:
        sampler = DistributedSampler(
            ds, dist.world_size, dist.rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=max(1, cfg.batch_size // dist.world_size), sampler=sampler, **common)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, **common)


def uses_channels_last(cfg: TrainerConfig, device: torch.device) -> bool:
    """Whether the loop hands the step channels-last images (``channels_last``: ``auto`` = on a CPU)."""
    return cfg.channels_last is True or (cfg.channels_last == "auto" and device.type == "cpu")


def batch_layout(batch: Any, channels_last: bool) -> Any:
    """The batch as the step receives it: with ``channels_last`` its 4-D floating ``image`` in
    NHWC order (the values are unchanged; oneDNN then runs the network channels-last on a CPU,
    ~1.5x faster for MobileNetV2 with gradients equal up to float rounding), else as loaded."""
    if not channels_last or not isinstance(batch, dict):
        return batch
    image = batch.get("image")
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.is_floating_point():
        batch = {**batch, "image": image.contiguous(memory_format=torch.channels_last)}
    return batch


def train_loop(
    ctx: StageContext,
    *,
    name: str,
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainerConfig,
    step_fn: StepFn,
    state_path: Path,
    on_epoch_end: Callable[[int], None] | None = None,
    ddp_static_graph: bool = False,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` (resuming from ``state_path``); return measured numbers.

    ``on_epoch_end(epoch)`` runs on the main process after each epoch's checkpoint is written
    (e.g. validation), while the other processes wait. ``ddp_static_graph``: the step uses some
    parameters in more than one forward (multi-view objectives), which DDP allows only with a
    static graph. ``skipped_steps`` in the result counts the steps ``nonfinite: skip`` dropped.
    Raises :class:`~wsss.errors.NumericalError` on a non-finite loss or gradient under
    ``nonfinite: stop``, or past the skip bound.
    """
    device, dist = ctx.device, ctx.dist
    drop_last = len(dataset) >= cfg.batch_size
    per_epoch = len(dataset) // cfg.batch_size if drop_last else 1
    total_steps = per_epoch * cfg.epochs
    optimizer, scheduler = build_optimizer(model, cfg, total_steps, ctx.recipe.compat)
    scaler = make_grad_scaler(device, cfg.amp)
    start_epoch, step, skipped = 0, 0, 0
    if state_path.is_file():
        meta = load_training_state(
            state_path,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            scheduler=scheduler,
            map_location=device,
        )
        start_epoch, step = int(meta["epoch"]), int(meta["step"])
        skipped = int(meta["extra"].get("skipped_steps", 0))
        ctx.logger.info("%s: resuming from %s at epoch %d", name, state_path, start_epoch)
    net = wrap_ddp(model, dist, sync_bn=cfg.sync_bn and dist.world_size > 1, static_graph=ddp_static_graph)
    writer = ScalarWriter(ctx.run_dir)
    nhwc = uses_channels_last(cfg, device)
    t0, seen = time.time(), 0
    last: dict[str, float] = {}
    section = section_of(ctx, cfg)
    check_grads = not scaler.is_enabled()  # fp16 AMP: the GradScaler skips non-finite gradients itself
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        loader = _loader(dataset, cfg, ctx, epoch, drop_last)
        budget = SkipBudget(len(loader), total=skipped)
        sums: dict[str, float] = {}
        good = 0
        bar = tqdm(
            loader, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", disable=not ctx.show_progress, leave=False
        )
        for index, batch in enumerate(bar, 1):
            batch = batch_layout(batch, nhwc)
            progress = TrainProgress(step=step, total_steps=total_steps, epoch=epoch)
            with autocast(device, cfg.amp):
                losses = step_fn(net, batch, progress)
            values = {k: float(v.detach()) for k, v in losses.items()}
            bad = nonfinite_terms(values)
            what = f"loss terms not finite: {', '.join(bad)}" if bad else ""
            if dist.world_size > 1:  # every process skips (or stops) together, or DDP would hang
                flag = all_reduce_sum(torch.tensor([float(bool(bad))], device=device))
                if float(flag) > 0 and not bad:
                    what = "a loss term on another process is not finite"
            optimizer.zero_grad(set_to_none=True)
            if not what:
                scaler.scale(losses["loss"]).backward()
                bad_grads = nonfinite_grads(model) if check_grads else []
                if bad_grads:
                    what = f"gradients not finite (loss finite) for {shorten(bad_grads)}"
                    optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += cfg.batch_size
            if what:
                where = Where(name, epoch, cfg.epochs, step, index, len(loader), batch_names(batch))
                if cfg.nonfinite == "stop":
                    raise nonfinite_error(where, what, state_path, section, cfg)
                exceeded = budget.skip()
                skipped = budget.total
                if exceeded is not None:
                    raise nonfinite_error(where, what, state_path, section, cfg, reason=exceeded)
                ctx.logger.warning("%s: %s; optimizer step skipped (nonfinite: skip)", where, what)
                if scheduler is not None:
                    with warnings.catch_warnings():  # "scheduler before optimizer": meant, on a first step
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                continue
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            budget.good_step()
            good += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % cfg.log_every == 0:
                writer.add_scalars({f"{name}/{k}": v for k, v in values.items()}, step)
                writer.add_scalar(f"{name}/lr", optimizer.param_groups[0]["lr"], step)
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        last = {k: v / max(1, good) for k, v in sums.items()}
        ctx.logger.info(
            "%s epoch %d/%d: %s",
            name,
            epoch + 1,
            cfg.epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in last.items()),
        )
        if dist.is_main:
            save_training_state(
                state_path,
                model=model,
                optimizer=optimizer,
                scaler=scaler,
                scheduler=scheduler,
                epoch=epoch + 1,
                step=step,
                extra={"skipped_steps": skipped},
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
        barrier()
    writer.close()
    elapsed = time.time() - t0
    return {
        "epochs": cfg.epochs,
        "steps": step,
        "skipped_steps": skipped,
        "final_losses": last,
        "seconds": round(elapsed, 1),
        "images_per_s": round(seen / elapsed, 1) if elapsed > 0 and seen else None,
    }
