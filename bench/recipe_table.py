"""The README's recipe table: each CPU recipe run end to end over 3 seeds, mean ± std of every step.

Every (recipe, seed) is one `wsss run RECIPE --set seed=S` in its own run directory under
``--out``; a finished run is skipped (the pipeline skips finished stages), so an interrupted table
resumes. The numbers come from each run's ``run.json``; the all-background baseline (every pixel
background) is computed from the same masks and printed beside them, so a step below it shows.

    python bench/recipe_table.py                               # default recipes, seeds 0 1 2
    python bench/recipe_table.py --recipes synth/bnr-nano --seeds 0 1 2 --out runs/table
    python bench/recipe_table.py --recipes "synth/bnr-pmm@labels.mode_args={alpha: 11.0}"   # a variant

A recipe may carry overrides after ``@`` (``;``-separated ``key=value``), as ``--set`` takes them.

Recipes that train the same classifier and make the same CAMs (equal ``data``, ``classifier``,
``cams`` and ``seed``, e.g. ``synth/bnr-nano`` and ``synth/bnr-pmm``) share them: the later run
starts from a copy of the earlier one's ``train-cls/`` and ``cams/``, so its numbers differ only
by what comes after (paired comparison, and half the CPU time).

Runs one process at a time with OMP_NUM_THREADS=2 (two processes on 2 cores slow each other
down far more than twofold). Expect about 5 minutes per synth run and 11 per coco128 run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RECIPES = [
    "synth/bnr-nano",
    "synth/transcam-nano",
    "synth/bnr-pmm",
    "synth/bnr-pmm@labels.mode_args={alpha: 11.0}",
    "synth/pmm-nano@labels.mode_args={alpha: 11.0}",
    "synth/pmm-nano",
    "synth/irn-nano",
    "synth/amr-nano",
    "synth/spu-nano",
    "coco128/cam-mobilenet",
    "coco128/ppg-mobilenet",
    "coco128/spu-mobilenet",
    "synth/unia-tiny",
]
# the segmentation settings of these recipes trained on ground truth: the fully supervised upper bound
UPPER_BOUND = "synth/bnr-nano"
GT_OVERRIDES = ["segmentation.labels=gt", "stages=[train-seg,predict]"]
# single-stage recipes segment with their own network: their fully supervised reference is that network
# trained on the masks (every pseudo label replaced by ground truth), run with these overrides
OWN_REFERENCES = {
    "synth/unia-tiny": ["classifier.method_args.supervision=full", "stages=[train-cls,predict]"],
}
SYNTH_ROOT = "data/synth"

# (column, stage in run.json, how to read the number from that stage's metrics)
COLUMNS: list[tuple[str, str, tuple[str, ...]]] = [
    ("seeds, train, oracle", "eval-cams", ("splits", "train", "oracle_miou")),
    # only where the recipe fixes the threshold (evaluate.fixed_threshold); otherwise it is the oracle
    ("seeds, train, recipe's fixed thr.", "eval-cams", ("splits", "train", "miou_at_chosen")),
    ("seeds, val, thr. from train", "eval-cams", ("splits", "val", "miou_at_chosen")),
    ("pseudo-labels, train", "make-labels", ("miou",)),
    # SPU: the UNS network's maps as seeds, and their labels (what the affinity net then reads)
    ("UNS seeds, train, oracle", "make-uns-cams", ("seeds", "splits", "train", "oracle_miou")),
    ("UNS labels, train", "make-uns-cams", ("labels", "miou")),
    ("random walk, train", "random-walk", ("miou",)),
    ("segmentation, val", "predict", ("val", "miou")),
    ("cyclic round, val", "cycle-seg", ("val", "miou")),
]


def _dig(tree: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, (int, float)) else None


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``recipe@k=v;k2=v2`` → (recipe, [overrides])."""
    recipe, _, rest = spec.partition("@")
    return recipe, [item.strip() for item in rest.split(";") if item.strip()]


def run_dir_of(out: Path, spec: str, seed: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in spec.replace("/", "-"))
    return out / f"{safe}-s{seed}"


SHARED_SECTIONS = ("data", "classifier", "cams")
SHARED_DIRS = ("train-cls", "cams")


def _cam_key(spec: str, seed: int) -> str:
    """What decides a run's classifier and CAMs: equal keys give identical train-cls/ and cams/."""
    from wsss.config import load_recipe, to_dict

    recipe, overrides = split_spec(spec)
    tree = to_dict(load_recipe(recipe, [*overrides, f"seed={seed}"]))
    return json.dumps({k: tree[k] for k in (*SHARED_SECTIONS, "seed")}, sort_keys=True)


def share_cams(run_dir: Path, donors: dict[str, Path], key: str) -> None:
    """Start ``run_dir`` from a finished run with the same classifier and CAMs, when there is one."""
    donor = donors.get(key)
    if donor is None or (run_dir / "recipe.yaml").is_file():
        donors.setdefault(key, run_dir)
        return
    for name in SHARED_DIRS:
        if (donor / name).is_dir():
            shutil.copytree(donor / name, run_dir / name, dirs_exist_ok=True)
    print(f"  {run_dir.name}: train-cls/ and cams/ shared from {donor.name}", file=sys.stderr, flush=True)


def run_one(
    spec: str,
    seed: int,
    out: Path,
    env: dict[str, str],
    overrides: list[str] | None = None,
    tag: str = "",
    run: bool = True,
) -> dict:
    """Run (or finish) one recipe (with its ``@`` overrides) at one seed; return its run.json.

    ``run=False`` only reads the run.json of an earlier run (``--no-run``)."""
    run_dir = run_dir_of(out, spec + tag, seed)
    if not run:
        return json.loads((run_dir / "run.json").read_text())
    recipe, own = split_spec(spec)
    cmd = [sys.executable, "-m", "wsss", "run", recipe, "--out", str(run_dir), "--set", f"seed={seed}"]
    for item in [*own, *(overrides or [])]:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    print(f"  {recipe} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads((run_dir / "run.json").read_text())


def all_background_miou(run_dir: Path, split: str) -> float | None:
    """mIoU of predicting background everywhere on ``split`` (the run's dataset and mean convention).

    The trivial baseline a result must beat; None when the split has no masks.
    """
    import numpy as np

    from wsss.config import load_recipe
    from wsss.eval.confusion import ConfusionMatrix
    from wsss.eval.metrics import scores
    from wsss.stages.context import build_dataset

    recipe = load_recipe(run_dir / "recipe.yaml")
    ds = build_dataset(recipe.data, split)
    if not ds.has_masks:
        return None
    matrix = ConfusionMatrix(ds.num_classes)
    for i in range(len(ds)):
        gt = ds.read_mask(i)
        matrix.update(np.zeros_like(gt), gt)
    return scores(matrix.matrix, ds.class_names, recipe.evaluate.mean)["miou"]


def baseline_of(record: dict, run_dir: Path, split: str) -> float | None:
    """The all-background mIoU of ``split`` as the run recorded it (every scored stage does now),
    else computed from the masks (runs made before the stages recorded it)."""
    from wsss.report.results import collect_results

    for result in collect_results(record):
        if result.split == split and result.baseline is not None:
            return result.baseline
    return all_background_miou(run_dir, split)


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def _mean_cell(values: list[float | None]) -> str:
    """Mean of the seeds' IoUs in %, skipping seeds where the class has neither GT nor prediction."""
    present = [v for v in values if v is not None]
    return f"{100 * statistics.mean(present):.1f}" if present else "—"


FIXED_COLUMN = COLUMNS[1][0]
# (name in the ratio lines, column of COLUMNS) of the weakly supervised segmentation results
WEAK_COLUMNS = (("segmentation", "segmentation, val"), ("cyclic round", "cyclic round, val"))


def _threshold_is_fixed(record: dict) -> bool:
    """Whether the run's seed threshold was fixed by the recipe (GT-free), not chosen on its own GT."""
    metrics = record["stages"].get("eval-cams", {}).get("metrics") or {}
    return metrics.get("chosen_from") == "evaluate.fixed_threshold"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/recipe-table"))
    ap.add_argument("--no-run", action="store_true", help="only tabulate finished runs (no wsss run)")
    ap.add_argument(
        "--per-class", action="store_true", help="also per-class pseudo-label IoU (mean over seeds)"
    )
    ap.add_argument(
        "--upper-bound",
        default=UPPER_BOUND,
        help="recipe whose segmentation is also trained on GT ('' = none)",
    )
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if any(r.startswith("synth/") for r in args.recipes) and not (Path(SYNTH_ROOT) / "classes.txt").is_file():
        subprocess.run(
            [sys.executable, "-m", "wsss", "data", "synth", "--root", SYNTH_ROOT], check=True, env=env
        )
    rows = []
    per_class: dict[str, dict[str, list[float]]] = {}
    ratios: dict[str, dict[str, list[float]]] = {}
    donors: dict[str, Path] = {}
    for recipe in args.recipes:
        records = []
        for seed in args.seeds:
            if not args.no_run:
                share_cams(run_dir_of(args.out, recipe, seed), donors, _cam_key(recipe, seed))
            records.append(run_one(recipe, seed, args.out, env, run=not args.no_run))
        column_vals: dict[str, list[float]] = {}
        for column, stage, path in COLUMNS:
            column_vals[column] = [
                v
                for r in records
                if (v := _dig(r["stages"].get(stage, {}).get("metrics", {}), path)) is not None
                and (column != FIXED_COLUMN or _threshold_is_fixed(r))
            ]
        cells = [fmt(vals) for vals in column_vals.values()]
        thresholds = [
            _dig(r["stages"].get("eval-cams", {}).get("metrics", {}), ("chosen_threshold",)) for r in records
        ]
        cells.append(", ".join(f"{t:.2f}" for t in thresholds if t is not None) or "—")
        # the weakly supervised segmentation columns, for the weak / full ratios
        ratios[recipe] = {name: column_vals[column] for name, column in WEAK_COLUMNS if column_vals[column]}
        for r in records:
            ious = r["stages"].get("make-labels", {}).get("metrics", {}).get("per_class_iou", {})
            for cls, v in ious.items():
                per_class.setdefault(recipe, {}).setdefault(cls, []).append(v)
        first = run_dir_of(args.out, recipe, args.seeds[0])
        rec = records[0]["config"]["data"]
        base = [
            baseline_of(records[0], first, rec["seed_eval_split"]),
            baseline_of(records[0], first, rec["val_split"]),
        ]
        cells.append(" / ".join("—" if b is None else f"{100 * b:.1f}" for b in base))
        rows.append((recipe, cells))
    own_ratios: list[str] = []
    for recipe in args.recipes:
        if recipe not in OWN_REFERENCES or "segmentation" not in ratios.get(recipe, {}):
            continue
        refs = [
            _dig(
                run_one(recipe, seed, args.out, env, OWN_REFERENCES[recipe], tag="-gt", run=not args.no_run)[
                    "stages"
                ]["predict"]["metrics"],
                ("val", "miou"),
            )
            for seed in args.seeds
        ]
        weak = statistics.mean(ratios[recipe]["segmentation"])
        own_ratios.append(
            f"  {recipe}: the same network trained on ground truth, val {fmt(refs)}; weak / full "
            f"{weak / statistics.mean(refs):.2f}"
        )
    upper: list[float] = []
    if args.upper_bound:
        for seed in args.seeds:
            rec = run_one(args.upper_bound, seed, args.out, env, GT_OVERRIDES, tag="-gt", run=not args.no_run)
            upper.append(_dig(rec["stages"]["predict"]["metrics"], ("val", "miou")))
    print(f"mIoU %, mean ± std over seeds {', '.join(map(str, args.seeds))} (run directories in {args.out})")
    header = [
        "recipe",
        *[c[0] for c in COLUMNS],
        "seed threshold (train oracle, or fixed)",
        "all-background train / val",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for recipe, cells in rows:
        print(f"| `{recipe}` | " + " | ".join(cells) + " |")
    if args.per_class and per_class:
        # one table per class list (the synthetic and the VOC-class recipes differ)
        groups: dict[tuple[str, ...], list[str]] = {}
        for recipe, table in per_class.items():
            groups.setdefault(tuple(table), []).append(recipe)
        for classes, recipes in groups.items():
            print("\npseudo-label IoU per class (make-labels, train), mean over seeds; — = class absent")
            print("| recipe | " + " | ".join(classes) + " |")
            print("|" + "---|" * (len(classes) + 1))
            for recipe in recipes:
                print(
                    f"| `{recipe}` | " + " | ".join(_mean_cell(per_class[recipe][c]) for c in classes) + " |"
                )
    if upper:
        mean_upper = statistics.mean(upper)
        print(
            f"\nfully supervised upper bound ({args.upper_bound}'s segmentation trained on ground truth), "
            f"val: {fmt(upper)}; weak / full ratio (mean weak mIoU / mean upper bound):"
        )
        for recipe, columns in ratios.items():
            if columns and recipe not in OWN_REFERENCES:
                cells = [f"{c} {statistics.mean(v) / mean_upper:.2f}" for c, v in columns.items()]
                print(f"  {recipe}: " + ", ".join(cells))
    if own_ratios:
        print("\nsingle-stage recipes against their own fully supervised network (mean weak / mean full):")
        print("\n".join(own_ratios))


if __name__ == "__main__":
    main()
