"""The report: per-image scores, ranking, the results table and the self-contained page."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.report.conftest import make_run_dir
from wsss.cli import main
from wsss.errors import DataError
from wsss.report import collect_results, format_results_table, render_report, write_report
from wsss.report.gallery import colour_labels, per_image_miou


def test_per_image_miou_hand_computed() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 2, 2]], np.uint8)
    # row 3 is ignored. background: inter 3, union 4; class 1: inter 3, union 5 (the stray pixel
    # at (0, 1) counts); class 2, predicted only: 0 / 1
    assert per_image_miou(pred, gt) == pytest.approx((0.75 + 0.6 + 0.0) / 3)
    assert per_image_miou(gt, gt) == 1.0
    assert per_image_miou(pred, np.full_like(gt, 255)) is None  # nothing to score


def test_colour_labels_uses_the_voc_palette_and_white_for_ignore() -> None:
    rgb = colour_labels(np.array([[0, 1, 2, 255]], np.uint8))
    assert rgb.tolist() == [[[0, 0, 0], [128, 0, 0], [0, 128, 0], [255, 255, 255]]]


def test_collect_results_reads_every_scored_stage() -> None:
    record = {
        "stages": {
            "train-cls": {"seconds": 3.0, "metrics": {}},
            "eval-cams": {
                "seconds": 1.0,
                "metrics": {
                    "chosen_threshold": 0.4,
                    "chosen_from": "best on train",
                    "splits": {
                        "train": {"oracle_miou": 0.5, "oracle_threshold": 0.4, "miou_at_chosen": 0.5},
                        "val": {"oracle_miou": 0.45, "oracle_threshold": 0.35, "miou_at_chosen": 0.42},
                    },
                },
            },
            "make-labels": {
                "seconds": 1.0,
                "metrics": {"train": {"written": 3}, "miou": 0.6, "evaluated_on": "train"},
            },
            "predict": {
                "seconds": 1.0,
                "metrics": {"val": {"written": 2, "miou": 0.7, "evaluated_on": "val"}},
            },
            "upper-bound": {"seconds": 1.0, "metrics": {"val": {"miou": 0.9, "evaluated_on": "val"}}},
        }
    }
    got = [(r.stage, r.split, r.miou) for r in collect_results(record)]
    assert got == [
        ("eval-cams", "train", 0.5),
        ("eval-cams", "val", 0.42),
        ("make-labels", "train", 0.6),
        ("predict", "val", 0.7),
        ("upper-bound", "val", 0.9),
    ]
    table = format_results_table(collect_results(record))
    assert re.search(r"segmentation prediction\s+val\s+70\.0", table)
    assert re.search(r"upper bound.*val\s+90\.0", table)


def _images(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b)))
        for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def _grid_names(page: str, grid: str) -> list[str]:
    table = re.search(rf'<table class="grid" id="{grid}">(.*?)</table>', page, re.S)
    assert table, f"no {grid} grid"
    return re.findall(r'<td class="cap">(\w+)<br>', table.group(1))


def test_report_ranks_images_and_embeds_every_picture(run_dir: Path) -> None:
    page = render_report(run_dir, n_sample=4, n_extreme=4)
    assert _grid_names(page, "val-best") == ["b", "a"]  # both perfect (1.0)
    assert _grid_names(page, "val-worst") == ["d", "c"]  # 0.371 (all background), 0.676 (half the object)
    assert "prediction mIoU 37.1" in page and "prediction mIoU 67.6" in page
    assert _grid_names(page, "val-sample") == ["a", "b", "c", "d"]
    # the loss plot (this run has no threshold curve), then 5 pictures per row: 4 sample rows,
    # 2 best, 2 worst (k = min(4, 4 scored // 2) so that best and worst never share an image)
    pictures = _images(page)
    assert len(pictures) == 1 + 5 * (4 + 2 + 2)
    assert pictures[0].width > 200  # the loss curve
    gt_of_a = pictures[2].convert("RGB")
    assert gt_of_a.getpixel((16, 16)) == (128, 0, 0) and gt_of_a.getpixel((16, 0)) == (255, 255, 255)
    # per-class table: one column per scored output, the mIoU row from the record
    per_class = re.search(r'<table id="per-class">(.*?)</table>', page, re.S).group(1)
    assert re.search(r"<td class=\"l\">dog</td><td>–</td><td>37\.5</td>", per_class)
    assert re.search(r"<b>mIoU</b></td><td><b>50\.0</b></td><td><b>62\.5</b></td>", per_class)
    # precision / recall of each scored label folder; labels.json scored nothing and is left out
    pr = re.search(r'<table id="precision-recall">(.*?)</table>', page, re.S).group(1)
    assert '<th colspan="1">segmentation prediction</th>' in pr and "<th>val<br>precision / recall</th>" in pr
    assert "labels" not in pr and "seg_val" not in page  # people's names, not file names
    assert (
        '<td class="l">dog</td><td>100.0 / 37.5</td>' in pr
        and '<td class="l">cat</td><td>90.0 / 60.0</td>' in pr
    )
    assert "http://" not in page and "https://" not in page  # nothing fetched: readable offline


def test_report_without_ground_truth_shows_a_sample_only(run_dir: Path) -> None:
    for mask in (Path(load_root(run_dir)) / "masks").iterdir():
        mask.unlink()
    page = render_report(run_dir, n_sample=2)
    assert _grid_names(page, "val-sample") == ["a", "d"]
    assert 'id="val-best"' not in page and "has no ground truth" in page


def load_root(run_dir: Path) -> str:
    from wsss.config import load_recipe

    return load_recipe(str(run_dir / "recipe.yaml")).data.root


def test_report_command_writes_the_file(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--sample", "1", "--extremes", "1"]) == 0
    page = (run_dir / "report.html").read_text()
    assert str(run_dir / "report.html") in capsys.readouterr().out
    assert _grid_names(page, "val-best") == ["b"] and _grid_names(page, "val-worst") == ["d"]


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError, match=r"no run\.json"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a wsss run directory" in capsys.readouterr().err


def test_cam_split_and_predicted_split_get_their_own_pictures(tmp_path: Path) -> None:
    # VOC's shape: CAMs and pseudo-masks on train, predictions on val
    run = make_run_dir(tmp_path, "cams.splits=[train]", "data.seed_eval_split=train")
    page = render_report(run, n_sample=4, n_extreme=1, max_ranked=3)
    assert _grid_names(page, "train-sample") == ["a", "b"] and _grid_names(page, "val-sample") == list("abcd")
    # the train images are ranked by their prediction here too (the fixture predicts every image)
    assert "ranked among all 2 images" in page
    # val: 3 evenly spaced of 4 images are ranked (a, c, d): the worst is d, the best a
    assert "ranked among 3 (evenly spaced) of 4 images" in page
    assert _grid_names(page, "val-worst") == ["d"] and _grid_names(page, "val-best") == ["a"]


def test_report_shows_stage_warnings_and_the_cam_value_histogram(run_dir: Path) -> None:
    """eval-cams' CAM statistics (computed here from the run's own CAM files) reach the page."""
    import json

    from wsss.eval.cam_stats import cam_value_stats

    values = cam_value_stats(run_dir / "cams", ["a", "b", "c", "d"], ("background", "cat", "dog"), 0.1)
    # each 32×32 map is 1.0 on a 16×16 square: a quarter of the pixels above any threshold < 1
    assert values["foreground_share"] == 0.25 and values["warnings"] == []
    values["warnings"] = ["the CAMs are flat: <made up> for this test"]
    record = json.loads((run_dir / "run.json").read_text())
    record["stages"]["eval-cams"] = {"seconds": 0.1, "metrics": {"warnings": values["warnings"]}}
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "eval" / "cams.json").write_text(
        json.dumps({"summary": {"cam_values": values}, "details": {}})
    )
    page = render_report(run_dir, n_sample=1, n_extreme=0)
    warnings = re.search(r'<ul id="warnings" class="warn">(.*?)</ul>', page, re.S).group(1)
    assert warnings == "<li><b>eval-cams</b>: the CAMs are flat: &lt;made up&gt; for this test</li>"
    assert 'alt="cam_values"' in page
    histogram = _images(page)[0]  # the curves come before the pictures
    assert histogram.width > 200 and histogram.height > 200


def test_a_run_without_warnings_has_no_warning_list(run_dir: Path) -> None:
    assert 'id="warnings"' not in render_report(run_dir, n_sample=1, n_extreme=0)


def test_wsss_run_prints_the_stages_warnings(monkeypatch, tmp_path: Path, capsys) -> None:
    """The terminal summary of `wsss run` ends with every stage warning, named by stage."""
    import wsss.pipeline
    from wsss.report import stage_warnings

    record = {
        "stages": {
            "train-cls": {"seconds": 1.0, "metrics": {}},
            "eval-cams": {
                "seconds": 0.5,
                "metrics": {"warnings": ["84 % of the class maps peak at the border"]},
            },
        }
    }
    assert stage_warnings(record) == [("eval-cams", "84 % of the class maps peak at the border")]
    monkeypatch.setattr(wsss.pipeline, "run_pipeline", lambda *a, **k: record)
    assert main(["run", "synth/bnr-nano", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("warning (eval-cams): 84 % of the class maps peak at the border")


def test_classifier_validation_reaches_the_summary_and_the_page(
    run_dir: Path, monkeypatch, tmp_path: Path, capsys
) -> None:
    """train-cls's held-out tag scores: one terminal line (before the warnings) and a per-class table."""
    import json

    import wsss.pipeline

    validation = {
        "split": "val",
        "images": 40,
        "map": 0.8125,
        "chance_map": 0.3,
        "f1_macro": 0.5,
        "threshold": 0.5,
        "per_class": {
            "cat": {"ap": 0.75, "f1": 0.5, "positives": 12},
            "dog": {"ap": 0.875, "f1": None, "positives": 9},
        },
    }
    record = json.loads((run_dir / "run.json").read_text())
    record["stages"]["train-cls"] = {"seconds": 2.0, "metrics": {"validation": validation, "warnings": ["w"]}}
    (run_dir / "run.json").write_text(json.dumps(record))
    page = render_report(run_dir, n_sample=1, n_extreme=0)
    section = page[page.index('id="classifier-validation"') :]
    assert "on val (40 images): mAP <b>81.2</b> % (a random ranking: 30.0 %)" in section
    assert '<td class="l">dog</td><td>9</td><td>87.5</td><td>–</td>' in section
    monkeypatch.setattr(wsss.pipeline, "run_pipeline", lambda *a, **k: record)
    assert main(["run", "synth/bnr-nano", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-2:] == [
        "train-cls: classifier on val (40 images): mAP 81.2 % (chance 30.0 %), F1 50.0 % at 0.5",
        "warning (train-cls): w",
    ]


def test_outputs_not_above_all_background_are_flagged_in_summary_and_report(run_dir: Path) -> None:
    from wsss.report import summary_lines

    record = {
        "stages": {
            "make-labels": {
                "seconds": 1.0,
                "metrics": {"miou": 0.30, "all_background_miou": 0.35, "evaluated_on": "train"},
            },
            "predict": {
                "seconds": 1.0,
                "metrics": {"val": {"miou": 0.5, "all_background_miou": 0.35, "evaluated_on": "val"}},
            },
        }
    }
    results = collect_results(record)
    assert [r.below_baseline for r in results] == [True, False]
    lines = summary_lines(record)
    assert re.search(r"pseudo-labels \(make-labels\)\s+train\s+30\.0\s+35\.0", lines[0])
    warnings = [line for line in lines if "all-background" in line and line.startswith("warning")]
    assert len(warnings) == 1 and "pseudo-labels" in warnings[0] and "35.0 %" in warnings[0]
    # the HTML summary: every scored output shows its baseline; the useless one is marked
    record_path = run_dir / "run.json"
    on_disk = json.loads(record_path.read_text())
    on_disk["stages"]["make-labels"]["metrics"]["all_background_miou"] = 0.6
    on_disk["stages"]["predict"]["metrics"]["val"]["all_background_miou"] = 0.3
    record_path.write_text(json.dumps(on_disk))
    stages = re.search(r'<table id="stages">(.*?)</table>', render_report(run_dir), re.S).group(1)
    assert stages.count("not above all-background") == 1
    assert "(all-background 60.0)" in stages and "(all-background 30.0)" in stages
