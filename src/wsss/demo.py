"""``wsss demo``: the embedded dataset through the whole BNR pipeline on CPU, with a short table.

It generates the procedural dataset inside the run directory (seeded, so every demo sees the
same images), runs the ``synth/demo`` recipe (nano Conformer with BNR -> CAMs -> labels + CRF ->
MobileNetV2 DeepLab -> prediction, scored at every step), optionally trains the same segmentation
model on ground truth for the fully supervised upper bound, prints the numbers a WSSS paper
reports and writes ``report.html``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.files import write_json
from wsss.pipeline import run_pipeline
from wsss.report import REPORT_NAME, collect_results, format_results_table, write_report

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


def run_upper_bound(out: Path, overrides: list[str], device: str) -> dict[str, Any]:
    """The same segmentation model and schedule trained on ground-truth masks (its own run dir)."""
    recipe = load_recipe(DEMO_RECIPE, [*overrides, "segmentation.labels=gt", "stages=[train-seg, predict]"])
    record = run_pipeline(recipe, out / UPPER_BOUND_DIR, device=device)
    stages = record["stages"]
    return {
        "seconds": round(sum(stages[s]["seconds"] for s in ("train-seg", "predict") if s in stages), 1),
        "metrics": stages.get("predict", {}).get("metrics", {}),
        "run_dir": UPPER_BOUND_DIR,
    }


def run_demo(
    out: str | Path = "runs/demo",
    device: str = "auto",
    quick: bool = False,
    overrides: list[str] | None = None,
    with_upper_bound: bool = False,
) -> dict[str, Any]:
    """Generate the data, run the demo recipe (and the upper bound), print the table; the run record."""
    out = Path(out)
    t0 = time.time()
    data_root = out / "data"
    generate_synth(data_root, seed=0, **(QUICK if quick else {}))
    all_overrides = [
        f"data.root={data_root.resolve()}",
        *(QUICK_OVERRIDES if quick else []),
        *(overrides or []),
    ]
    recipe = load_recipe(DEMO_RECIPE, all_overrides)
    record = run_pipeline(recipe, out, device=device)
    if with_upper_bound:
        record["stages"]["upper-bound"] = run_upper_bound(out, all_overrides, device)
        write_json(out / "run.json", record)
        write_report(out)
    print(f"\nwsss demo ({recipe.name}) finished in {time.time() - t0:.0f} s; run directory: {out}")
    print(format_results_table(collect_results(record)))
    print(f"report: {out / REPORT_NAME}")
    return record
