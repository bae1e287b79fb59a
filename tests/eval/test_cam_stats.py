"""CAM value statistics: flat maps and over-eager thresholds are named, peaked maps pass quietly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.cams.files import save_cam
from wsss.data.palette import write_label_png
from wsss.eval.cam_stats import BINS, at_threshold, cam_value_stats, otsu_threshold

CLASSES = ("background", "cat", "dog")


def _write(tmp_path: Path, name: str, cams: np.ndarray, keys: list[int], mask: np.ndarray) -> None:
    save_cam(tmp_path / "cams" / f"{name}.npz", cams, keys, cams.shape[1:], norm="minmax")
    write_label_png(tmp_path / "masks" / f"{name}.png", mask)


def peaked(tmp_path: Path) -> None:
    """Two 10×10 images: a cat map 0.91 on 10 pixels and 0.05 elsewhere; GT: the same 10 pixels."""
    for i in range(2):
        cam = np.full((1, 10, 10), 0.05, np.float32)
        cam[0, i, :] = 0.91  # float16 on disk: 0.9 would round into the bin below
        mask = np.zeros((10, 10), np.uint8)
        mask[i, :] = 1
        _write(tmp_path, f"p{i}", cam, [1], mask)


def test_peaked_maps_give_their_shares_and_no_warning(tmp_path: Path) -> None:
    peaked(tmp_path)
    stats = cam_value_stats(tmp_path / "cams", ["p0", "p1"], CLASSES, 0.5, tmp_path / "masks")
    assert stats["warnings"] == []
    assert stats["foreground_share"] == pytest.approx(0.1)
    assert stats["gt_foreground_share"] == pytest.approx(0.1)
    hist = np.array(stats["histogram"])
    assert hist.sum() == 200 and hist[int(0.05 * BINS)] == 180 and hist[int(0.91 * BINS)] == 20
    cat = stats["per_class"]["cat"]
    # 90 % of the values are 0.05 (bin [0.04, 0.06)); the quantile is the bin's upper edge
    assert cat["values"] == 200 and cat["p10"] == cat["p50"] == cat["p90"] == pytest.approx(0.06)
    assert "dog" not in stats["per_class"]  # no image is tagged dog
    assert stats["norm"] == "minmax" and stats["images"] == 2


def test_flat_maps_and_a_low_threshold_are_both_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        cams = rng.uniform(0.4, 1.0, (2, 8, 8)).astype(np.float32)  # nearly uniform, like the issue's
        mask = np.zeros((8, 8), np.uint8)
        mask[:2, :4] = 1  # objects: 8 of 64 pixels
        mask[6:, 6:] = 255  # ignored pixels do not count
        _write(tmp_path, f"f{i}", cams, [1, 2], mask)
    stats = cam_value_stats(tmp_path / "cams", ["f0", "f1", "f2"], CLASSES, 0.15, tmp_path / "masks")
    assert stats["p10"] > 0.4 and stats["foreground_share"] == 1.0
    assert stats["gt_foreground_share"] == pytest.approx(8 / 60)
    flat, eager = stats["warnings"]
    assert "the CAMs are flat" in flat and "(classes: cat, dog)" in flat and "wsss data check" in flat
    assert "threshold 0.15 marks 100 % of the pixels foreground (ground truth: 13 %)" in eager
    assert "evaluate.fixed_threshold" in eager


def test_without_threshold_or_masks_only_the_values_are_described(tmp_path: Path) -> None:
    peaked(tmp_path)
    stats = cam_value_stats(tmp_path / "cams", ["p0"], CLASSES, None)
    assert stats["foreground_share"] is None and stats["gt_foreground_share"] is None
    assert stats["warnings"] == [] and sum(stats["histogram"]) == 100


def test_otsu_finds_the_valley_of_a_map_with_a_known_object_share(tmp_path: Path) -> None:
    """Background ~ N(0.2, 0.05) on 80 % of the pixels, objects ~ N(0.7, 0.05) on 20 %."""
    rng = np.random.default_rng(3)
    for i in range(4):
        cam = rng.normal(0.2, 0.05, (1, 20, 20))
        cam[0, :4] = rng.normal(0.7, 0.05, (4, 20))  # 4 of 20 rows: 20 %
        _write(tmp_path, f"o{i}", np.clip(cam, 0, 1).astype(np.float32), [1], np.zeros((20, 20), np.uint8))
    stats = cam_value_stats(tmp_path / "cams", [f"o{i}" for i in range(4)], CLASSES)
    t = otsu_threshold(stats["pixel_max_histogram"])
    assert 0.3 < t < 0.6  # between the modes (Otsu leans to the larger class: 0.35 here)
    assert at_threshold(stats, t)["foreground_share"] == pytest.approx(0.2, abs=0.005)
    assert at_threshold(stats, 0.0)["foreground_share"] == 1.0


def test_otsu_of_two_spikes_and_of_nothing() -> None:
    hist = np.zeros(100)
    hist[[10, 80]] = [70, 30]
    assert otsu_threshold(hist) == pytest.approx(0.11)  # every edge between splits them equally: the first
    with pytest.raises(ValueError, match="non-empty"):
        otsu_threshold(np.zeros(100))


def test_maps_that_peak_on_the_border_are_called_unusable(tmp_path: Path) -> None:
    """40×40 maps: 3 of 4 peak in the corner (a padding artefact), 1 in the centre."""
    for i in range(4):
        cam = np.full((1, 40, 40), 0.1, np.float32)
        if i < 3:
            cam[0, 0, 0] = 1.0
        else:
            cam[0, 20, 20] = 1.0
        _write(tmp_path, f"b{i}", cam, [1], np.zeros((40, 40), np.uint8))
    stats = cam_value_stats(tmp_path / "cams", [f"b{i}" for i in range(4)], CLASSES)
    # cells within one cell of the edge: 1 - 36² / 40² of the grid
    assert stats["border_peak_share"] == 0.75
    assert stats["border_area_share"] == pytest.approx(1 - 36**2 / 40**2)
    (warning,) = stats["warnings"]
    assert warning.startswith("75 % of the class maps peak at the image border") and "not usable" in warning
    # two of four on the border: 50 % is not more than BORDER_PEAKS
    cam = np.full((1, 40, 40), 0.1, np.float32)
    cam[0, 20, 20] = 1.0
    _write(tmp_path, "b2", cam, [1], np.zeros((40, 40), np.uint8))
    assert cam_value_stats(tmp_path / "cams", [f"b{i}" for i in range(4)], CLASSES)["warnings"] == []
