"""What a new user found wrong on the report page (issue 17): a header that repeated the recipe's
promise instead of the measured time and data, column headers that repeated their labels, an
internal file name as a column, threshold-curve notes over each other and the frame, loss plots
too small to read, and "No curves yet." on a finished run whose training was shorter than
``log_every`` steps."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.transforms import Bbox
from PIL import Image

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.pipeline import run_pipeline
from wsss.report import render_report
from wsss.report.curves import epoch_losses, threshold_figure
from wsss.report.html import duration

SWEEP = {"thresholds": [0.0, 0.1, 0.2, 0.3, 0.4], "miou": [0.30, 0.41, 0.45, 0.44, 0.40]}
ORACLE = {"threshold": 0.0, "miou": 0.30}  # at the corner of the plot, where the notes went out of the frame


def _add_eval_cams(run: Path) -> None:
    """The record and eval/cams.json of an eval-cams stage: threshold 0.20 chosen on train."""
    record = json.loads((run / "run.json").read_text())
    splits = {
        s: {
            "oracle_miou": 0.45,
            "oracle_threshold": 0.2,
            "miou_at_chosen": m,
            "per_class_iou_at_chosen": {"cat": m},
        }
        for s, m in (("train", 0.45), ("val", 0.42))
    }
    metrics = {"chosen_threshold": 0.2, "chosen_from": "best on train", "splits": splits}
    record["stages"] = {"eval-cams": {"seconds": 0.5, "metrics": metrics}, **record["stages"]}
    (run / "run.json").write_text(json.dumps(record))
    point = {
        "threshold": 0.2,
        "miou": 0.45,
        "per_class": [{"name": "cat", "iou": 0.4, "precision": 0.5, "recall": 0.8}],
    }
    details = {s: {"sweep": SWEEP, "oracle": point, "fixed": point} for s in ("train", "val")}
    (run / "eval" / "cams.json").write_text(json.dumps({"summary": metrics, "details": details}))


def _header_cells(page: str) -> list[str]:
    return re.findall(r"<th[^>]*>(.*?)</th>", page, re.S)


def test_header_shows_the_measured_time_and_the_data_not_the_description(run_dir: Path) -> None:
    page = render_report(run_dir)
    meta = re.search(r'<p class="meta">(.*?)</p>', page, re.S).group(1)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    assert recipe.description not in page  # "… CPU in minutes", inherited from synth/bnr-nano
    assert f"data: folder dataset at {recipe.data.root} (" in meta
    assert "took 3.5 s (the stages' measured times added up) on cpu" in meta  # 1.5 + 2.0
    assert [duration(s) for s in (8.14, 42.4, 245, 7384)] == ["8.1 s", "42 s", "4 min 05 s", "2 h 03 min"]


def test_column_headers_name_each_output_once_over_its_splits(run_dir: Path) -> None:
    _add_eval_cams(run_dir)
    page = render_report(run_dir, n_sample=1, n_extreme=0)
    per_class = re.search(r'<table id="per-class">(.*?)</table>', page, re.S).group(1)
    heads = _header_cells(per_class)
    assert heads[:4] == [
        "class",
        "CAM seeds, threshold 0.20 (best on train)",
        "pseudo-labels (make-labels)",
        "segmentation prediction",
    ]
    assert heads[4:] == ["train", "val", "val", "val"]
    assert '<th colspan="2">CAM seeds, threshold 0.20 (best on train)</th>' in per_class
    # no header cell repeats a label: "… (best on train) (train)" was the old way
    assert not [h for h in _header_cells(page) if re.search(r"\)\s*(<br>)?\s*\(", h)]
    stages = re.search(r'<table id="stages">(.*?)</table>', page, re.S).group(1)
    assert "CAM seeds, threshold 0.20 (best on train): train <b>45.0</b>, val <b>42.0</b>" in stages


def test_no_internal_file_names_on_the_page(run_dir: Path) -> None:
    _add_eval_cams(run_dir)
    page = render_report(run_dir, n_sample=1, n_extreme=0)
    pr = re.search(r'<table id="precision-recall">(.*?)</table>', page, re.S).group(1)
    assert _header_cells(pr)[:3] == [
        "class",
        "CAM seeds, threshold 0.20 (best on train)",
        "segmentation prediction",
    ]
    assert '<td class="l">cat</td><td>50.0 / 80.0</td><td>50.0 / 80.0</td><td>90.0 / 60.0</td>' in pr
    visible = re.sub(r"<[^>]+>", " ", page)  # text only: alt texts and data URIs left out
    for internal in ("seg_val", "eval/*.json", "cams.json", "labels.json"):
        assert internal not in visible, internal


def _extent(artist, renderer) -> Bbox:
    return artist.get_window_extent(renderer)


def test_threshold_curve_labels_overlap_neither_each_other_nor_the_frame() -> None:
    fig = threshold_figure("train", SWEEP, ORACLE, dict(ORACLE), "best on train")  # both at one point
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[1:] == [
        "oracle: threshold 0.00 (best on train's ground truth), 30.0",
        "fixed: threshold 0.00 (best on train), 30.0",
    ]
    boxes = [_extent(t, renderer) for t in legend.get_texts()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    frame = _extent(ax, renderer)
    xaxis = ax.xaxis.get_tightbbox(renderer)  # tick labels and "background threshold"
    assert not _extent(legend, renderer).overlaps(frame) and not _extent(legend, renderer).overlaps(xaxis)
    # the markers sit inside the frame, not on it
    x0, y0 = ax.transData.transform((0.0, 30.0))
    assert frame.x0 + 5 < x0 and frame.y0 + 5 < y0


def _pictures(page: str, alt: str) -> list[Image.Image]:
    found = re.findall(rf'<img alt="{alt}" src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


def test_curves_are_drawn_at_a_readable_size(run_dir: Path) -> None:
    _add_eval_cams(run_dir)
    page = render_report(run_dir, n_sample=1, n_extreme=0)
    (loss,) = _pictures(page, "train-seg training loss")
    curves = _pictures(page, "threshold_curve_train") + _pictures(page, "threshold_curve_val")
    # 4x2.8 inches at 90 dpi, one panel per stage side by side, shown 420 pixels wide before
    assert loss.width >= 550 and loss.height >= 370 and len(curves) == 2
    assert all(c.width >= 550 for c in curves)
    assert "max-width:420px" not in page and ".curves img{max-width:100%" in page


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with a training stage of 2 epochs x 2 steps: fewer than log_every (20)."""
    tmp = tmp_path_factory.mktemp("tiny")
    generate_synth(tmp / "data", num_train=8, num_val=2, size=48, seed=1, progress=False)
    overrides = [
        f"data.root={tmp / 'data'}",
        "stages=[train-cls]",
        "classifier.epochs=2",
        "classifier.batch_size=4",
        "classifier.num_workers=0",
        "classifier.resize_long=[40, 56]",
        "classifier.crop_size=48",
    ]
    run_pipeline(load_recipe("synth/bnr-nano", overrides), tmp / "run", device="cpu")
    return tmp / "run"


def test_a_finished_short_run_shows_its_loss_curve(tiny_run: Path) -> None:
    assert not (tiny_run / "metrics.jsonl").exists()  # no step reached log_every
    record = json.loads((tiny_run / "run.json").read_text())
    final = record["stages"]["train-cls"]["metrics"]["final_losses"]
    per_epoch = epoch_losses(tiny_run / "logs" / "pipeline.log")
    assert sorted(per_epoch["train-cls"]) == [1, 2]
    assert per_epoch["train-cls"][2] == pytest.approx({k: round(v, 4) for k, v in final.items()}, abs=1e-9)
    page = (tiny_run / "report.html").read_text()
    assert "No curves" not in page
    (loss,) = _pictures(page, "train-cls training loss")
    assert loss.width >= 550
