"""Stage ``random-walk``: propagate each image's CAMs over AffinityNet affinities → pseudo-masks.

Per image (PSA/TransCAM ``infer_aff``): embed the full-resolution image (single scale, padded to
the network stride), affinities of all pairs within the radius, CAMs average-pooled to the same
grid with a background plane, ``2^logt`` sparse transition steps, bilinear upsampling, argmax,
then optionally the label CRF. One palette PNG per image in ``pseudo/<split>``; resumable and
sharded; the seed-evaluation split is scored against its ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsss.cams.files import CamRecord, load_cam
from wsss.cams.inference import normalise_image
from wsss.data.images import read_image
from wsss.data.palette import write_label_png
from wsss.engine import barrier
from wsss.refine.crf import label_space_crf
from wsss.refine.random_walk import WalkSettings
from wsss.stages.affinity_kinds import cams_for_walk, walk_image
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
    model: torch.nn.Module, image: np.ndarray, rec: CamRecord, settings: WalkSettings, device: torch.device
) -> np.ndarray:
    """The random-walk label map (H×W uint8, label-space ids) of one image and its CAM record.

    IRN walks the file's strided maps when they are at its stride; PSA the full-resolution ones.
    """
    x = normalise_image(torch.as_tensor(image).permute(2, 0, 1).to(device))
    keys = torch.as_tensor(rec.keys.astype(np.int64))
    cams, cam_stride = cams_for_walk(model, rec, device)
    return walk_image(model, x, cams, keys, settings, cam_stride)


def crf_refine(
    image: np.ndarray,
    label: np.ndarray,
    keys: np.ndarray,
    preset: str,
    backend: str,
    label_space: int | None,
) -> np.ndarray:
    """Label CRF of the walked map: over background + the image's classes ``keys`` (label_space
    None), or over the dataset's ``label_space`` labels (TransCAM's ``infer_aff``: 21 on VOC)."""
    return label_space_crf(image, label, keys, preset, label_space=label_space, backend=backend).astype(
        np.uint8
    )


def run(ctx: StageContext) -> dict[str, Any]:
    w = ctx.recipe.random_walk
    settings = walk_settings(ctx)
    folder = ctx.paths.pseudo_dir
    todo = pending(ctx, folder, ".png")
    if todo:
        model = load_trained_affinity(ctx).to(ctx.device).eval()
        for ds, i in tqdm(todo, desc=NAME, unit="img", disable=not ctx.show_progress):
            name = ds.names[i]
            image = read_image(ds.image_path(i))
            rec = load_cam(ctx.walk_cam_dir / f"{name}.npz")
            label = walk_one(model, image, rec, settings, ctx.device)
            if w.crf is not None:
                space = ds.num_classes if w.crf_label_space == "dataset" else None
                label = crf_refine(image, label, rec.keys, w.crf, w.crf_backend, space)
            write_label_png(folder / f"{name}.png", label)
    barrier()
    out: dict[str, Any] = {"written": len(todo)}
    if ctx.dist.is_main:
        out.update(score_label_folder(ctx, folder, "pseudo"))
    return out
