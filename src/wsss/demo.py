"""``wsss demo``: the embedded dataset through the BNR pipeline on CPU, with a short table.

It generates the procedural dataset inside the run directory (seeded, so every demo sees the
same images), runs the ``synth/bnr-nano`` recipe and prints the numbers a WSSS paper reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.pipeline import run_pipeline

DEMO_RECIPE = "synth/bnr-nano"
QUICK = {"num_train": 48, "num_val": 16}
QUICK_OVERRIDES = ["classifier.epochs=1", "classifier.batch_size=8", "cams.scales=[64.0, 96.0]"]


def _fmt(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "-"


def summary_rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, where, mIoU %) rows from a run record."""
    stages = record.get("stages", {})
    rows = []
    cams = stages.get("eval-cams", {}).get("metrics", {})
    for split, s in cams.get("splits", {}).items():
        rows.append(
            (f"CAM seeds, oracle threshold {s['oracle_threshold']:.2f}", split, _fmt(s["oracle_miou"]))
        )
        if s.get("miou_at_chosen") is not None:
            rows.append(
                (
                    f"CAM seeds, threshold {cams['chosen_threshold']:.2f} ({cams['chosen_from']})",
                    split,
                    _fmt(s["miou_at_chosen"]),
                )
            )
    for stage, what in (
        ("make-labels", "pseudo-labels (make-labels)"),
        ("random-walk", "pseudo-masks (random walk)"),
    ):
        m = stages.get(stage, {}).get("metrics", {})
        if "miou" in m:
            rows.append((what, m["evaluated_on"], _fmt(m["miou"])))
    return rows


def run_demo(
    out: str | Path = "runs/demo",
    device: str = "auto",
    quick: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    out = Path(out)
    t0 = time.time()
    sizes = QUICK if quick else {}
    data_root = out / "data"
    generate_synth(data_root, seed=0, **sizes)
    recipe = load_recipe(
        DEMO_RECIPE,
        [f"data.root={data_root}", *(QUICK_OVERRIDES if quick else []), *(overrides or [])],
    )
    record = run_pipeline(recipe, out, device=device)
    rows = summary_rows(record)
    width = max([len(r[0]) for r in rows] + [10])
    print(f"\nwsss demo ({recipe.name}) finished in {time.time() - t0:.0f} s; run directory: {out}")
    print(f"{'result':{width}s}  {'split':6s}  mIoU %")
    for what, split, value in rows:
        print(f"{what:{width}s}  {split:6s}  {value:>6s}")
    return record
