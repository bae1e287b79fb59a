"""Stage ``make-uns-cams``: SPU's UNS maps as CAM files, their labels, and their scores.

Per image (``pur-suit/SPU`` ``step/make_uns_cam.py``): the main head's logits, conditioned on the
image's tags, averaged over ``uns.cam_scales`` and their flips at the stored stride; a softmax over
every class; the image's classes kept. Each kept map is min-max normalised where the first labels
(``make-labels``) are not background, and keeps its softmax value where they are, so a region the
first labels called background needs a confident UNS score to become foreground again. The maps go
to ``RUN/uns-cams`` (``cams.stride``; norm ``minmax``), ``uns.labels`` turns them into labels in
``RUN/uns-labels`` (SPU: 0.45 / 0.15 + CRF), and both are scored like ``eval-cams`` and
``make-labels`` score theirs. With this stage in the recipe, ``train-affinity`` trains on these
labels and ``random-walk`` walks these maps (``StageContext.refines_cams``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsss.cams.files import cam_path, save_cam
from wsss.cams.files import is_complete as cam_file_complete
from wsss.cams.inference import multiscale_cams
from wsss.cams.nonfinite import admit_cam
from wsss.data.images import read_image
from wsss.data.palette import read_label_png
from wsss.engine import barrier
from wsss.models.seg.uns import UNSNet
from wsss.refine.pairs import downscale_labels
from wsss.stages.context import StageContext
from wsss.stages.eval_cams import evaluate_cams
from wsss.stages.make_labels import write_labels
from wsss.stages.scoring import all_written, pending
from wsss.stages.train_uns import load_trained_uns, uns_config

NAME = "make-uns-cams"
EPS = 1e-5


def is_complete(ctx: StageContext) -> bool:
    return (
        all_written(ctx, ctx.paths.uns_cam_dir, ".npz", cam_file_complete)
        and all_written(ctx, ctx.paths.uns_label_dir, ".png", splits=ctx.label_splits(ctx.recipe.uns.labels))
        and (ctx.paths.eval_dir / "uns_labels.json").is_file()
    )


def uns_logits(
    model: UNSNet,
    image: torch.Tensor,
    tags: torch.Tensor,
    scales: list[float],
    flip: bool,
    stride: int,
    device,
) -> torch.Tensor:
    """(1+K)×⌈H/s⌉×⌈W/s⌉ main-head logits of one uint8 image, averaged over scales and flips."""

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        out = model(x, tags.to(x.device).expand(len(x), -1)).logits
        return torch.cat([out.new_zeros((len(x), 1, *out.shape[-2:])), out], dim=1)  # channel 0 is dropped

    channels = torch.ones(model.num_classes)  # keep every class: the softmax needs all of them
    (summed,) = multiscale_cams(
        logits_fn,
        [image],
        [channels],
        scales,
        scale_mode="relative",
        flip=flip,
        batched=True,
        output_stride=model.output_stride,
        target_stride=stride,
        device=device,
    )
    return summed / (len(scales) * (2 if flip else 1))


def uns_maps(logits: torch.Tensor, keys: np.ndarray, first_label: torch.Tensor) -> torch.Tensor:
    """The stored maps (len(keys)×h×w): softmax over every class, the image's classes kept, each
    min-max normalised where ``first_label`` (h×w, at the maps' grid) is not background (0)."""
    probs = torch.softmax(logits.float(), dim=0)[torch.as_tensor(keys, dtype=torch.long)]
    if probs.numel() == 0:
        return probs
    flat = probs.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    normalised = (probs - lo) / (hi - lo + EPS)
    return torch.where((first_label != 0)[None], normalised, probs)


def run(ctx: StageContext) -> dict[str, Any]:
    r, u = ctx.recipe, uns_config(ctx)
    folder, stride = ctx.paths.uns_cam_dir, r.cams.stride
    todo = pending(ctx, folder, ".npz", cam_file_complete)
    left_out: list[str] = []
    if todo:
        model = load_trained_uns(ctx, todo[0][0].num_classes).to(ctx.device).eval()
        for ds, i in tqdm(todo, desc=NAME, unit="img", disable=not ctx.show_progress):
            name = ds.names[i]
            image = torch.from_numpy(read_image(ds.image_path(i))).permute(2, 0, 1).contiguous()
            tags = torch.from_numpy(ds.labels[i])
            keys = np.flatnonzero(ds.labels[i]) + 1
            logits = uns_logits(model, image, tags, u.cam_scales, u.cam_flip, stride, ctx.device).cpu()
            size = (int(image.shape[1]), int(image.shape[2]))
            first = torch.from_numpy(read_label_png(ctx.paths.label_dir / f"{name}.png", expected_size=size))
            # the pixel at each cell's corner: the ⌈H/s⌉×⌈W/s⌉ grid the maps are stored at
            maps = uns_maps(logits, keys, downscale_labels(first, stride, "corner"))
            path = cam_path(folder, name)
            if admit_cam(
                path,
                maps,
                keys,
                policy=r.cams.nonfinite,
                stage=NAME,
                logger=ctx.logger,
                class_names=ds.class_names,
            ):
                save_cam(path, maps, keys, size, stride, "minmax")
            else:
                left_out.append(name)
    barrier()
    out: dict[str, Any] = {"written": len(todo) - len(left_out)}
    if left_out:  # cams.nonfinite: skip; the labels below then name these images as skipped
        out["skipped_nonfinite"] = left_out
    if ctx.dist.is_main:
        out["seeds"] = evaluate_cams(ctx, folder, "uns_cams")
    out["labels"] = write_labels(
        ctx, u.labels, folder, ctx.paths.uns_label_dir, "uns_labels", desc=f"{NAME} labels"
    )
    if ctx.dist.is_main:
        out["warnings"] = out["seeds"].get("warnings", [])
    return out
