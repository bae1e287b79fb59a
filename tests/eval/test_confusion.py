"""Confusion matrix, metrics and label-folder evaluation, checked against hand-computed values."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from wsss.cli.evaluate import register
from wsss.data.palette import write_label_png
from wsss.errors import DataError
from wsss.eval.confusion import ConfusionMatrix, confusion_matrix
from wsss.eval.metrics import format_table, iou_per_class, mean_iou, scores
from wsss.eval.runner import evaluate_label_dir, read_name_list

# 3 classes; class 2 is absent (no GT, no prediction); 255 in GT is ignored, 255 in pred is "uncertain".
GT_A = np.array(
    [
        [0, 0, 1, 1],
        [0, 1, 1, 255],
        [255, 0, 0, 1],
    ],
    dtype=np.uint8,
)
PRED_A = np.array(
    [
        [0, 1, 1, 1],
        [255, 1, 0, 1],
        [0, 0, 0, 255],
    ],
    dtype=np.uint8,
)
# By hand, uncertain prediction counted as background:
#   gt 0: pred 0 at (0,0) (1,0)* (2,1) (2,2) = 4, pred 1 at (0,1) = 1          (* = pred 255)
#   gt 1: pred 1 at (0,2) (0,3) (1,1) = 3,  pred 0 at (1,2) (2,3)* = 2
#   (1,3) and (2,0) have GT 255 and are skipped.
MATRIX_A = [[4, 1, 0], [2, 3, 0], [0, 0, 0]]
# Uncertain prediction skipped instead: (1,0) and (2,3) drop out.
MATRIX_A_SKIP = [[3, 1, 0], [1, 3, 0], [0, 0, 0]]


def test_hand_computed_matrix_with_ignore_and_uncertain_pixels():
    assert confusion_matrix(PRED_A, GT_A, 3).tolist() == MATRIX_A
    assert confusion_matrix(torch.from_numpy(PRED_A), torch.from_numpy(GT_A), 3).dtype == torch.int64
    assert confusion_matrix(PRED_A, GT_A, 3, pred_ignore_as=None).tolist() == MATRIX_A_SKIP
    # Counting uncertain as class 1 instead moves exactly those two pixels to column 1.
    assert confusion_matrix(PRED_A, GT_A, 3, pred_ignore_as=1).tolist() == [[3, 2, 0], [1, 4, 0], [0, 0, 0]]


def test_hand_computed_scores_and_mean_conventions():
    s = scores(torch.tensor(MATRIX_A), class_names=["bg", "cat", "dog"])
    iou = [r["iou"] for r in s["per_class"]]
    # IoU0 = 4 / (5 + 6 - 4) = 4/7; IoU1 = 3 / (5 + 4 - 3) = 1/2; class 2 absent → undefined.
    assert iou[0] == pytest.approx(4 / 7, abs=1e-12)
    assert iou[1] == pytest.approx(1 / 2, abs=1e-12)
    assert iou[2] is None
    assert s["miou"] == pytest.approx((4 / 7 + 1 / 2) / 2, abs=1e-12)  # = 15/28, absent class left out
    assert s["pixel_accuracy"] == pytest.approx(7 / 10, abs=1e-12)
    bg, cat, dog = s["per_class"]
    assert (bg["precision"], bg["recall"]) == pytest.approx((4 / 6, 4 / 5), abs=1e-12)
    assert (cat["precision"], cat["recall"]) == pytest.approx((3 / 4, 3 / 5), abs=1e-12)
    assert (bg["fp_rate"], bg["fn_rate"]) == pytest.approx((2 / 7, 1 / 7), abs=1e-12)
    assert (cat["fp_rate"], cat["fn_rate"]) == pytest.approx((1 / 6, 2 / 6), abs=1e-12)
    assert dog == {
        "index": 2,
        "name": "dog",
        "iou": None,
        "precision": None,
        "recall": None,
        "fp_rate": None,
        "fn_rate": None,
        "gt_pixels": 0,
        "pred_pixels": 0,
    }
    assert (bg["gt_pixels"], bg["pred_pixels"], cat["gt_pixels"], cat["pred_pixels"]) == (5, 6, 5, 4)
    # TransCAM/SEAM: the absent class counts as 0 over all 3 classes.
    assert scores(torch.tensor(MATRIX_A), mean="absent_as_zero")["miou"] == pytest.approx(15 / 42, abs=1e-12)
    assert scores(torch.tensor(MATRIX_A), mean="gt_present")["miou"] == pytest.approx(15 / 28, abs=1e-12)
    with pytest.raises(ValueError, match="unknown mean convention"):
        mean_iou(torch.tensor(MATRIX_A), "macro")


def test_class_with_gt_but_no_hit_scores_zero_and_false_positive_class_counts():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 3, 1, 1])
    m = confusion_matrix(pred, gt, 4)
    assert m.tolist() == [[2, 0, 0, 0], [0, 1, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0]]
    s = scores(m)
    # IoU: 2/2, 1/(2+3-1), 0/(2+0), 0/(0+1)
    assert [r["iou"] for r in s["per_class"]] == pytest.approx([1.0, 0.25, 0.0, 0.0], abs=1e-12)
    assert s["per_class"][2]["recall"] == 0.0 and s["per_class"][2]["precision"] is None
    assert s["per_class"][3]["precision"] == 0.0 and s["per_class"][3]["recall"] is None
    assert s["miou"] == pytest.approx(1.25 / 4, abs=1e-12)  # class 3 was predicted: it counts
    assert scores(m, mean="gt_present")["miou"] == pytest.approx(1.25 / 3, abs=1e-12)
    assert scores(m, mean="absent_as_zero")["miou"] == pytest.approx(1.25 / 4, abs=1e-12)


def test_matches_brute_force_count_and_rate_identity():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(40, 30))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=(40, 30))
    pred[rng.random(gt.shape) < 0.1] = 255
    expected = np.zeros((6, 6), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            expected[g, 0 if p == 255 else p] += 1
    m = confusion_matrix(pred, gt, 6)
    assert np.array_equal(m.numpy(), expected)
    s = scores(m)
    for r in s["per_class"]:
        if r["iou"] is not None:  # IoU + FP share + FN share of the union = 1
            assert r["iou"] + r["fp_rate"] + r["fn_rate"] == pytest.approx(1.0, abs=1e-12)
    # Batched mean_iou equals one matrix at a time.
    stack = torch.stack([m, torch.tensor(np.eye(6, dtype=np.int64) * 3), m * 2])
    assert mean_iou(stack).tolist() == pytest.approx([float(mean_iou(x)) for x in stack], abs=1e-15)
    assert float(mean_iou(stack[1])) == 1.0
    assert torch.isnan(iou_per_class(torch.zeros(3, 3, dtype=torch.long))).all()


def test_bad_values_are_reported():
    with pytest.raises(ValueError, match=r"ground truth holds values \[7\]"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), 3)
    with pytest.raises(ValueError, match=r"prediction holds values \[5\]"):
        confusion_matrix(np.array([5, 1]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(np.zeros(4, np.float32), np.zeros(4, np.uint8), 3)
    # A prediction of 255 where the GT is 255 is skipped, never an error.
    assert int(confusion_matrix(np.array([255]), np.array([255]), 2).sum()) == 0


def test_accumulator_sums_images_and_guards_double_reduce():
    cm = ConfusionMatrix(3)
    cm.update(PRED_A[:2], GT_A[:2])
    cm.update(PRED_A[2:], GT_A[2:])
    assert cm.matrix.tolist() == MATRIX_A
    assert cm.all_reduce().tolist() == MATRIX_A  # no process group: a no-op
    with pytest.raises(RuntimeError, match="reset"):
        cm.update(PRED_A, GT_A)
    with pytest.raises(RuntimeError, match="already"):
        cm.all_reduce()
    cm.reset()
    assert int(cm.matrix.sum()) == 0
    cm.update(PRED_A, GT_A)
    assert cm.matrix.tolist() == MATRIX_A


def test_format_table_shows_names_and_undefined_cells():
    text = format_table(scores(torch.tensor(MATRIX_A), ["bg", "cat", "dog"]))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "prec", "recall", "FP", "FN", "GT", "px"]
    assert lines[2].split()[:2] == ["bg", "57.14"]
    assert lines[4].split() == ["dog", "-", "-", "-", "-", "-", "0"]
    assert "mIoU 53.57" in lines[-1] and "pixel acc 70.00" in lines[-1]


def _write_label_folder(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_label_png(gt_dir / "a.png", GT_A)
    write_label_png(pred_dir / "a.png", PRED_A)
    gt_b = np.array([[0, 0, 1], [1, 2, 2]], np.uint8)
    pred_b = np.array([[0, 0, 1], [1, 2, 0]], np.uint8)  # adds [[2,0,0],[0,2,0],[1,0,1]]
    write_label_png(gt_dir / "b.png", gt_b)
    write_label_png(pred_dir / "b.png", pred_b)
    (tmp_path / "list.txt").write_text("a\n\nb\n")
    return gt_dir, pred_dir, [[6, 1, 0], [2, 5, 0], [1, 0, 1]]


def test_evaluate_label_dir_and_missing_prediction(tmp_path):
    gt_dir, pred_dir, total = _write_label_folder(tmp_path)
    names = read_name_list(tmp_path / "list.txt")
    assert names == ["a", "b"]
    result = evaluate_label_dir(pred_dir, gt_dir, names, 3, ["bg", "cat", "dog"], progress=False)
    m = np.array(total)
    iou = np.diag(m) / (m.sum(0) + m.sum(1) - np.diag(m))
    assert result["num_images"] == 2
    assert [r["iou"] for r in result["per_class"]] == pytest.approx(iou.tolist(), abs=1e-12)
    assert result["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    (pred_dir / "b.png").unlink()
    with pytest.raises(DataError, match=r"prediction file not found: .*b\.png"):
        evaluate_label_dir(pred_dir, gt_dir, names, 3, progress=False)
    write_label_png(pred_dir / "b.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match=r"b\.png is 3x3"):
        evaluate_label_dir(pred_dir, gt_dir, names, 3, progress=False)
    write_label_png(pred_dir / "b.png", np.full((2, 3), 9, np.uint8))
    with pytest.raises(DataError, match=r"b\.png against .*values \[9\]"):
        evaluate_label_dir(pred_dir, gt_dir, names, 3, progress=False)


def test_name_and_class_lists(tmp_path):
    lst = tmp_path / "train_aug.txt"
    lst.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n2008_000002\nimg.v2\n")
    assert read_name_list(lst) == ["2007_000032", "2008_000002", "img.v2"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="names no images"):
        read_name_list(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="list file not found"):
        read_name_list(tmp_path / "nope.txt")
    # evaluate / eval-cams read lists as the datasets do: no duplicates, nothing outside the folder
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="listed twice"):
        read_name_list(tmp_path / "twice.txt")
    (tmp_path / "climb.txt").write_text("a\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"climb\.txt, line 2"):
        read_name_list(tmp_path / "climb.txt")


def _cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_evaluate_prints_table_and_writes_json(tmp_path, capsys):
    gt_dir, pred_dir, total = _write_label_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    out = tmp_path / "res" / "scores.json"
    argv = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--list", str(tmp_path / "list.txt")]
    rc = _cli([*argv, "--classes", str(tmp_path / "classes.txt"), "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["per_class"][2]["name"] == "dog"
    m = np.array(total)
    miou = float(np.mean(np.diag(m) / (m.sum(0) + m.sum(1) - np.diag(m))))
    assert math.isclose(saved["miou"], miou, abs_tol=1e-12)
    assert f"mIoU {100 * miou:.2f}" in printed and "dog" in printed
    # the folder dataset's classes.txt (foreground only) names the same rows: no shift by one
    (tmp_path / "fg.txt").write_text("cat\ndog\n")
    assert _cli([*argv, "--classes", str(tmp_path / "fg.txt"), "--out", str(out), "--no-progress"]) == 0
    assert [c["name"] for c in json.loads(out.read_text())["per_class"]] == ["background", "cat", "dog"]
    assert "classes: background + 2 (cat, dog)" in capsys.readouterr().out
    assert _cli([*argv, "--classes", "voc", "--out", str(out), "--no-progress"]) == 0  # built-in names
    assert [c["name"] for c in json.loads(out.read_text())["per_class"]][:3] == [
        "background",
        "aeroplane",
        "bicycle",
    ]
    # Skipping uncertain pixels changes the count of image a (two pixels fewer).
    _cli([*argv, "--num-classes", "3", "--uncertain", "skip", "--out", str(out), "--no-progress"])
    assert json.loads(out.read_text())["pixels"] == int(m.sum()) - 2
    with pytest.raises(SystemExit):
        _cli([*argv, "--num-classes", "1"])


def test_all_background_baseline_hand_computed_under_each_mean_convention():
    from wsss.eval.metrics import all_background_miou

    # rows = ground truth: 8 background pixels, 4 of class 1; the prediction does not matter
    m = torch.tensor([[6, 2], [3, 1]])
    assert float(all_background_miou(m)) == pytest.approx((8 / 12 + 0) / 2)
    assert scores(m)["all_background_miou"] == pytest.approx(1 / 3)
    # class 2 never labelled: absent from the all-background prediction too
    m3 = torch.tensor([[5, 0, 0], [1, 2, 0], [0, 0, 0]])
    assert float(all_background_miou(m3, "all")) == pytest.approx((5 / 8) / 2)
    assert float(all_background_miou(m3, "absent_as_zero")) == pytest.approx((5 / 8) / 3)
    assert float(all_background_miou(m3, "gt_present")) == pytest.approx((5 / 8) / 2)
    # it equals scoring an actual all-background prediction
    gt = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = torch.zeros_like(gt)
    direct = scores(confusion_matrix(pred, gt, 3))["miou"]
    assert scores(confusion_matrix(gt.clamp(max=2), gt, 3))["all_background_miou"] == pytest.approx(direct)
