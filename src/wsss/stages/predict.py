"""Stage ``predict``: segmentation masks for the prediction splits, scored on the val split.

Multi-scale + flip inference (a named paper protocol or the recipe's own settings), optional
dense-CRF post-processing, one palette PNG per image in ``predictions/``; resumable and sharded.
Scores (per-class IoU, precision, recall) go to ``eval/seg_<split>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wsss.cams.inference import normalise_image
from wsss.data.images import read_image
from wsss.data.palette import write_label_png
from wsss.engine import barrier
from wsss.errors import ConfigError
from wsss.seg.inference import get_protocol, postprocess_crf, predict_probs
from wsss.stages.context import StageContext
from wsss.stages.scoring import score_label_folder
from wsss.stages.train_cls import load_trained_classifier
from wsss.stages.train_seg import load_trained_seg

NAME = "predict"


def _splits(ctx: StageContext) -> list[str]:
    return list(dict.fromkeys(ctx.recipe.predict.splits))


def is_complete(ctx: StageContext) -> bool:
    folder = ctx.paths.prediction_dir
    done = all((folder / f"{n}.png").is_file() for s in _splits(ctx) for n in ctx.dataset(s).names)
    return done and all((ctx.paths.eval_dir / f"seg_{s}.json").is_file() for s in _splits(ctx))


def _settings(ctx: StageContext) -> tuple[dict[str, Any], str | None]:
    p = ctx.recipe.predict
    if p.protocol is not None:
        proto = get_protocol(p.protocol)
        return proto.predict_kwargs(), proto.crf
    return {"scales": tuple(p.scales), "flip": p.flip, "mode": p.mode, "window": p.window}, p.crf


def predict_split(ctx: StageContext, model: torch.nn.Module, ds: Any, folder: Path, desc: str) -> int:
    """Write this process's missing predictions of ``ds`` into ``folder``; return how many."""
    kwargs, crf = _settings(ctx)
    todo = [i for i in ctx.my_indices(len(ds)) if not (folder / f"{ds.names[i]}.png").is_file()]
    for i in tqdm(todo, desc=desc, unit="img", disable=not ctx.show_progress):
        image = read_image(ds.image_path(i))
        x = normalise_image(torch.as_tensor(image).permute(2, 0, 1))
        with torch.no_grad():
            probs = predict_probs(model, x, num_classes=ds.num_classes, device=ctx.device, **kwargs)
        if crf is not None:
            label = postprocess_crf(image, probs.cpu(), crf, ctx.recipe.predict.crf_backend)
        else:
            label = probs.argmax(0).cpu().numpy()
        write_label_png(folder / f"{ds.names[i]}.png", label.astype(np.uint8))
    return len(todo)


class SegmentationHead(nn.Module):
    """A single-stage classifier seen as a segmentation model: ``forward`` returns its ``segment``
    logits, so the multi-scale protocols run it like any train-seg network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.segment(x)


def load_predictor(ctx: StageContext, num_classes: int) -> nn.Module:
    """The network ``predict.model`` names, with this run's trained weights, in eval mode."""
    if ctx.recipe.predict.model == "segmentation":
        return load_trained_seg(ctx, num_classes).to(ctx.device).eval()
    model = load_trained_classifier(ctx, num_classes)
    if not callable(getattr(model, "segment", None)):
        raise ConfigError(
            f"predict.model is 'classifier' but classifier.model '{ctx.recipe.classifier.model}' has no "
            "segmentation head (no segment method); use predict.model: segmentation with a train-seg stage"
        )
    return SegmentationHead(model).to(ctx.device).eval()


def run(ctx: StageContext) -> dict[str, Any]:
    folder = ctx.paths.prediction_dir
    out: dict[str, Any] = {}
    model = None
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        if model is None:
            model = load_predictor(ctx, ds.num_classes)
        out[split] = {"written": predict_split(ctx, model, ds, folder, f"{NAME} {split}")}
    barrier()
    if ctx.dist.is_main:
        for split in _splits(ctx):
            out[split].update(score_label_folder(ctx, folder, f"seg_{split}", split))
    return out
