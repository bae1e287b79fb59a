"""Stage ``random-walk``: propagate each image's CAMs over AffinityNet affinities → pseudo-masks.

Per image (PSA/TransCAM ``infer_aff``): embed the full-resolution image (single scale, padded to
the network stride), affinities of all pairs within the radius, CAMs average-pooled to the same
grid with a background plane, ``2^logt`` sparse transition steps, bilinear upsampling, argmax,
then optionally the label CRF. One palette PNG per image in ``pseudo/<split>``; resumable and
sharded; the seed-evaluation split is scored against its ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsss.cams.files import load_cam
from wsss.cams.inference import normalise_image
from wsss.data.images import read_image
from wsss.data.palette import write_label_png
from wsss.engine import barrier
from wsss.refine.crf import crf_labels
from wsss.refine.random_walk import WalkSettings
from wsss.stages.affinity_kinds import walk_image
from wsss.stages.context import StageContext
from wsss.stages.scoring import all_written, pending, score_label_folder
from wsss.stages.train_affinity import load_trained_affinity

NAME = "random-walk"


def is_complete(ctx: StageContext) -> bool:
    return all_written(ctx, ctx.paths.pseudo_dir, ".png") and (ctx.paths.eval_dir / "pseudo.json").is_file()


def walk_settings(ctx: StageContext) -> WalkSettings:
    w = ctx.recipe.random_walk
    return WalkSettings(
        beta=w.beta,
        logt=w.logt,
        radius=w.radius,
        bg_mode=w.bg_mode,
        bg_value=w.bg_value,
        cam_power=w.cam_power,
    )


def walk_one(
    model: torch.nn.Module, image: np.ndarray, cam_path: Path, settings: WalkSettings, device: torch.device
) -> np.ndarray:
    """The random-walk label map (H×W uint8, label-space ids) of one image."""
    rec = load_cam(cam_path)
    x = normalise_image(torch.as_tensor(image).permute(2, 0, 1).to(device))
    keys = torch.as_tensor(rec.keys.astype(np.int64))
    return walk_image(model, x, rec.full_resolution(device=device), keys, settings)


def crf_refine(image: np.ndarray, label: np.ndarray, preset: str, backend: str) -> np.ndarray:
    """Label CRF over the classes present, in compact indices (0 and the image's classes)."""
    lut = np.unique(np.concatenate([[0], label.ravel()]))
    if len(lut) < 2:  # background only: nothing to sharpen
        return label
    compact = np.searchsorted(lut, label)
    return lut[crf_labels(image, compact, preset, n_labels=len(lut), backend=backend)].astype(np.uint8)


def run(ctx: StageContext) -> dict[str, Any]:
    w = ctx.recipe.random_walk
    settings = walk_settings(ctx)
    folder = ctx.paths.pseudo_dir
    todo = pending(ctx, folder, ".png")
    if todo:
        model = load_trained_affinity(ctx).to(ctx.device).eval()
        for ds, i in tqdm(todo, desc=NAME, unit="img", disable=not ctx.dist.is_main):
            name = ds.names[i]
            image = read_image(ds.image_path(i))
            label = walk_one(model, image, ctx.paths.cam_dir / f"{name}.npz", settings, ctx.device)
            if w.crf is not None:
                label = crf_refine(image, label, w.crf, w.crf_backend)
            write_label_png(folder / f"{name}.png", label)
    barrier()
    out: dict[str, Any] = {"written": len(todo)}
    if ctx.dist.is_main:
        out.update(score_label_folder(ctx, folder, "pseudo"))
    return out
