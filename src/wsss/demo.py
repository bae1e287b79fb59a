"""``wsss demo``: the embedded dataset through the whole BNR pipeline on CPU, with a short table.

It generates the procedural dataset inside the run directory (seeded, so every demo sees the
same images), runs the ``synth/demo`` recipe (nano Conformer with BNR -> CAMs -> labels + CRF ->
MobileNetV2 DeepLab -> prediction, scored at every step), optionally trains the same segmentation
model on ground truth for the fully supervised upper bound, prints the numbers a WSSS paper
reports and writes ``report.html``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from wsss.config import Recipe, load_recipe
from wsss.data.synth import generate_synth
from wsss.engine import setup_run_logging
from wsss.files import write_json
from wsss.pipeline import run_pipeline
from wsss.report import REPORT_NAME, summary_lines, write_report
from wsss.stages.context import progress_wanted
from wsss.threads import wait_policy

DEMO_RECIPE = "synth/demo"
UPPER_BOUND_DIR = "upper-bound"  # inside the demo's run directory
QUICK = {"num_train": 48, "num_val": 16}
QUICK_OVERRIDES = [
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "cams.scales=[64.0, 96.0]",
    "segmentation.epochs=1",
    "segmentation.batch_size=8",
    "predict.scales=[1.0]",
]


def run_upper_bound(
    out: Path, overrides: list[str], device: str, progress: bool | None = None
) -> dict[str, Any]:
    """The same segmentation model and schedule trained on ground-truth masks (its own run dir)."""
    recipe = load_recipe(DEMO_RECIPE, [*overrides, "segmentation.labels=gt", "stages=[train-seg, predict]"])
    record = run_pipeline(recipe, out / UPPER_BOUND_DIR, device=device, progress=progress)
    stages = record["stages"]
    return {
        "seconds": round(sum(stages[s]["seconds"] for s in ("train-seg", "predict") if s in stages), 1),
        "metrics": stages.get("predict", {}).get("metrics", {}),
        "run_dir": UPPER_BOUND_DIR,
    }


def thread_use(recipe: Recipe) -> str:
    """The CPU the demo will take and how to change it: on a shared machine people need to know
    before minutes of every core are gone."""
    omp = os.environ.get("OMP_NUM_THREADS")
    return (
        f"wsss demo uses torch threads: {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={omp if omp is not None else 'unset'}; set OMP_NUM_THREADS=N to change), "
        f"waiting OpenMP threads: {wait_policy()} (set GOMP_SPINCOUNT or OMP_WAIT_POLICY to change); "
        f"DataLoader workers: classifier {recipe.classifier.num_workers}, "
        f"segmentation {recipe.segmentation.num_workers}; CRF processes: {recipe.labels.workers} "
        "(--set classifier.num_workers=N, segmentation.num_workers=N, labels.workers=N to change)"
    )


def run_demo(
    out: str | Path = "runs/demo",
    device: str = "auto",
    quick: bool = False,
    overrides: list[str] | None = None,
    with_upper_bound: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Generate the data, run the demo recipe (and the upper bound), print the table; the run record.
    ``progress``: progress bars on / off; None shows them only when stderr is a terminal."""
    out = Path(out)
    t0 = time.time()
    data_root = out / "data"
    all_overrides = [
        f"data.root={data_root.resolve()}",
        *(QUICK_OVERRIDES if quick else []),
        *(overrides or []),
    ]
    recipe = load_recipe(DEMO_RECIPE, all_overrides)
    setup_run_logging(out, "pipeline").info(thread_use(recipe))  # the run's log keeps it too
    generate_synth(data_root, seed=0, progress=progress_wanted(progress), **(QUICK if quick else {}))
    record = run_pipeline(recipe, out, device=device, progress=progress)
    if with_upper_bound:
        record["stages"]["upper-bound"] = run_upper_bound(out, all_overrides, device, progress)
        write_json(out / "run.json", record)
        write_report(out)
    print(f"\nwsss demo ({recipe.name}) finished in {time.time() - t0:.0f} s; run directory: {out}")
    for line in summary_lines(record):
        print(line)
    print(f"report: {out / REPORT_NAME}")
    return record
