"""Stage ``cycle-seg``: PMM's cyclic pseudo-mask round.

The round-1 segmentation model (``train-seg``, its last checkpoint) predicts the training images
with the recipe's test protocol (multi-scale + flip, + CRF); a fresh model is trained on those
masks with ``segmentation.cycle_loss`` (default plain cross-entropy: PMM's round-2 configs drop
PUF, which only round 1's ``_pus`` config uses); the prediction splits are predicted and scored
with it. Everything lives under
``cycle/`` so round 1 stays inspectable. Round 1's last checkpoint is used unless
``segmentation.select_by_val`` is on — then its best-val checkpoint, reported as chosen on val
ground truth.
"""

from __future__ import annotations

from typing import Any

from wsss.engine import barrier
from wsss.stages.context import StageContext
from wsss.stages.predict import predict_split
from wsss.stages.scoring import score_label_folder
from wsss.stages.train_seg import (
    VAL_LABEL,
    SegLoss,
    best_val_weights,
    load_trained_seg,
    train_segmentation,
)

NAME = "cycle-seg"


def _splits(ctx: StageContext) -> list[str]:
    return list(dict.fromkeys(ctx.recipe.predict.splits))


def is_complete(ctx: StageContext) -> bool:
    return all((ctx.paths.eval_dir / f"seg_cycle_{s}.json").is_file() for s in _splits(ctx))


def run(ctx: StageContext) -> dict[str, Any]:
    r, root = ctx.recipe, ctx.paths.cycle_dir
    labels, weights = root / "labels", root / "train-seg" / "model.safetensors"
    train = ctx.dataset(r.data.train_split)
    round1_weights = ctx.paths.seg_weights
    if r.segmentation.select_by_val:  # explicit opt-in, reported as using val ground truth
        round1_weights = best_val_weights(round1_weights)
    round1 = load_trained_seg(ctx, train.num_classes, round1_weights).to(ctx.device).eval()
    written = predict_split(ctx, round1, train, labels, f"{NAME} round-1 masks")
    barrier()
    out: dict[str, Any] = {
        "round1_masks_written": written,
        "round1_checkpoint": VAL_LABEL if r.segmentation.select_by_val else "last",
    }
    if not weights.is_file():
        s = r.segmentation
        loss = SegLoss(s.cycle_loss, s.cycle_loss_args, "segmentation.cycle_loss")
        out["train"] = train_segmentation(ctx, labels, root / "train-seg" / "state.pt", weights, NAME, loss)
    barrier()
    model = load_trained_seg(ctx, train.num_classes, weights).to(ctx.device).eval()
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        predict_split(ctx, model, ds, root / "predictions", f"{NAME} {split}")
    barrier()
    if ctx.dist.is_main:
        for split in _splits(ctx):
            out[split] = score_label_folder(ctx, root / "predictions", f"seg_cycle_{split}", split)
    return out
