"""Stage ``make-labels``: pseudo-labels from CAM files, as palette PNGs (255 = uncertain).

``threshold`` (a constant background score), ``confident`` (IRN/TransCAM dual threshold) or
``alpha`` (PSA's (1 − max)^α background), each optionally sharpened by a dense-CRF preset, or PMM's
``ppg`` / ``rough`` (settings in ``labels.mode_args``), run in a process pool over images. A
``labels.cam_transform`` (PMM's ``cvs``) reshapes each file's maps before the generator.
Resumable and sharded like ``make-cams``. The labels of the seed-evaluation split are scored
against its ground truth (used for measurement only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.cams.files import load_cam
from wsss.config.schema import LabelConfig
from wsss.data.images import read_image
from wsss.data.palette import write_label_png
from wsss.engine import barrier
from wsss.refine.label_generators import check_label_config
from wsss.refine.pool import parallel_map
from wsss.registry import CAM_TRANSFORMS, LABEL_GENERATORS
from wsss.stages.context import StageContext
from wsss.stages.scoring import all_written, pending, score_label_folder

NAME = "make-labels"


def is_complete(ctx: StageContext) -> bool:
    return (
        all_written(ctx, ctx.paths.label_dir, ".png", splits=ctx.label_splits())
        and (ctx.paths.eval_dir / "labels.json").is_file()
    )


CamTransform = Callable[[torch.Tensor, np.ndarray], torch.Tensor]
_TRANSFORMS: dict[tuple[str, str], CamTransform] = {}  # built per process (pool workers included)


def cam_transform(cfg: dict[str, Any]) -> CamTransform | None:
    """``labels.cam_transform`` built with its arguments, once per process; None when unset."""
    name = cfg["cam_transform"]
    if name is None:
        return None
    args = cfg["cam_transform_args"]
    key = (name, repr(sorted(args.items())))
    if key not in _TRANSFORMS:
        _TRANSFORMS[key] = CAM_TRANSFORMS.build(name, "labels.cam_transform_args", **args)
    return _TRANSFORMS[key]


def make_label(cfg: dict[str, Any], cam_path: Path, image_path: Path, num_classes: int) -> np.ndarray:
    """One pseudo-label (HxW uint8) from one CAM file; ``cfg`` is a ``LabelConfig`` as a dict and
    ``num_classes`` the dataset's label count with background."""
    rec = load_cam(cam_path)
    generate = LABEL_GENERATORS.get(cfg["mode"], "labels.mode")
    image = partial(read_image, image_path)
    cams, keys = rec.full_resolution(), rec.keys.astype(np.int64)
    transform = cam_transform(cfg)
    if transform is not None:
        cams = transform(cams, keys)
    return generate(cams, keys, image, cfg, num_classes, **cfg["mode_args"])


def _write_one(job: tuple[dict[str, Any], Path, Path, Path, int]) -> None:
    """Pool task (module level, so it pickles): make one label and write it atomically."""
    cfg, cam_path, image_path, out_path, num_classes = job
    write_label_png(out_path, make_label(cfg, cam_path, image_path, num_classes))


def run(ctx: StageContext) -> dict[str, Any]:
    return write_labels(ctx, ctx.recipe.labels, ctx.paths.cam_dir, ctx.paths.label_dir, "labels")


def write_labels(
    ctx: StageContext, labels: LabelConfig, cam_dir: Path, folder: Path, eval_name: str, desc: str = NAME
) -> dict[str, Any]:
    """Pseudo-labels of every pending image from the CAM files in ``cam_dir`` into ``folder``, then
    scored as ``eval/<eval_name>.json``; one code path for every stage that turns CAMs into labels."""
    cfg = asdict(labels)
    check_label_config(cfg)  # settings errors before the first image, not from a pool worker
    cam_transform(cfg)  # its arguments fail here too
    jobs = [
        (cfg, cam_dir / f"{ds.names[i]}.npz", ds.image_path(i), folder / f"{ds.names[i]}.png", ds.num_classes)
        for ds, i in pending(ctx, folder, ".png", splits=ctx.label_splits(labels))
    ]
    done = sum(
        1
        for _ in parallel_map(_write_one, jobs, workers=labels.workers, desc=desc, progress=ctx.show_progress)
    )
    barrier()
    out: dict[str, Any] = {"written": done}
    if ctx.dist.is_main:
        out.update(score_label_folder(ctx, folder, eval_name))
    return out
