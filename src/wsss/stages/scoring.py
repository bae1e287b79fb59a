"""Scoring a folder of per-image label PNGs against the seed-evaluation split's ground truth.

Shared by the stages that write pseudo-labels (``make-labels``, ``random-walk``): the numbers
land in ``eval/<name>.json`` and in the stage's metrics. Ground truth is used for measurement
only; nothing downstream reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsss.eval.runner import evaluate_label_dir
from wsss.files import write_json
from wsss.stages.context import StageContext


def score_label_folder(
    ctx: StageContext, folder: Path, name: str, split: str | None = None
) -> dict[str, Any]:
    """mIoU, per-class IoU and Dice of ``folder`` on ``split`` (default: the seed-evaluation split);
    ``{"not_scored": reason}`` when the split has no ground truth or ``folder`` lacks some of its
    images, so the run record says why there is no number rather than showing a made-up one."""
    split = split or ctx.recipe.data.seed_eval_split
    ds = ctx.gt_dataset(split)
    summary: dict[str, Any] = {"not_scored": f"split '{split}' has no ground-truth masks"}
    scores: dict[str, Any] = {}
    if ds is not None:
        missing = [n for n in ds.names if not (folder / f"{n}.png").is_file()]
        if missing:
            ctx.logger.info(
                "%s: %d images of split %s have no label in %s (e.g. %s); not scored",
                name,
                len(missing),
                split,
                folder,
                missing[0],
            )
            summary = {"not_scored": f"{len(missing)} images of split '{split}' have no label in {folder}"}
        else:
            scores = evaluate_label_dir(
                folder,
                ds.mask_path(0).parent,
                ds.names,
                ds.num_classes,
                ds.class_names,
                mean=ctx.recipe.evaluate.mean,
                progress=False,
            )
            summary = {
                "miou": scores["miou"],
                "all_background_miou": scores["all_background_miou"],
                "evaluated_on": split,
                "per_class_iou": {c["name"]: c["iou"] for c in scores["per_class"]},
                "mean_dice": scores["mean_dice"],
                "per_class_dice": scores["per_class_dice"],
            }
    write_json(ctx.paths.eval_dir / f"{name}.json", {"summary": summary, "scores": scores})
    return summary


def _exists(path: Path) -> bool:
    return path.is_file()


def pending(
    ctx: StageContext,
    folder: Path,
    suffix: str,
    done: Callable[[Path], bool] = _exists,
    splits: list[str] | None = None,
) -> list[tuple[Any, int]]:
    """(dataset, index) of this process's images of ``splits`` (default: the map splits) whose
    output is not ``done``. An image listed in several splits (VOC train ⊂ train_aug) is handled once.
    """
    todo, seen = [], set()
    for split in ctx.map_splits if splits is None else splits:
        ds = ctx.dataset(split)
        for i in ctx.my_indices(len(ds)):
            name = ds.names[i]
            if name not in seen and not done(folder / f"{name}{suffix}"):
                todo.append((ds, i))
            seen.add(name)
    return todo


def all_written(
    ctx: StageContext,
    folder: Path,
    suffix: str,
    done: Callable[[Path], bool] = _exists,
    splits: list[str] | None = None,
) -> bool:
    """Whether every image of ``splits`` (default: every map split) has its output in ``folder``."""
    wanted = ctx.map_splits if splits is None else splits
    return all(done(folder / f"{n}{suffix}") for split in wanted for n in ctx.dataset(split).names)
