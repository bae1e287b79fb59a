"""Stage ``make-cams``: multi-scale + flip CAMs for every image of the map splits, one file each.

A sharded, resumable map: each process handles its share of the images (DDP rank or
``--shard i/n``), skips images whose CAM file is already complete, and writes every file
atomically — killing it at any moment and re-running finishes the job without redoing work.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from wsss.cams.extractors import get_extractor
from wsss.cams.files import is_complete as cam_file_complete
from wsss.cams.files import save_cam
from wsss.cams.inference import NORMALISERS, multiscale_cams
from wsss.stages.context import StageContext
from wsss.stages.scoring import all_written, pending
from wsss.stages.train_cls import load_trained_classifier

NAME = "make-cams"


def is_complete(ctx: StageContext) -> bool:
    return all_written(ctx, ctx.paths.cam_dir, ".npz", cam_file_complete)


def write_cams(ctx: StageContext, model: torch.nn.Module, items: list[dict[str, Any]], folder: Path) -> None:
    """Multi-scale + flip CAMs of some dataset items, normalised and saved one file each."""
    cfg = ctx.recipe.cams
    sums = multiscale_cams(
        partial(get_extractor(cfg.extractor), model),
        [it["image"] for it in items],
        [it["labels"] for it in items],
        cfg.scales,
        scale_mode=cfg.scale_mode,
        flip=cfg.flip,
        batched=cfg.batched,
        output_stride=getattr(model, "output_stride", 16),
        target_stride=cfg.stride,
        device=ctx.device,
    )
    for it, cam in zip(items, sums):
        keys = torch.nonzero(it["labels"] > 0.5).flatten()
        cams = NORMALISERS[cfg.norm](cam[keys]) if len(keys) else cam[keys]
        save_cam(
            folder / f"{it['name']}.npz",
            cams=cams.cpu().numpy(),
            keys=(keys + 1).cpu().numpy(),
            size=tuple(it["size"]),
            stride=cfg.stride,
            norm=cfg.norm,
        )


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.recipe.cams
    folder = ctx.paths.cam_dir
    todo = pending(ctx, folder, ".npz", cam_file_complete)
    t0 = time.time()
    if todo:
        model = load_trained_classifier(ctx, todo[0][0].num_classes).to(ctx.device).eval()
        bar = tqdm(total=len(todo), desc=NAME, unit="img", disable=not ctx.dist.is_main)
        for start in range(0, len(todo), cfg.batch_images):
            chunk = todo[start : start + cfg.batch_images]
            write_cams(ctx, model, [ds[i] for ds, i in chunk], folder)
            bar.update(len(chunk))
        bar.close()
    dt = time.time() - t0
    return {
        "written": len(todo),
        "seconds": round(dt, 1),
        "s_per_image": round(dt / len(todo), 4) if todo else None,
    }
