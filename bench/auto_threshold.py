"""The GT-free automatic seed threshold (Otsu on the CAM values) against the oracle and the recipe's.

Reads finished run directories (e.g. those of ``bench/recipe_table.py``) and scores the seeds of each
run's seed-evaluation split three ways: the oracle (the sweep's best on that split's ground truth),
the recipe's own choice (``evaluate.fixed_threshold``, else the same oracle), and
``evaluate.threshold: auto`` (Otsu's threshold of the CAM values, no ground truth). Prints a
table; no training. The sweep covers 0-0.95, so the oracle is never cut off by a recipe's range.

    python bench/auto_threshold.py runs/recipe-table/synth-bnr-nano-s* runs/recipe-table/coco128-cam-mobilenet-s*
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wsss.config import load_recipe
from wsss.eval.cam_stats import at_threshold, cam_value_stats, gt_foreground_share, otsu_threshold
from wsss.eval.runner import evaluate_cam_dir
from wsss.stages.context import build_dataset


def score(run_dir: Path) -> dict[str, float | str | None]:
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    split = recipe.data.seed_eval_split
    ds = build_dataset(recipe.data, split, with_masks=True)
    mask_dir = ds.mask_path(0).parent
    stats = cam_value_stats(run_dir / "cams", ds.names, ds.class_names)
    auto = otsu_threshold(stats["pixel_max_histogram"])
    sweep = np.round(np.arange(0.0, 0.96, 0.01), 6)  # the whole range, so the oracle is never cut off
    res = evaluate_cam_dir(
        run_dir / "cams",
        mask_dir,
        ds.names,
        ds.num_classes,
        sweep,
        fixed_threshold=auto,
        class_names=ds.class_names,
        mean=recipe.evaluate.mean,
        progress=False,
    )
    curve = dict(zip(np.round(res["sweep"]["thresholds"], 2), res["sweep"]["miou"]))
    fixed = recipe.evaluate.fixed_threshold
    return {
        "run": run_dir.name,
        "oracle": res["oracle"]["miou"],
        "oracle_t": res["oracle"]["threshold"],
        "recipe": curve.get(round(fixed, 2)) if fixed is not None else res["oracle"]["miou"],
        "recipe_t": fixed,
        "auto": res["fixed"]["miou"],
        "auto_t": auto,
        "auto_share": at_threshold(stats, auto)["foreground_share"],
        "gt_share": gt_foreground_share(res["oracle"]["per_class"]),  # the sweep read the masks
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="finished run directories (with cams/ and recipe.yaml)"
    )
    args = ap.parse_args()
    print(
        "| run | oracle (thr.) | recipe's threshold | auto, Otsu (thr.) | "
        "foreground share at auto / in the masks |"
    )
    print("|---|---|---|---|---|")
    for run_dir in args.runs:
        r = score(run_dir)
        recipe_cell = f"{100 * r['recipe']:.1f}" + (
            f" ({r['recipe_t']:.2f})" if r["recipe_t"] is not None else " (oracle)"
        )
        print(
            f"| {r['run']} | {100 * r['oracle']:.1f} ({r['oracle_t']:.2f}) | {recipe_cell} | "
            f"{100 * r['auto']:.1f} ({r['auto_t']:.2f}) | {100 * r['auto_share']:.0f} % / {100 * r['gt_share']:.0f} % |"
        )


if __name__ == "__main__":
    main()
