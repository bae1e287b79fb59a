"""PMM's PPG (per-class CRF foregrounds, overlaps to the larger proportion) and rough masks."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.refine.crf import exact_available
from wsss.refine.ppg import confident_posteriors, ppg_labels, proportional_labels, rough_labels

BACKENDS = [
    "torch",
    pytest.param("exact", marks=pytest.mark.skipif(not exact_available(), reason="pydensecrf not installed")),
]


def test_proportional_step_gives_the_overlap_to_the_small_object() -> None:
    # class 3 (large): M = 0.8 on pixels 0-4, F on 0-4: mass 4.0, P = 0.8 / 5 = 0.16.
    # class 7 (small): M = 0.6, 0.4 on pixels 3-4, F on 3-5: mass 1.0, P = 0.3, 0.2, and 0 on pixel 5.
    # Pixels 3-4 lie in both: 0.3 and 0.2 beat 0.16 although class 3's raw CAM (0.8) is higher.
    # Pixel 5 is in F_7 with M_7 = 0: every score is 0 and it falls back to background.
    # Pixel 6 is in no F (class 3's 0.9 there is outside F_3): background.
    cams = np.array([[[0.8, 0.8, 0.8, 0.8, 0.8, 0.0, 0.9]], [[0.0, 0.0, 0.0, 0.6, 0.4, 0.0, 0.0]]])
    fg = np.array([[[1, 1, 1, 1, 1, 0, 0]], [[0, 0, 0, 1, 1, 1, 0]]], dtype=bool)
    got = proportional_labels(cams, fg, [3, 7])
    assert got.dtype == np.uint8 and got.tolist() == [[3, 3, 3, 7, 7, 0, 0]]


def test_foreground_with_a_zero_cam_falls_back_to_background() -> None:
    cams = np.zeros((1, 2, 3))
    assert proportional_labels(cams, np.ones((1, 2, 3), bool), [5]).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_ppg_runs_the_crf_on_smoothed_maps_and_the_proportion_on_raw_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Class 3 = (0.1, 1.0, 0) is uneven: above t its values 0.1, 1.0 have mean 0.55 and population
    # std 0.45, so e = 1 - 0.3 * 0.45 / 0.55 and 0.1 becomes 0.1^e = 0.176. Class 7 = (0.07, 0, 0.07)
    # is flat (CoV 0), unchanged. With F_3 = pixels 0-1 and F_7 = pixels 0, 2 (given, no CRF), the
    # raw proportions at pixel 0 are 0.1 / 2.1 = 0.048 < 0.07 / 1.14 = 0.061: class 7. Smoothed maps
    # would give 0.176 / 2.176 = 0.081 to class 3 instead.
    import wsss.refine.ppg as ppg_module

    crf_inputs: list[np.ndarray] = []
    given = [np.array([[True, True, False]]), np.array([[True, False, True]])]

    def fake_foreground(image, smoothed, alpha, crf, fg_threshold, backend):
        crf_inputs.append(smoothed)
        return given[len(crf_inputs) - 1]

    monkeypatch.setattr(ppg_module, "class_foreground", fake_foreground)
    cams = np.array([[[0.1, 1.0, 0.0]], [[0.07, 0.0, 0.07]]], np.float32)
    got = ppg_module.ppg_labels(np.zeros((1, 3, 3), np.uint8), cams, [3, 7])
    e = 1.0 - 0.3 * 0.45 / 0.55
    np.testing.assert_allclose(np.stack(crf_inputs), [[[0.1**e, 1.0, 0.0]], [[0.07, 0.0, 0.07]]], rtol=1e-5)
    assert got.tolist() == [[7, 3, 7]]


def overlap_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red 12x12 object (class 3, CAM 0.9) holding a green 4x4 one (class 7, CAM 0.8) in its corner."""
    image = np.zeros((16, 16, 3), np.uint8)
    large, small = np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32)
    image[2:14, 2:14], large[2:14, 2:14] = (200, 40, 40), 0.9
    image[9:13, 9:13], small[9:13, 9:13] = (40, 200, 40), 0.8
    want = np.zeros((16, 16), np.uint8)
    want[large > 0], want[small > 0] = 3, 7
    return image, np.stack([large, small]), want


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppg_gives_the_small_object_the_overlap(backend: str) -> None:
    # Each CRF keeps its class's square (strong unaries, colour edges), so F_3 and F_7 overlap on the
    # 4x4 square: P_3 = 0.9 / (1 + 144 * 0.9) = 0.0069 < P_7 = 0.8 / (1 + 16 * 0.8) = 0.058.
    image, cams, want = overlap_scene()
    assert (cams[0] > cams[1])[want == 7].all()  # the raw CAMs alone would give the overlap to 3
    assert np.array_equal(ppg_labels(image, cams, [3, 7], backend=backend), want)


def test_confident_posteriors_leave_255_where_none_exceeds() -> None:
    # planes: background, class 4, class 9; the cut is strict (0.9 itself is not enough)
    q = np.array([[[0.95, 0.05, 0.4, 0.05]], [[0.03, 0.91, 0.3, 0.05]], [[0.02, 0.04, 0.3, 0.90]]])
    assert confident_posteriors(q, [4, 9], 0.9).tolist() == [[0, 4, 255, 255]]


def mirror_scene() -> tuple[np.ndarray, np.ndarray]:
    """Black background, class 3 (CAM 1) on columns 2-3, class 7 on 5-6, both 0.5 on column 4."""
    image = np.zeros((5, 9, 3), np.uint8)
    image[:, 2:7] = 255
    cams = np.zeros((2, 5, 9), np.float32)
    cams[0, :, 2:4], cams[1, :, 5:7], cams[:, :, 4] = 1.0, 1.0, 0.5
    return image, cams


@pytest.mark.parametrize("backend", BACKENDS)
def test_rough_masks_mark_the_undecided_column(backend: str) -> None:
    # The mirror swaps the two classes, so on the middle column their posteriors tie near 0.5
    # each: no posterior > 0.9, label 255. Elsewhere the unaries (1 vs the 1e-5 clip) decide.
    image, cams = mirror_scene()
    got = rough_labels(image, cams, [3, 7], backend=backend)
    assert got.tolist() == [[0, 0, 3, 3, 255, 7, 7, 0, 0]] * 5


@pytest.mark.parametrize("value", [1.5, -0.2])
def test_maps_outside_the_unit_range_are_refused(value: float) -> None:
    # (1 - M)^alpha of an un-normalised CAM is NaN for M > 1: refuse instead of labelling noise
    cams = np.full((1, 2, 2), value, np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ppg_labels(np.zeros((2, 2, 3), np.uint8), cams, [4], backend="torch")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rough_labels(np.zeros((2, 2, 3), np.uint8), cams, [4], backend="torch")
