"""One-pass threshold sweep versus a straightforward per-threshold evaluation; plot; CAM-folder runner."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.cams.files import save_cam
from wsss.cli.evaluate import register
from wsss.data.palette import write_label_png
from wsss.errors import ConfigError, DataError
from wsss.eval.confusion import ConfusionMatrix
from wsss.eval.metrics import mean_iou, scores
from wsss.eval.plot import plot_threshold_curve
from wsss.eval.runner import evaluate_cam_dir
from wsss.eval.sweep import ORACLE_LABEL, FixedThreshold, ThresholdSweep, cam_to_label, threshold_range


def _random_images(seed: int, n_images: int, num_classes: int, dtype=torch.float64):
    """CAMs on a grid of k/20 so many scores sit exactly on a threshold; GT with 255 pixels."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(n_images):
        h, w = 5 + i % 4, 6 + (i * 3) % 5
        n_keys = i % 4  # includes an image with no foreground key at all
        keys = (torch.randperm(num_classes - 1, generator=g)[:n_keys] + 1).sort().values
        cams = (torch.randint(0, 15, (n_keys, h, w), generator=g).to(torch.float64) / 20).to(dtype)
        gt = torch.randint(0, num_classes, (h, w), generator=g)
        gt[torch.rand(h, w, generator=g) < 0.15] = 255
        images.append((cams, keys, gt))
    return images


def _reference_matrices(images, num_classes, thresholds):
    """The straightforward way: a label map and a confusion matrix per threshold."""
    out = []
    for t in thresholds:
        cm = ConfusionMatrix(num_classes)
        for cams, keys, gt in images:
            cm.update(cam_to_label(cams, keys, t), gt)
        out.append(cm.matrix)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_pass_sweep_equals_per_threshold_evaluation(dtype):
    num_classes = 6
    thresholds = threshold_range(0.0, 0.6, 0.05)
    images = _random_images(seed=1, n_images=9, num_classes=num_classes, dtype=dtype)
    ties = sum(
        int(torch.isin(c.max(0).values.double(), torch.tensor(thresholds, dtype=torch.float64)).sum())
        for c, _, _ in images
        if len(c)
    )
    assert ties > 20  # the data really exercises scores exactly at a threshold
    sweep = ThresholdSweep(num_classes, thresholds)
    for cams, keys, gt in images:
        sweep.update(cams, keys.numpy(), gt.numpy())
    ref = _reference_matrices(images, num_classes, thresholds)
    assert torch.equal(sweep.matrices(), ref)
    res = sweep.results()
    ref_miou = mean_iou(ref)
    assert res["miou"] == pytest.approx(ref_miou.tolist(), abs=1e-9)
    assert res["thresholds"] == thresholds
    assert res["images"] == 9
    best = res["best"]
    assert best["label"] == ORACLE_LABEL
    assert best["index"] == int(torch.argmax(ref_miou))
    assert best["miou"] == pytest.approx(float(ref_miou.max()), abs=1e-12)
    for mean in ("absent_as_zero", "gt_present"):
        assert sweep.results(mean)["miou"] == pytest.approx(mean_iou(ref, mean).tolist(), abs=1e-9)


def test_tie_at_threshold_is_background_and_fg_argmax():
    cams = torch.tensor([[[0.25, 0.5, 0.1]], [[0.2, 0.5, 0.3]]], dtype=torch.float64)  # keys 4, 2
    keys = [4, 2]
    assert cam_to_label(cams, keys, 0.25).tolist() == [[0, 4, 2]]  # 0.25 is not > 0.25
    assert cam_to_label(cams, keys, 0.2).tolist() == [[4, 4, 2]]
    assert cam_to_label(cams, keys, 0.5).tolist() == [[0, 0, 0]]
    gt = torch.tensor([[4, 4, 2]])
    sweep = ThresholdSweep(5, [0.2, 0.25, 0.5])
    sweep.update(cams, keys, gt)
    m = sweep.matrices()
    assert m[0][4].tolist() == [0, 0, 0, 0, 2] and m[1][4].tolist() == [1, 0, 0, 0, 1]
    assert m[2][4].tolist() == [2, 0, 0, 0, 0] and m[2][2].tolist() == [1, 0, 0, 0, 0]
    assert torch.equal(sweep.matrix_at(0.25), m[1])
    # No keys at all: background everywhere at every threshold.
    empty = ThresholdSweep(3, [0.0, 0.1])
    empty.update(torch.zeros(0, 2, 2), [], torch.tensor([[0, 1], [2, 255]]))
    assert empty.matrices()[:, :, 0].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert int(empty.matrices()[:, :, 1:].sum()) == 0


def test_fixed_threshold_matches_sweep_and_threshold_range():
    images = _random_images(seed=2, n_images=5, num_classes=5)
    sweep = ThresholdSweep(5, threshold_range(0.0, 0.6, 0.05))
    fixed = FixedThreshold(5, 0.35)
    for cams, keys, gt in images:
        sweep.update(cams, keys, gt)
        fixed.update(cams, keys, gt)
    assert torch.equal(fixed.matrix, sweep.matrix_at(0.35))
    res = fixed.results(["bg", "a", "b", "c", "d"])
    assert res["threshold"] == 0.35
    assert res["miou"] == scores(sweep.matrix_at(0.35))["miou"]
    r = threshold_range(0.0, 0.6, 0.01)
    assert len(r) == 60 and r[0] == 0.0 and r[7] == 0.07 and r[-1] == 0.59
    assert threshold_range(0.4, 0.5, 0.05) == [0.4, 0.45]
    with pytest.raises(ValueError, match="step"):
        threshold_range(0.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="greater"):
        threshold_range(0.5, 0.5, 0.1)


def test_sweep_rejects_bad_input():
    with pytest.raises(ValueError, match="strictly increasing"):
        ThresholdSweep(3, [0.1, 0.1])
    sweep = ThresholdSweep(3, [0.1, 0.2])
    cams = torch.rand(1, 2, 2)
    with pytest.raises(ValueError, match=r"foreground class indices in 1\.\.2"):
        sweep.update(cams, [3], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"foreground class indices"):
        sweep.update(cams, [0], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ground-truth shape"):
        sweep.update(cams, [1], torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="2 keys for 1 CAM planes"):
        sweep.update(cams, [1, 2], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        sweep.update(torch.full((1, 2, 2), float("nan")), [1], torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[5\]"):
        sweep.update(cams, [1], torch.full((2, 2), 5))
    assert sweep.images == 0


def test_plot_writes_png_atomically(tmp_path):
    path = tmp_path / "plots" / "curve.png"
    plot_threshold_curve([0.0, 0.1, 0.2], [0.3, 0.5, None], path, best=(0.1, 0.5), fixed=(0.2, 0.45))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (640, 400)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="3 thresholds but 2"):
        plot_threshold_curve([0.0, 0.1, 0.2], [0.3, 0.5], path)


def _write_cam_folder(tmp_path, num_classes=5, stride=2):
    """Three images with CAM files at ``stride`` and GT masks; returns what the runner should see."""
    images = _random_images(seed=3, n_images=3, num_classes=num_classes)
    full = []
    for i, (_, keys, gt) in enumerate(images):
        h, w = gt.shape
        hs, ws = -(-h // stride), -(-w // stride)
        small = torch.rand(len(keys), hs, ws, generator=torch.Generator().manual_seed(i))
        save_cam(tmp_path / "cams" / f"im{i}.npz", small, keys, (h, w), stride=stride, norm="max")
        write_label_png(tmp_path / "gt" / f"im{i}.png", gt.numpy().astype(np.uint8))
        # What the runner must reconstruct: float16 storage, then bilinear upsampling and crop.
        up = torch.zeros(0, h, w)
        if len(keys):
            x = small.half().float()[None]
            up = torch.nn.functional.interpolate(x, size=(hs * stride, ws * stride), mode="bilinear")
            up = up[0, :, :h, :w]
        full.append((up, keys, gt))
    (tmp_path / "list.txt").write_text("im0\nim1\nim2\n")
    return full


def test_evaluate_cam_dir_matches_direct_sweep(tmp_path):
    full = _write_cam_folder(tmp_path)
    thresholds = threshold_range(0.0, 1.0, 0.1)
    names = ["im0", "im1", "im2"]
    result = evaluate_cam_dir(
        tmp_path / "cams", tmp_path / "gt", names, 5, thresholds, fixed_threshold=0.33, progress=False
    )
    ref = _reference_matrices(full, 5, thresholds)
    assert result["sweep"]["miou"] == pytest.approx(mean_iou(ref).tolist(), abs=1e-9)
    best = int(torch.argmax(mean_iou(ref)))
    assert result["oracle"]["threshold"] == thresholds[best]
    assert result["oracle"]["label"] == ORACLE_LABEL
    assert result["oracle"]["per_class"][1]["iou"] == scores(ref[best])["per_class"][1]["iou"]
    ref_fixed = _reference_matrices(full, 5, [0.33])[0]
    assert result["fixed"]["miou"] == pytest.approx(scores(ref_fixed)["miou"], abs=1e-12)
    assert result["norm"] == "max" and result["num_images"] == 3

    with pytest.raises(DataError, match=r"CAM file not found: .*im9\.npz"):
        evaluate_cam_dir(tmp_path / "cams", tmp_path / "gt", ["im9"], 5, thresholds, progress=False)
    with pytest.raises(DataError, match=r"im2\.npz with mask .*foreground class indices"):
        evaluate_cam_dir(tmp_path / "cams", tmp_path / "gt", ["im2"], 2, thresholds, progress=False)
    cams, keys, gt = full[1]
    save_cam(tmp_path / "cams" / "im1.npz", cams, keys, tuple(gt.shape), norm="minmax")
    with pytest.raises(DataError, match=r"im1\.npz is 'minmax'-normalised but .*im0\.npz is 'max'"):
        evaluate_cam_dir(tmp_path / "cams", tmp_path / "gt", names, 5, thresholds, progress=False)
    write_label_png(tmp_path / "gt" / "im0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"mask .*im0\.png is 2x2"):
        evaluate_cam_dir(tmp_path / "cams", tmp_path / "gt", names, 5, thresholds, progress=False)


def _cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_cams_writes_json_and_curve(tmp_path, capsys):
    _write_cam_folder(tmp_path)
    out = tmp_path / "report"
    argv = ["eval-cams", "--cams", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt")]
    argv += ["--list", str(tmp_path / "list.txt"), "--num-classes", "5", "--no-progress"]
    rc = _cli([*argv, "--thresholds", "0", "1", "0.1", "--fixed-threshold", "0.3", "--out", str(out)])
    assert rc == 0
    saved = json.loads((out / "cam_eval.json").read_text())
    assert len(saved["sweep"]["thresholds"]) == 10
    assert saved["oracle"]["label"] == ORACLE_LABEL
    with Image.open(out / "threshold_curve.png") as img:
        assert img.format == "PNG"
    printed = capsys.readouterr().out
    t, miou = saved["oracle"]["threshold"], saved["oracle"]["miou"]
    assert f"best threshold {t:g}: mIoU {100 * miou:.2f}  [{ORACLE_LABEL}]" in printed
    assert "threshold 0.3" in printed
    with pytest.raises(ConfigError, match=r"--thresholds 0\.5 0\.1 0\.1"):
        _cli([*argv, "--thresholds", "0.5", "0.1", "0.1"])


def test_cli_eval_cams_auto_threshold_scores_otsus_choice(tmp_path, capsys):
    """--auto-threshold scores the threshold Otsu picks from the CAM values (the stage's auto)."""
    from wsss.eval.cam_stats import cam_value_stats, otsu_threshold

    _write_cam_folder(tmp_path)
    names = (tmp_path / "list.txt").read_text().split()
    classes = ["background", *(f"class {k}" for k in range(1, 5))]
    want = otsu_threshold(cam_value_stats(tmp_path / "cams", names, classes)["pixel_max_histogram"])
    argv = ["eval-cams", "--cams", str(tmp_path / "cams"), "--gt", str(tmp_path / "gt")]
    argv += ["--list", str(tmp_path / "list.txt"), "--num-classes", "5", "--no-progress"]
    assert _cli([*argv, "--auto-threshold", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "cam_eval.json").read_text())
    assert saved["fixed"]["threshold"] == pytest.approx(want) and 0.0 < want < 1.0
    assert f"auto threshold (Otsu on the CAM values, no ground truth): {want:g}" in capsys.readouterr().out
    assert len(saved["sweep"]["thresholds"]) == 96  # the default sweep reaches 0.95
    with pytest.raises(SystemExit):  # one GT-free threshold at a time
        _cli([*argv, "--auto-threshold", "--fixed-threshold", "0.3"])
