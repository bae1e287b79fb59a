"""Stage ``eval-cams``: score the CAM seeds against ground truth with a one-pass threshold sweep.

On the recipe's seed-evaluation split the best threshold is the *oracle* (chosen on that split's
own ground truth, as papers report). A GT-free number is also given: the threshold picked on
the seed-evaluation split (or ``evaluate.fixed_threshold``) applied to every other CAM split.
A split that cannot be scored (no ground truth, e.g. a user's folder of tagged images; missing CAM
files) is listed under ``not_scored`` with the reason, so the record says why no number is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsss.cams.files import is_complete as cam_file_complete
from wsss.errors import ConfigError
from wsss.eval.cam_stats import at_threshold, cam_value_stats, gt_foreground_share, otsu_threshold
from wsss.eval.plot import plot_threshold_curve
from wsss.eval.runner import evaluate_cam_dir
from wsss.files import write_json
from wsss.stages.context import StageContext

NAME = "eval-cams"
MAIN_ONLY = True  # reads every CAM file once; no sharding needed


def _thresholds(ctx: StageContext) -> np.ndarray:
    start, stop, step = ctx.recipe.evaluate.thresholds
    return np.round(np.arange(start, stop - 1e-9, step), 6)


def edge_warning(split: str, thresholds: list[float], mious: list[float | None]) -> str | None:
    """A warning when the sweep's best mIoU is reached only at its first or last threshold: the
    optimum may lie outside the sweep (widen ``evaluate.thresholds``), or, at 0, the maps do not
    separate objects at all. A best value that an inner threshold also reaches is not on the edge."""
    scored = [(t, v) for t, v in zip(thresholds, mious, strict=True) if v is not None]
    if len(scored) < 3:
        return None
    best = max(v for _, v in scored)
    at_best = [t for t, v in scored if v >= best - 1e-12]
    inner = [t for t, _ in scored[1:-1]]
    if any(t in inner for t in at_best):
        return None
    oracle = at_best[0]
    if oracle <= scored[0][0] and scored[0][0] <= 0:
        return (
            f"the best threshold on {split} is {oracle:.2f}, the lowest of the sweep: calling every "
            "activated pixel an object beats any cut, so these maps do not separate objects from "
            "background; check the classifier (held-out mAP) and the maps before using their labels"
        )
    return (
        f"the best threshold on {split} is {oracle:.2f}, at the end of the sweep "
        f"({scored[0][0]:.2f}–{scored[-1][0]:.2f}): the optimum may lie outside it; widen "
        "evaluate.thresholds"
    )


def is_complete(ctx: StageContext) -> bool:
    return (ctx.paths.eval_dir / "cams.json").is_file()


def run(ctx: StageContext) -> dict[str, Any]:
    return evaluate_cams(ctx, ctx.paths.cam_dir, "cams")


def evaluate_cams(ctx: StageContext, folder: Path, out_name: str) -> dict[str, Any]:
    """Score and describe the CAM files in ``folder`` (the threshold sweep on every split with
    masks, the GT-free threshold, the value statistics); written to ``eval/<out_name>.json``. Any
    stage that makes CAMs (``make-uns-cams`` too) records its seeds with this one function."""
    r = ctx.recipe
    thresholds = _thresholds(ctx)
    results: dict[str, Any] = {}
    not_scored: dict[str, str] = {}
    chosen = r.evaluate.fixed_threshold
    chosen_from = "evaluate.fixed_threshold" if chosen is not None else None
    values = _cam_values(ctx, folder)
    if r.evaluate.threshold == "auto":
        if chosen is not None:
            raise ConfigError(
                "evaluate.threshold: auto chooses the threshold itself: remove evaluate.fixed_threshold "
                f"({chosen}) or set evaluate.threshold: fixed"
            )
        if values is not None:
            chosen = otsu_threshold(values["pixel_max_histogram"])
            chosen_from = f"auto: Otsu on {r.data.seed_eval_split}'s CAM values, no ground truth"
    for split in dict.fromkeys([r.data.seed_eval_split, *ctx.map_splits]):
        ds = ctx.gt_dataset(split)
        if ds is None:
            not_scored[split] = "no ground-truth masks"
            continue
        missing = [n for n in ds.names if not cam_file_complete(folder / f"{n}.npz")]
        if missing:
            ctx.logger.info(
                "%s: %d images of split %s have no CAM file (e.g. %s); not scored",
                NAME,
                len(missing),
                split,
                missing[0],
            )
            not_scored[split] = f"{len(missing)} images have no CAM file"
            continue
        res = evaluate_cam_dir(
            folder,
            ds.mask_path(0).parent,
            ds.names,
            ds.num_classes,
            thresholds,
            class_names=ds.class_names,
            fixed_threshold=chosen,
            mean=r.evaluate.mean,
            progress=ctx.show_progress,
        )
        sweep = res["sweep"]
        if sweep["best"] is None:
            not_scored[split] = "the threshold sweep found no scorable pixels"
            continue
        if chosen is None:  # GT-free threshold for every other split: this split's best
            chosen = float(sweep["best"]["threshold"])
            chosen_from = f"best on {split}"
            res["fixed"] = res["oracle"]
        plot_threshold_curve(
            sweep["thresholds"],
            sweep["miou"],
            ctx.paths.eval_dir / f"threshold_curve_{split}.png"
            if out_name == "cams"
            else ctx.paths.eval_dir / f"threshold_curve_{out_name}_{split}.png",
            best=(sweep["best"]["threshold"], sweep["best"]["miou"]),
            fixed=(chosen, res["fixed"]["miou"]) if res["fixed"] else None,
            title=f"CAM seed mIoU vs background threshold ({split})",
        )
        results[split] = res
    if values is not None:
        seed_split = results.get(r.data.seed_eval_split)
        if seed_split is not None:  # the sweep read the masks already
            values["gt_foreground_share"] = gt_foreground_share(seed_split["oracle"]["per_class"])
        values = at_threshold(values, chosen)
        for warning in values["warnings"]:
            ctx.logger.warning("%s (%s): %s", NAME, r.data.seed_eval_split, warning)
    edge = [
        edge_warning(split, res["sweep"]["thresholds"], res["sweep"]["miou"])
        for split, res in results.items()
    ]
    edge = [w for w in edge if w]
    for warning in edge:
        ctx.logger.warning("%s: %s", NAME, warning)
    summary = {
        "chosen_threshold": chosen,
        "chosen_from": chosen_from,
        "splits": {
            s: {
                "oracle_miou": res["oracle"]["miou"],
                "oracle_threshold": res["oracle"]["threshold"],
                "label": res["oracle"]["label"],
                "miou_at_chosen": res["fixed"]["miou"] if res["fixed"] else None,
                "all_background_miou": res["oracle"]["all_background_miou"],
                "per_class_iou_at_chosen": (
                    {c["name"]: c["iou"] for c in res["fixed"]["per_class"]} if res["fixed"] else None
                ),
                "oracle_mean_dice": res["oracle"]["mean_dice"],
                "mean_dice_at_chosen": res["fixed"]["mean_dice"] if res["fixed"] else None,
                "per_class_dice_at_chosen": res["fixed"]["per_class_dice"] if res["fixed"] else None,
            }
            for s, res in results.items()
        },
        "not_scored": not_scored,
        "cam_values": values,
        "warnings": [*(values["warnings"] if values else []), *edge],
    }
    write_json(ctx.paths.eval_dir / f"{out_name}.json", {"summary": summary, "details": results})
    return summary


def _cam_values(ctx: StageContext, folder: Path) -> dict[str, Any] | None:
    """CAM value statistics of the seed-evaluation split (no ground truth needed; the masks' object
    share is added from the sweep); None while some of its CAM files are missing."""
    ds = ctx.dataset(ctx.recipe.data.seed_eval_split)
    if not all(cam_file_complete(folder / f"{n}.npz") for n in ds.names):
        return None
    return cam_value_stats(folder, ds.names, ds.class_names)
