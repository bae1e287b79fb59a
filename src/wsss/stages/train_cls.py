"""Stage ``train-cls``: train the CAM classifier on image-level tags.

TransCAM/BNR protocol by default: AdamW with a constant lr over all parameters, BN in train
mode, random resize-long + flip + colour jitter + crop; the IRN-style plain CAM uses poly SGD
with 10× lr on its classifier. The loop (exact resume, DDP, AMP) is ``stages.training``.

The functions take the recipe section they train (``classifier``, or ``pretrain`` for the
``pretrain-cls`` stage of a two-stage method), so both stages are this one code path. With
``classifier.init_from: pretrain`` the model receives the pretrain stage's weights through its
``load_pretrained_stage`` before training (AMR: the frozen spotlight branch).

Held-out tags (``classifier.validation_split`` or ``classifier.holdout``) are scored after the last
epoch (and every ``validate_every`` epochs): mAP, chance mAP and F1 go into the stage's metrics,
with a warning when the classifier barely beats a random ranking (``wsss.eval.multilabel``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsss.config.schema import ClassifierConfig
from wsss.data.base import TaggedImageDataset
from wsss.data.heat_crops import HeatCropDataset
from wsss.data.transforms import eval_transform, train_transform
from wsss.engine import TrainProgress, export_weights, load_weights, read_weights, seed_everything
from wsss.errors import ConfigError
from wsss.eval.multilabel import learning_warning, multilabel_report
from wsss.losses.objective import Objective
from wsss.registry import CAM_MODELS, METHODS
from wsss.stages.context import StageContext
from wsss.stages.training import train_loop

NAME = "train-cls"


PRETRAIN = "pretrain"  # the recipe section the pretrain-cls stage trains


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.classifier_weights.is_file()


def null_section(section: str) -> str:
    """What to do when the section a stage trains is null."""
    return (
        f"stage pretrain-cls trains the recipe's '{section}' section, which is null; add a '{section}' "
        "section (a classifier config, as 'classifier') or drop pretrain-cls from the stages"
    )


def section_config(ctx: StageContext, section: str = "classifier") -> ClassifierConfig:
    """The recipe's ``classifier`` or ``pretrain`` section (ConfigError when ``pretrain`` is null)."""
    cfg = getattr(ctx.recipe, section)
    if cfg is None:
        raise ConfigError(null_section(section))
    return cfg


def build_classifier(
    ctx: StageContext, num_classes: int, *, pretrained: bool = True, section: str = "classifier"
) -> nn.Module:
    c = section_config(ctx, section)
    return CAM_MODELS.build(
        c.model,
        where=f"{section}.model",
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


def holdout_split(names: list[str], share: float) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: the ``share`` of images whose name hashes lowest is held out, so
    the choice depends on the names only (every seed and every rerun holds out the same images)."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"classifier.holdout must be in [0, 1) (a share of train_split), got {share}")
    n_out = round(len(names) * share)
    if share > 0 and not 1 <= n_out < len(names):
        raise ConfigError(
            f"classifier.holdout {share} of {len(names)} training images holds out {n_out}; "
            "choose a share that leaves at least one image on each side"
        )
    order = sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
    held = sorted(order[:n_out])
    held_set = set(held)
    return [i for i in range(len(names)) if i not in held_set], held


def _held_out(
    ctx: StageContext,
    c: ClassifierConfig,
    keep: bool,
    transform: Callable[..., Any] | None = None,
    with_masks: bool = False,
) -> TaggedImageDataset:
    """train_split without (``keep``) or restricted to its held-out images, with ``transform``; a
    subset of the split as loaded once (building it may read every mask), not a second build."""
    ds = ctx.dataset(ctx.recipe.data.train_split, with_masks=with_masks)
    kept, held = holdout_split(ds.names, c.holdout)
    which = "kept" if keep else "held out"
    return ds.subset(kept if keep else held, transform=transform, source=f"{ds.source} ({which})")


def training_set(ctx: StageContext, section: str = "classifier", with_masks: bool = False) -> Dataset:
    """The train split with the classifier's augmentation: random crops, or PMM's heat crops;
    without the images ``holdout`` keeps for validation. ``with_masks``: batches carry the ground-truth
    masks too (an objective's fully supervised reference, ``Objective.needs_masks``)."""
    r, c = ctx.recipe, section_config(ctx, section)
    if c.holdout > 0 and c.validation_split is not None:
        raise ConfigError(
            f"{section}.holdout and {section}.validation_split both choose the validation images; set one"
        )
    if c.crops == "heat":
        if c.cutout is not None:
            raise ConfigError(f"{section}.cutout works with random crops only; set {section}.crops: random")
        base = _held_out(ctx, c, keep=True) if c.holdout > 0 else ctx.dataset(r.data.train_split)
        return HeatCropDataset(
            base,
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
        resize_long=c.resize_long,
        crop_size=c.crop_size,
        flip=c.flip,
        color_jitter=c.color_jitter,
        cutout=c.cutout,
        resized_crop=tuple(c.crop_scale) if c.crops == "random_resized" else None,
        jitter_p=c.color_jitter_p,
    )
    if c.holdout > 0:
        return _held_out(ctx, c, keep=True, transform=transform, with_masks=with_masks)
    return ctx.dataset(r.data.train_split, transform=transform, with_masks=with_masks)


def validation_set(ctx: StageContext, section: str = "classifier") -> TaggedImageDataset | None:
    """The held-out tagged images the classifier is scored on (long side ``validation_size``), or
    None when the section names none."""
    c = section_config(ctx, section)
    transform = eval_transform(c.validation_size or c.crop_size)  # the training resolution by default
    if c.validation_split is not None:
        return ctx.dataset(c.validation_split, transform=transform, with_masks=False)
    if c.holdout > 0:
        return _held_out(ctx, c, keep=False, transform=transform)
    return None


@torch.no_grad()
def class_probabilities(
    model: nn.Module, method: Objective, ds: Dataset, device: torch.device, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×K probabilities, N×K tags) of ``ds``, one image per forward (sizes differ), eval mode."""
    was_training = model.training
    model.eval()
    probs, tags = [], []
    # the global RNG state is put back afterwards, and the loader seeds from a generator of its own:
    # the training epochs after a mid-training validation draw exactly what they would have drawn
    with torch.random.fork_rng(devices=[]):
        try:
            gen = torch.Generator().manual_seed(0)
            for batch in DataLoader(ds, batch_size=1, num_workers=num_workers, generator=gen):
                out = model(batch["image"].to(device), with_attention=False)
                probs.append(method.class_probabilities(out).float().cpu())
                tags.append(batch["labels"])
        finally:
            model.train(was_training)
    return torch.cat(probs), torch.cat(tags)


def validate(
    ctx: StageContext, model: nn.Module, method: Objective, ds: TaggedImageDataset, section: str, epoch: int
) -> tuple[dict[str, Any], str | None]:
    """Score ``model`` on the held-out tags; log the numbers and any warning; return both."""
    c = section_config(ctx, section)
    probs, tags = class_probabilities(model, method, ds, ctx.device, c.num_workers)
    report = multilabel_report(probs.numpy(), tags.numpy(), ds.class_names[1:])
    report.update(epoch=epoch, split=c.validation_split or f"holdout {c.holdout:g} of train_split")
    ctx.logger.info(
        "%s validation after epoch %d (%d images): mAP %.1f %% (chance %.1f %%), F1 macro %.1f %%",
        section,
        epoch,
        report["images"],
        100 * (report["map"] or 0.0),
        100 * (report["chance_map"] or 0.0),
        100 * (report["f1_macro"] or 0.0),
    )
    warning = learning_warning(report)
    if warning:
        ctx.logger.warning("%s: %s", section, warning)
    return report, warning


def _history_point(report: dict[str, Any]) -> dict[str, Any]:
    """What the validation history keeps of one scoring."""
    return {k: report[k] for k in ("epoch", "map", "f1_macro")}


def build_method(c: ClassifierConfig, compat: str, section: str = "classifier") -> Objective:
    """The section's objective; a builder with a ``compat`` keyword gets the stage's compat (AMR's
    CPS pairing) unless ``method_args`` sets it."""
    return METHODS.build_with_compat(c.method, f"{section}.method", c.method_args, compat)


def missing_pretrain(ctx: StageContext) -> str:
    """What to do when ``classifier.init_from: pretrain`` finds no pretrain weights."""
    return (
        f"classifier.init_from is 'pretrain' but {ctx.paths.pretrain_weights} does not exist: the first "
        f"training stage has not run in this run directory. Run it first (wsss run {ctx.recipe.name} "
        f"--out {ctx.run_dir} --stages pretrain-cls), or keep pretrain-cls before train-cls in the stages"
    )


def init_from_pretrain(ctx: StageContext, model: nn.Module, section: str = "classifier") -> None:
    """Hand the pretrain stage's weights to ``model.load_pretrained_stage`` when the section asks;
    refuse a model that needs them (``needs_pretrained_stage``) when it does not."""
    c = section_config(ctx, section)
    if c.init_from is None:
        if getattr(model, "needs_pretrained_stage", False):
            raise ConfigError(
                f"{section}.model '{c.model}' trains on top of a first, separately trained classifier "
                f"(stage pretrain-cls); set {section}.init_from: pretrain, give the recipe a 'pretrain' "
                "section and run pretrain-cls first"
            )
        return
    if section == PRETRAIN:
        raise ConfigError("pretrain.init_from must be null: pretrain-cls is the first training stage")
    load = getattr(model, "load_pretrained_stage", None)
    if not callable(load):
        raise ConfigError(
            f"{section}.init_from is '{c.init_from}' but {section}.model '{c.model}' takes no pretrained "
            "stage (it has no load_pretrained_stage); set init_from: null"
        )
    path = ctx.paths.pretrain_weights
    if not path.is_file():
        raise ConfigError(missing_pretrain(ctx))
    load(read_weights(path), source=str(path))
    ctx.logger.info("%s: weights of the pretrain stage loaded from %s", section, path)


def train_classifier(
    ctx: StageContext, *, section: str, name: str, state_path: Path, weights_path: Path
) -> dict[str, Any]:
    """Train the recipe's ``section`` classifier and export it to ``weights_path``."""
    r, c = ctx.recipe, section_config(ctx, section)
    seed_everything(r.seed)
    method = build_method(c, c.compat or r.compat, section)
    if method.needs_masks and c.crops == "heat":
        raise ConfigError(f"{section}.method trains on ground-truth masks, which heat crops do not carry")
    ds = training_set(ctx, section, with_masks=method.needs_masks)
    model = build_classifier(ctx, ds.num_classes, section=section)
    init_from_pretrain(ctx, model, section)
    model = model.to(ctx.device)

    def step(net: nn.Module, batch: dict[str, Any], progress: TrainProgress) -> dict[str, torch.Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["labels"].to(ctx.device, non_blocking=True)
        if method.needs_masks:
            return method.step(net, x, y, progress, masks=batch["mask"].to(ctx.device, non_blocking=True))
        return method.step(net, x, y, progress)

    val_ds = validation_set(ctx, section)
    history: list[dict[str, Any]] = []

    def on_epoch_end(epoch: int) -> None:
        if val_ds is not None and c.validate_every > 0 and epoch % c.validate_every == 0 and epoch < c.epochs:
            history.append(_history_point(validate(ctx, model, method, val_ds, section, epoch)[0]))

    metrics = train_loop(
        ctx,
        name=name,
        model=model,
        dataset=ds,
        cfg=c,
        step_fn=step,
        state_path=state_path,
        on_epoch_end=on_epoch_end,
        ddp_static_graph=method.forwards_per_step > 1,
    )
    if val_ds is not None and ctx.dist.is_main:
        report, warning = validate(ctx, model, method, val_ds, section, c.epochs)
        report["history"] = [*history, _history_point(report)]
        metrics["validation"] = report
        if warning:
            metrics["warnings"] = [warning]
    if ctx.dist.is_main:
        export_weights(
            weights_path,
            model,
            {
                "stage": name,
                "model": c.model,
                "backbone": c.backbone,
                "classes": list(ds.class_names),
                "epochs": c.epochs,
            },
        )
    return metrics


def run(ctx: StageContext) -> dict[str, Any]:
    return train_classifier(
        ctx,
        section="classifier",
        name=NAME,
        state_path=ctx.paths.classifier_state,
        weights_path=ctx.paths.classifier_weights,
    )
