"""Stage ``make-labels``: pseudo-masks from CAM files, as palette PNGs (255 = uncertain).

Resumable and sharded like ``make-cams``. The pseudo-masks of the seed-evaluation split are
scored against its ground truth (that split's GT is used for measurement only).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from wsss.cams.files import load_cam
from wsss.data.palette import write_label_png
from wsss.eval.runner import evaluate_label_dir
from wsss.files import write_json
from wsss.refine.seeds import confident_labels, threshold_labels
from wsss.stages.context import StageContext

NAME = "make-labels"


def _splits(ctx: StageContext) -> list[str]:
    return list(dict.fromkeys(ctx.recipe.cams.splits))


def is_complete(ctx: StageContext) -> bool:
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        folder = ctx.paths.label_dir(split)
        if not all((folder / f"{n}.png").is_file() for n in ds.names):
            return False
    return (ctx.paths.eval_dir / "labels.json").is_file()


def make_label(ctx: StageContext, cam_path) -> torch.Tensor:
    """One pseudo-mask (H×W long) from one CAM file, per the recipe's label settings."""
    cfg = ctx.recipe.labels
    rec = load_cam(cam_path)
    cams = torch.as_tensor(rec.full_resolution())
    keys = torch.as_tensor(rec.keys).long()
    if cfg.mode == "threshold":
        return threshold_labels(cams, keys, cfg.bg_threshold)
    return confident_labels(cams, keys, cfg.fg_threshold, cfg.low_threshold)


def run(ctx: StageContext) -> dict[str, Any]:
    r = ctx.recipe
    out: dict[str, Any] = {}
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        folder = ctx.paths.label_dir(split)
        todo = [i for i in ctx.my_indices(len(ds)) if not (folder / f"{ds.names[i]}.png").is_file()]
        for i in tqdm(todo, desc=f"{NAME} {split}", disable=not ctx.dist.is_main):
            name = ds.names[i]
            label = make_label(ctx, ctx.paths.cam_dir(split) / f"{name}.npz")
            write_label_png(folder / f"{name}.png", label.numpy().astype("uint8"))
        out[split] = {"written": len(todo)}
    if ctx.dist.world_size > 1:
        from wsss.engine import barrier

        barrier()
    scores: dict[str, Any] = {}
    if ctx.dist.is_main and r.data.seed_eval_split in _splits(ctx):
        ds = ctx.dataset(r.data.seed_eval_split)
        if ds.has_masks:
            scores = evaluate_label_dir(
                ctx.paths.label_dir(r.data.seed_eval_split),
                ds.mask_path(0).parent,
                ds.names,
                ds.num_classes,
                ds.class_names,
            )
            out["pseudo_mask_miou"] = scores["miou"]
            out["evaluated_on"] = r.data.seed_eval_split
        write_json(ctx.paths.eval_dir / "labels.json", {"summary": out, "scores": scores})
    return out
