"""Stage ``train-seg``: a segmentation network on the pseudo-masks (or on ground truth).

``segmentation.labels: pseudo`` trains on the random-walk masks when the run made them, else on
``make-labels``' output; ``gt`` trains on the dataset's own masks — the fully supervised upper
bound of the same model and data; any other value is a folder of label PNGs. 255 is ignored.
The loop (poly SGD with DeepLab parameter groups, exact resume, DDP, AMP) is ``stages.training``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.cams.inference import normalise_image
from wsss.config.schema import SegConfig
from wsss.data.pseudo import PseudoLabelDataset
from wsss.data.transforms import train_transform
from wsss.engine import TrainProgress, export_weights, load_weights, seed_everything
from wsss.errors import ConfigError
from wsss.eval.confusion import ConfusionMatrix
from wsss.eval.metrics import scores
from wsss.files import write_json
from wsss.losses.seg import deep_supervision_loss
from wsss.registry import LOSSES, SEG_MODELS
from wsss.seg.inference import predict_probs
from wsss.stages.context import StageContext
from wsss.stages.training import train_loop

NAME = "train-seg"


def is_complete(ctx: StageContext) -> bool:
    return ctx.paths.seg_weights.is_file()


def build_seg_model(ctx: StageContext, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    s = ctx.recipe.segmentation
    return SEG_MODELS.build(
        s.model,
        where="segmentation.model",
        num_classes=num_classes,
        backbone=s.backbone,
        pretrained=s.pretrained if pretrained else None,
        init=s.init if pretrained else "imagenet",
        **s.model_args,
    )


FROM_SCRATCH = (
    "the segmentation backbone starts from random weights (segmentation.pretrained is null): on a few "
    "hundred images it will learn little; set segmentation.pretrained to an ImageNet file (or 'offline' "
    "for MobileNetV2) or segmentation.init to a segmentation checkpoint"
)


def from_scratch(s: SegConfig) -> bool:
    """Whether the segmentation network gets no pretrained weights at all (a user adding train-seg
    to a recipe without a segmentation section gets this silently otherwise)."""
    return s.pretrained is None and s.init == "imagenet"


def load_trained_seg(ctx: StageContext, num_classes: int, weights: Path | None = None) -> nn.Module:
    """The segmentation model with exported weights (default: this run's ``train-seg``)."""
    model = build_seg_model(ctx, num_classes, pretrained=False)
    load_weights(weights or ctx.paths.seg_weights, model)
    return model


def label_source(ctx: StageContext) -> Path | None:
    """The label folder training reads (None: the dataset's ground truth)."""
    choice = ctx.recipe.segmentation.labels
    if choice == "gt":
        return None
    if choice == "pseudo":
        return ctx.paths.pseudo_dir if ctx.paths.pseudo_dir.is_dir() else ctx.paths.label_dir
    return Path(choice)


VAL_LABEL = "checkpoint chosen by val mIoU (uses val ground truth)"


def best_val_weights(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.stem + "_best_val.safetensors")


def best_val_record(weights_path: Path) -> Path:
    return weights_path.with_name(weights_path.stem + "_best_val.json")


def _val_selector(
    ctx: StageContext, model: nn.Module, weights_path: Path, name: str
) -> Callable[[int], None]:
    """Epoch-end hook: single-scale val mIoU; export the weights when they beat the best so far."""
    split = ctx.recipe.data.val_split
    gt = ctx.gt_dataset(split)
    if gt is None:
        raise ConfigError(f"segmentation.select_by_val needs ground truth for the val split '{split}'")
    record = best_val_record(weights_path)

    def on_epoch_end(epoch: int) -> None:
        model.eval()
        matrix = ConfusionMatrix(gt.num_classes)
        with torch.no_grad():
            for i in range(len(gt)):
                item = gt[i]
                x = normalise_image(item["image"])
                probs = predict_probs(model, x, num_classes=gt.num_classes, device=ctx.device)
                matrix.update(probs.argmax(0).cpu(), item["mask"])
        model.train()
        miou = scores(matrix.matrix, gt.class_names, ctx.recipe.evaluate.mean)["miou"]
        best = json.loads(record.read_text()) if record.is_file() else None
        ctx.logger.info("%s epoch %d: val mIoU %.4f (%s)", name, epoch, miou, VAL_LABEL)
        if best is None or miou > best["miou"]:
            export_weights(
                best_val_weights(weights_path), model, {"stage": name, "epoch": epoch, "label": VAL_LABEL}
            )
            write_json(record, {"epoch": epoch, "miou": miou, "split": split, "label": VAL_LABEL})

    return on_epoch_end


def run(ctx: StageContext) -> dict[str, Any]:
    s = ctx.recipe.segmentation
    loss = SegLoss(s.loss, s.loss_args, "segmentation.loss")
    return train_segmentation(ctx, label_source(ctx), ctx.paths.seg_state, ctx.paths.seg_weights, NAME, loss)


@dataclass(frozen=True)
class SegLoss:
    """Which ``LOSSES`` entry a segmentation training run uses, and the recipe key that chose it."""

    name: str
    args: dict[str, Any]
    where: str

    def build(self, compat: str = "clean") -> nn.Module:
        """The loss; a builder with a ``compat`` keyword gets ``compat`` unless ``args`` sets it
        (as ``train_cls.build_method`` does for objectives)."""
        return LOSSES.build_with_compat(self.name, self.where, self.args, compat)


def _no_aux_head(loss: SegLoss, model: str) -> str:
    return (
        f"{loss.where} '{loss.name}' compares the main and auxiliary heads, but segmentation.model "
        f"'{model}' has no auxiliary head (aux_weight 0); use a model with an auxiliary head, e.g. "
        "segmentation.model=pspnet with model_args.aux_weight > 0"
    )


def train_segmentation(
    ctx: StageContext, source: Path | None, state_path: Path, weights_path: Path, name: str, loss: SegLoss
) -> dict[str, Any]:
    """Train a fresh segmentation model on ``source`` (None: ground truth) with ``loss``; export it
    to ``weights_path``."""
    r, s = ctx.recipe, ctx.recipe.segmentation
    seed_everything(r.seed)
    transform = train_transform(
        resize_long=None, scale=s.scale, crop_size=s.crop_size, flip=s.flip, color_jitter=s.color_jitter
    )
    if source is None:
        ds: Any = ctx.dataset(r.data.train_split, with_masks=True, transform=transform)
    else:
        ds = PseudoLabelDataset(ctx.dataset(r.data.train_split), source, transform)
    model = build_seg_model(ctx, ds.num_classes).to(ctx.device)
    if from_scratch(s):
        ctx.logger.warning("%s: %s", name, FROM_SCRATCH)
    loss_fn = loss.build(s.compat or r.compat)
    aux_weight = float(getattr(model, "aux_weight", 0.0) or 0.0)
    # A loss that compares the two heads (SPU's uncertainty_rectified) takes the auxiliary logits
    # itself; the model's aux_weight then only says that the head exists.
    needs_aux = bool(getattr(loss_fn, "needs_aux_head", False))
    if needs_aux and aux_weight <= 0:
        raise ConfigError(_no_aux_head(loss, s.model))

    def step(net: nn.Module, batch: dict[str, Any], _: TrainProgress) -> dict[str, torch.Tensor]:
        x = batch["image"].to(ctx.device, non_blocking=True)
        y = batch["mask"].to(ctx.device, non_blocking=True).long()
        if needs_aux:
            out = net(x, with_aux=True)
            if out.aux is None:
                raise ConfigError(_no_aux_head(loss, s.model))
            return loss_fn(out.logits, y, out.aux)
        if aux_weight > 0:
            out = net(x, with_aux=True)
            return deep_supervision_loss(loss_fn, out.logits, y, out.aux, aux_weight)
        return loss_fn(net(x), y)

    on_epoch_end = _val_selector(ctx, model, weights_path, name) if s.select_by_val else None
    metrics = train_loop(
        ctx,
        name=name,
        model=model,
        dataset=ds,
        cfg=s,
        step_fn=step,
        state_path=state_path,
        on_epoch_end=on_epoch_end,
    )
    if s.select_by_val:
        metrics["selected_by_val"] = json.loads(best_val_record(weights_path).read_text())
    metrics["labels"] = "ground truth" if source is None else str(source)
    metrics["init"] = getattr(model, "init_source", s.init)
    metrics["loss"] = loss.name
    if from_scratch(s):  # in the summary and the report, not only in the log
        metrics["warnings"] = [FROM_SCRATCH]
    if ctx.dist.is_main:
        export_weights(
            weights_path,
            model,
            {
                "stage": name,
                "model": s.model,
                "backbone": s.backbone,
                "classes": list(ds.class_names),
                "labels": metrics["labels"],
                "init": metrics["init"],
                "loss": loss.name,
            },
        )
    return metrics
