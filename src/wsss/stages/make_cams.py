"""Stage ``make-cams``: multi-scale + flip CAMs for every image of the map splits, one file each.

With ``cams.window`` set the CAMs are PMM's multi-crop ones (:mod:`wsss.cams.multicrop`): each
scale is tiled by windows, so an image costs many more forwards; the file format is the same.

``cams.extractor`` is built with ``cams.extractor_args``. An extractor that returns model
branches (Grad-CAM, AdvCAM on AMR's two branches) has its pass sums normalised per branch with
``cams.norm`` and then fused by its own weights, AMR's order; the fused map is stored as is (with
one branch this is the usual normalisation, exactly).

A sharded, resumable map: each process handles its share of the images (DDP rank or
``--shard i/n``), skips images whose CAM file is already complete, and writes every file
atomically — killing it at any moment and re-running finishes the job without redoing work.

Images are batched in fixed groups of ``cams.batch_images`` (all images in order; processes
take whole groups), the same groups on every run and for any number of processes: CPU kernels
pick their blocking by batch size, so an image batched with other neighbours can come out one
float16 step different. A group interrupted half-way is computed again as a whole and only its
missing files are written, so a resumed or sharded run writes exactly the files an uninterrupted
single process does.

Speed on a CPU (``cams.forward_images``, ``cams.fold_bn``, ``cams.channels_last``; the maps stay
the same up to float rounding): one image and its flip per forward, BatchNorm folded into the
convolutions and channels-last tensors. Gradient extractors (Grad-CAM, AdvCAM) run the model as
trained, a whole group per forward.

An image whose maps hold NaN or inf follows ``cams.nonfinite`` (:mod:`wsss.cams.nonfinite`):
``stop`` raises naming it (the files written stay), ``skip`` leaves its file out and lists it under
``skipped_nonfinite`` in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from wsss.cams.extractors import BoundExtractor, get_extractor
from wsss.cams.files import is_complete as cam_file_complete
from wsss.cams.files import save_cam
from wsss.cams.inference import NORMALISERS, cam_output_stride, multiscale_cams, prepare_cam_model
from wsss.cams.multicrop import multicrop_cams
from wsss.cams.nonfinite import admit_cam
from wsss.errors import ConfigError
from wsss.stages.context import StageContext
from wsss.stages.scoring import all_written
from wsss.stages.train_cls import load_trained_classifier

NAME = "make-cams"


def is_complete(ctx: StageContext) -> bool:
    return all_written(ctx, ctx.paths.cam_dir, ".npz", cam_file_complete)


def write_cams(
    ctx: StageContext,
    model: torch.nn.Module,
    items: list[dict[str, Any]],
    folder: Path,
    skip: set[str] | frozenset[str] = frozenset(),
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """Multi-scale (or, with ``cams.window``, multi-crop) + flip CAMs of some dataset items,
    normalised and saved one file each; return the names left out as non-finite.

    All items are computed as one batch; items named in ``skip`` (already written) are not saved.
    Maps with NaN or inf follow ``cams.nonfinite`` (:mod:`wsss.cams.nonfinite`): ``stop`` raises
    before the image's file (the group's earlier files stay written), ``skip`` leaves it out.
    """
    cfg = ctx.recipe.cams
    common = dict(
        flip=cfg.flip,
        batched=cfg.batched,
        output_stride=cam_output_stride(model),
        target_stride=cfg.stride,
        device=ctx.device,
        resize=cfg.resize,
    )
    cam_fn = BoundExtractor(get_extractor(cfg.extractor, **cfg.extractor_args), model)
    images, labels = [it["image"] for it in items], [it["labels"] for it in items]
    plain = not (cam_fn.needs_grad or cam_fn.needs_labels)
    if cfg.window is not None:
        if cam_fn.needs_grad or cam_fn.needs_labels:
            raise ConfigError(
                f"cams.extractor {cfg.extractor!r} needs gradients or labels, which multi-crop "
                "inference (cams.window) does not give; use multi-scale inference (cams.window: null)"
            )
        sums = multicrop_cams(
            cam_fn,
            images,
            labels,
            cfg.scales,
            window=cfg.window,
            window_stride=cfg.window_stride,
            authors_code=ctx.recipe.compat == "authors_code",
            **common,
        )
    else:
        sums = multiscale_cams(
            cam_fn,
            images,
            labels,
            cfg.scales,
            scale_mode=cfg.scale_mode,
            forward_images=forward_images(ctx) if plain else None,
            **common,
        )
    left_out = []
    for it, cam in zip(items, sums):
        if it["name"] in skip:
            continue
        keys = torch.nonzero(it["labels"] > 0.5).flatten()
        cams = stored_maps(cam, keys, cfg.norm, cam_fn)
        path, cams, keys = folder / f"{it['name']}.npz", cams.cpu().numpy(), (keys + 1).cpu().numpy()
        policy = cfg.nonfinite
        if not admit_cam(
            path, cams, keys, policy=policy, stage=NAME, logger=ctx.logger, class_names=class_names
        ):
            left_out.append(it["name"])
            continue
        save_cam(path, cams=cams, keys=keys, size=tuple(it["size"]), stride=cfg.stride, norm=cfg.norm)
    return left_out


def forward_images(ctx: StageContext) -> int | None:
    """Images per forward (each with its flip) inside a group: ``cams.forward_images``; 0 means the
    whole group (None). One per forward pays on a CPU for large photos (cache), not for small images."""
    n = ctx.recipe.cams.forward_images
    if n < 0:
        raise ConfigError(f"cams.forward_images must be >= 0 (0: the whole group), got {n}")
    return None if n == 0 else n


def inference_model(ctx: StageContext, model: torch.nn.Module) -> torch.nn.Module:
    """The eval-mode classifier as make-cams runs it: for the plain extractors BatchNorm folded
    (``cams.fold_bn``) and channels-last (``cams.channels_last``: ``auto`` = on the CPU); gradient
    extractors get the model as trained."""
    cfg = ctx.recipe.cams
    probe = BoundExtractor(get_extractor(cfg.extractor, **cfg.extractor_args), model)
    if probe.needs_grad or probe.needs_labels:
        return model
    nhwc = cfg.channels_last is True or (cfg.channels_last == "auto" and ctx.device.type == "cpu")
    return prepare_cam_model(model, fold_bn=cfg.fold_bn, channels_last=nhwc)


def stored_maps(cam: torch.Tensor, keys: torch.Tensor, norm: str, cam_fn: BoundExtractor) -> torch.Tensor:
    """The present classes' maps as stored: ``norm`` per class, or, for per-branch sums
    (branches×K×H×W), per branch and then fused by the extractor."""
    if not len(keys):
        return cam[..., keys, :, :].reshape(0, *cam.shape[-2:])
    if cam.ndim == 4:
        return cam_fn.fuse(cam[:, keys], NORMALISERS[norm])
    return NORMALISERS[norm](cam[keys])


def fixed_batches(ctx: StageContext) -> list[list[tuple[Any, int]]]:
    """This process's (dataset, index) pairs in groups of ``cams.batch_images``.

    The groups are cut from every image of the map splits in a fixed order, then dealt out to
    the processes (DDP ranks or ``--shard``) a whole group at a time: an image is batched with
    the same neighbours however many processes share the work and whichever files exist, so the
    CAM files do not depend on either.
    """
    every: list[tuple[Any, int]] = []
    seen: set[str] = set()
    for split in ctx.map_splits:  # an image listed in several splits (VOC train ⊂ train_aug) once
        ds = ctx.dataset(split)
        for i, name in enumerate(ds.names):
            if name not in seen:
                seen.add(name)
                every.append((ds, i))
    size = ctx.recipe.cams.batch_images
    groups = [every[start : start + size] for start in range(0, len(every), size)]
    return [groups[g] for g in ctx.my_indices(len(groups))]


def run(ctx: StageContext) -> dict[str, Any]:
    folder = ctx.paths.cam_dir
    batches = []  # (batch, names already written)
    for batch in fixed_batches(ctx):
        done = {ds.names[i] for ds, i in batch if cam_file_complete(folder / f"{ds.names[i]}.npz")}
        if len(done) < len(batch):
            batches.append((batch, done))
    todo = sum(len(batch) - len(done) for batch, done in batches)
    t0 = time.time()
    left_out: list[str] = []
    if batches:
        first = ctx.dataset(ctx.map_splits[0])
        model = inference_model(ctx, load_trained_classifier(ctx, first.num_classes).to(ctx.device).eval())
        bar = tqdm(total=todo, desc=NAME, unit="img", disable=not ctx.show_progress)
        for batch, done in batches:
            items = [ds[i] for ds, i in batch]
            left_out += write_cams(ctx, model, items, folder, skip=done, class_names=first.class_names)
            bar.update(len(batch) - len(done))
        bar.close()
    dt = time.time() - t0
    out: dict[str, Any] = {
        "written": todo - len(left_out),
        "seconds": round(dt, 1),
        "s_per_image": round(dt / todo, 4) if todo else None,
    }
    if left_out:  # cams.nonfinite: skip
        out["skipped_nonfinite"] = left_out
    return out
