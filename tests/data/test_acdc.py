"""ACDC: generated NIfTI volumes → per-slice PNGs → the ``acdc`` dataset, and Dice of a known
overlap scored through the pipeline's label-folder scoring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from wsss.data.acdc import ACDC_CLASSES, build_acdc, export_acdc_slices, window_to_uint8
from wsss.data.palette import read_label_png, write_label_png
from wsss.errors import ConfigError, DataError
from wsss.registry import DATASETS

H, W, S = 6, 8, 3  # not square, so a transposed slice would show


def _gt() -> np.ndarray:
    """Slice 0 empty; slice 1 RV and LV; slice 2 RV, Myo and LV."""
    gt = np.zeros((H, W, S), np.uint8)
    gt[1:3, 1:3, 1] = 1
    gt[3:5, 5:7, 1] = 3
    gt[0:2, 0:3, 2] = 1
    gt[2:5, 2:6, 2] = 2
    gt[3, 3:5, 2] = 3
    return gt


GT = _gt()
TAGS = [[0, 0, 0], [1, 0, 1], [1, 1, 1]]  # RV, Myo, LV present per slice
IMAGE = (np.arange(H * W * S).reshape(H, W, S) * 10).astype(
    np.int16
)  # voxel (i, j, s) = 10 (3 (8 i + j) + s)


def _save(nib, path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _raw(tmp_path: Path, patients: dict[str, str] | None = None) -> Path:
    """Two ground-truth frames per patient (frame12 an affine rescale of frame01, as float), plus
    a 4-D cine file and a frame without ground truth that the export must ignore. ``patients``:
    patient id -> its parent folder under the root."""
    nib = pytest.importorskip("nibabel", reason="nibabel (pip install wsss[acdc]) writes the test volumes")
    root = tmp_path / "raw"
    for pid, folder in (patients or {"patient001": "", "patient005": ""}).items():
        d = root / folder / pid
        _save(nib, d / f"{pid}_frame01.nii.gz", IMAGE)
        _save(nib, d / f"{pid}_frame01_gt.nii.gz", GT)
        _save(nib, d / f"{pid}_frame12.nii.gz", IMAGE.astype(np.float32) * 3 + 1000)
        _save(nib, d / f"{pid}_frame12_gt.nii.gz", GT.astype(np.float32))
        _save(nib, d / f"{pid}_frame05.nii.gz", IMAGE)
        _save(nib, d / f"{pid}_4d.nii.gz", IMAGE[..., None].repeat(2, axis=3))
    return root


def _names(pid: str) -> list[str]:
    return [f"{pid}_frame{f}_s{s:02d}" for f in ("01", "12") for s in range(S)]


def test_window_is_the_documented_percentile_window() -> None:
    v = np.arange(101, dtype=np.float64)  # p1 = 1, p99 = 99
    assert window_to_uint8(v)[[0, 1, 25, 99, 100]].tolist() == [0, 0, 62, 255, 255]  # 24 / 98 * 255 = 62.4
    assert window_to_uint8(np.full(5, 7.0)).tolist() == [0] * 5  # flat: no window
    with pytest.raises(DataError, match="NaN"):
        window_to_uint8(np.array([1.0, np.nan]))


def test_export_lists_tags_pixels_and_masks(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    out = tmp_path / "acdc"
    summary = export_acdc_slices(raw, out)
    # patient005 is val (every 5th patient number), never split across train and val
    assert (summary["patients"], summary["slices"]) == (
        {"train": 1, "val": 1, "test": 0},
        {"train": 6, "val": 6, "test": 0},
    )
    assert (summary["frames"], summary["written"], summary["empty_slices"]) == (4, 12, 4)
    assert summary["class_slice_counts"] == {"RV": 8, "Myo": 4, "LV": 8}
    train, val = DATASETS.build("acdc", root=out, split="train"), build_acdc(out, "val")
    assert (train.names, val.names) == (_names("patient001"), _names("patient005"))
    assert not (out / "ImageSets" / "Segmentation" / "test.txt").exists()
    assert train.class_names == ACDC_CLASSES and train.num_classes == 4
    assert train.labels.tolist() == TAGS * 2 and val.labels.tolist() == TAGS * 2
    # p1 = 14.3, p99 = 1415.7 (numpy's linear percentiles of 0, 10, …, 1430); voxel (2, 3, 1) = 580:
    # (580 - 14.3) / 1401.4 * 255 = 102.9 -> 103. frame12 = 3 x frame01 + 1000 windows the same.
    for i, sample in ((1, train[1]), (4, train[4])):
        image = sample["image"]
        assert (
            tuple(image.shape) == (3, H, W) and (image[0] == image[1]).all() and (image[0] == image[2]).all()
        )
        assert int(image[0, 2, 3]) == 103 and int(image[0, 0, 0]) == 0, train.names[i]
        assert sample["mask"].numpy().tolist() == GT[:, :, 1].tolist()
    assert int(train[2]["image"][0, 5, 7]) == 255  # the brightest voxel, above p99
    assert (val.read_mask(2) == GT[:, :, 2]).all() and read_label_png(
        out / "SegmentationClass" / f"{val.names[5]}.png"
    ).max() == 3
    saved = json.loads((out / "acdc_export.json").read_text())
    assert saved["splits"] == {"patient001": "train", "patient005": "val"}


def test_rerun_keeps_existing_files_and_rewrites_only_lists(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    out = tmp_path / "acdc"
    export_acdc_slices(raw, out)
    files = sorted((out / "JPEGImages").glob("*.png")) + sorted((out / "SegmentationClass").glob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = export_acdc_slices(raw, out, val_patients=["patient001"])
    assert (again["written"], again["kept"]) == (0, 12)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert build_acdc(out, "val").names == _names("patient001")  # the split changed, the pixels did not
    with pytest.raises(DataError, match=r"other settings.*size None -> 16"):
        export_acdc_slices(raw, out, size=16)
    with pytest.raises(ConfigError, match="patient009"):
        export_acdc_slices(raw, out, val_patients=["patient009"])


def test_skip_empty_resize_and_testing_split(tmp_path: Path) -> None:
    raw = _raw(tmp_path, {"patient001": "database/training", "patient101": "database/testing"})
    out = tmp_path / "acdc"
    summary = export_acdc_slices(raw, out, size=16, skip_empty=True, val_every=None)
    assert summary["slices"] == {"train": 4, "val": 0, "test": 4} and summary["empty_dropped"] == 4
    ds = build_acdc(out, "test")
    assert ds.names == [n for n in _names("patient101") if not n.endswith("_s00")]
    assert tuple(ds[0]["image"].shape) == (3, 16, 16)
    assert set(np.unique(ds.read_mask(1)).tolist()) == {0, 1, 2, 3}  # nearest: no new values
    assert ds.labels.tolist() == TAGS[1:] * 2


def test_raw_folder_bad_labels_and_missing_nibabel(tmp_path: Path, monkeypatch) -> None:
    raw = _raw(tmp_path, {"patient002": ""})
    with pytest.raises(DataError, match=r"raw ACDC folder.*`wsss data acdc --src .*raw --root OUT`"):
        DATASETS.build("acdc", root=raw, split="train")
    nib = pytest.importorskip("nibabel")
    bad = GT.copy()
    bad[0, 0, 0] = 4
    _save(nib, raw / "patient002" / "patient002_frame01_gt.nii.gz", bad)
    with pytest.raises(DataError, match=r"label value.*4.*1 RV"):
        export_acdc_slices(raw, tmp_path / "out")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    with pytest.raises(DataError, match=r"pip install wsss\[acdc\]"):
        export_acdc_slices(raw, tmp_path / "out")


def test_cli_converts(tmp_path: Path, capsys) -> None:
    from wsss.cli import main

    raw = _raw(tmp_path)
    assert main(["data", "acdc", "--src", str(raw), "--root", str(tmp_path / "o"), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["slices"] == {"train": 6, "val": 6, "test": 0}


def test_dice_of_a_known_overlap_scored_as_the_stages_do(tmp_path: Path) -> None:
    """Predictions = ground truth except slice s02 of patient005_frame01 predicted all background:
    per-class Dice from hand counts of the 6 val slices lands in the stage summary."""
    from tests.stage_context import cpu_context
    from wsss.config import load_recipe
    from wsss.stages.scoring import score_label_folder

    out = tmp_path / "acdc"
    export_acdc_slices(_raw(tmp_path), out)
    pred_dir = tmp_path / "pred"
    for name in _names("patient005"):
        s = int(name[-2:])
        write_label_png(
            pred_dir / f"{name}.png", 0 * GT[:, :, s] if name.endswith("frame01_s02") else GT[:, :, s]
        )
    recipe = load_recipe(
        "synth/bnr-nano", ["data.dataset=acdc", f"data.root={out}", "data.seed_eval_split=val"]
    )
    summary = score_label_folder(cpu_context(recipe, tmp_path / "run"), pred_dir, "seg_val", "val")
    # per class, ground-truth pixels in the 6 val slices (2 frames x slices 1, 2) and the ones missed
    rv, myo, lv = (2 * (4 + 6), 6), (2 * 10, 10), (2 * (4 + 2), 2)
    for c, (gt_px, missed) in zip(("RV", "Myo", "LV"), (rv, myo, lv)):
        tp = gt_px - missed
        assert summary["per_class_dice"][c] == pytest.approx(2 * tp / (2 * tp + missed))
    expected = np.mean([2 * (g - m) / (2 * (g - m) + m) for g, m in (rv, myo, lv)])
    assert summary["mean_dice"] == pytest.approx(expected)
    assert summary["miou"] < summary["mean_dice"]
    stored = json.loads((tmp_path / "run" / "eval" / "seg_val.json").read_text())
    assert stored["scores"]["mean_dice"] == summary["mean_dice"]
