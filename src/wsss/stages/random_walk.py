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
import torch.nn.functional as F
from tqdm import tqdm

from wsss.cams.files import load_cam
from wsss.cams.inference import normalise_image
from wsss.data.images import read_image
from wsss.data.palette import write_label_png
from wsss.eval.runner import evaluate_label_dir
from wsss.files import write_json
from wsss.models.affinity.psa import pair_affinities
from wsss.refine.crf import crf_labels
from wsss.refine.random_walk import WalkSettings, pool_to_grid, refine_cams, scores_to_labels, walk_pairs
from wsss.stages.context import StageContext
from wsss.stages.train_affinity import load_trained_affinity

NAME = "random-walk"


def _splits(ctx: StageContext) -> list[str]:
    return list(dict.fromkeys(ctx.recipe.cams.splits))


def is_complete(ctx: StageContext) -> bool:
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        if not all((ctx.paths.pseudo_dir(split) / f"{n}.png").is_file() for n in ds.names):
            return False
    return (ctx.paths.eval_dir / "pseudo.json").is_file()


def walk_settings(ctx: StageContext) -> WalkSettings:
    w = ctx.recipe.random_walk
    return WalkSettings(beta=w.beta, logt=w.logt, radius=w.radius, bg_mode=w.bg_mode, bg_value=w.bg_value,
                        cam_power=w.cam_power)


@torch.no_grad()
def walk_one(model: torch.nn.Module, image: np.ndarray, cam_path, settings: WalkSettings,
             device: torch.device) -> np.ndarray:
    """The random-walk label map (H×W uint8, label-space ids) of one image."""
    rec = load_cam(cam_path)
    h, w = image.shape[:2]
    keys = torch.as_tensor(rec.keys.astype(np.int64))
    if len(keys) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    stride = model.output_stride
    x = normalise_image(torch.as_tensor(image).permute(2, 0, 1).to(device))
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
    x = F.pad(x, (0, pw - w, 0, ph - h))
    emb = model(x[None])
    gh, gw = emb.shape[-2:]
    src, dst = walk_pairs(gh, gw, settings, device=device)
    aff = pair_affinities(emb, src, dst)[0].float()
    cams = pool_to_grid(rec.full_resolution(device=device), stride)[:, :gh, :gw]
    scores = refine_cams(cams, aff, src, dst, settings)
    return scores_to_labels(scores.cpu(), (h, w), stride, keys).numpy().astype(np.uint8)


def crf_refine(image: np.ndarray, label: np.ndarray, preset: str, backend: str) -> np.ndarray:
    """Label CRF over the classes present, in compact indices (0 and the image's classes)."""
    lut = np.unique(np.concatenate([[0], label.ravel()]))
    if len(lut) < 2:  # background only: nothing to sharpen
        return label
    compact = np.searchsorted(lut, label)
    return lut[crf_labels(image, compact, preset, n_labels=len(lut), backend=backend)].astype(np.uint8)


def run(ctx: StageContext) -> dict[str, Any]:
    r = ctx.recipe
    settings = walk_settings(ctx)
    model = None
    out: dict[str, Any] = {}
    for split in _splits(ctx):
        ds = ctx.dataset(split)
        folder = ctx.paths.pseudo_dir(split)
        todo = [i for i in ctx.my_indices(len(ds)) if not (folder / f"{ds.names[i]}.png").is_file()]
        if todo and model is None:
            model = load_trained_affinity(ctx).to(ctx.device).eval()
        for i in tqdm(todo, desc=f"{NAME} {split}", disable=not ctx.dist.is_main):
            name = ds.names[i]
            image = read_image(ds.image_path(i))
            label = walk_one(model, image, ctx.paths.cam_dir(split) / f"{name}.npz", settings, ctx.device)
            if r.random_walk.crf is not None:
                label = crf_refine(image, label, r.random_walk.crf, r.random_walk.crf_backend)
            write_label_png(folder / f"{name}.png", label)
        out[split] = {"written": len(todo)}
    if ctx.dist.world_size > 1:
        from wsss.engine import barrier

        barrier()
    if ctx.dist.is_main and r.data.seed_eval_split in _splits(ctx):
        ds = ctx.dataset(r.data.seed_eval_split)
        scores: dict[str, Any] = {}
        if ds.has_masks:
            scores = evaluate_label_dir(ctx.paths.pseudo_dir(r.data.seed_eval_split), ds.mask_path(0).parent,
                                        ds.names, ds.num_classes, ds.class_names, mean=r.evaluate.mean,
                                        progress=False)
            out["pseudo_mask_miou"] = scores["miou"]
            out["evaluated_on"] = r.data.seed_eval_split
            out["per_class_iou"] = {c["name"]: c["iou"] for c in scores["per_class"]}
        write_json(ctx.paths.eval_dir / "pseudo.json", {"summary": out, "scores": scores})
    return out
