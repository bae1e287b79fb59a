"""Confident-label mining: hand-computed threshold/α rules, and the CRF filling a CAM hole on a toy image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.refine.crf import label_space_crf
from wsss.refine.mining import (
    alpha_scores,
    mine_labels_alpha,
    mine_labels_thresholds,
    threshold_labels_crf,
)
from wsss.refine.seeds import confident_labels

BACKENDS = ["torch", pytest.param("exact", marks=pytest.mark.crf)]


def _skip_if_missing(backend: str) -> None:
    if backend == "exact":
        pytest.importorskip("pydensecrf")


def _blank(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def test_thresholds_without_crf_hand_computed() -> None:
    a = [[0.9, 0.3, 0.1, 0.6], [0.5, 0.0, 0.7, 0.0]]
    b = [[0.2, 0.65, 0.1, 0.0], [0.1, 0.0, 0.8, 0.2]]
    cams = np.array([a, b], np.float32)
    got = mine_labels_thresholds(_blank(2, 4), cams, [3, 5], fg_threshold=0.6, bg_threshold=0.2, crf=None)
    # 0.6 ties the fg plane and 0.2 ties the bg plane: ties go to background
    want = np.array([[3, 5, 0, 255], [255, 0, 5, 0]], np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_thresholds_without_crf_equal_the_dual_threshold_seed() -> None:
    """Off ties, IRN mining without CRF is the dual-threshold rule of wsss.refine.seeds."""
    rng = np.random.default_rng(3)
    cams = rng.random((3, 9, 11)).astype(np.float32)
    keys = [2, 7, 19]
    got = mine_labels_thresholds(_blank(9, 11), cams, keys, 0.7, 0.3, crf=None)
    want = confident_labels(torch.from_numpy(cams), torch.tensor(keys), 0.7, 0.3).numpy()
    np.testing.assert_array_equal(got, want)


def test_no_keys_is_all_background() -> None:
    empty = np.zeros((0, 4, 5), np.float32)
    np.testing.assert_array_equal(mine_labels_thresholds(_blank(4, 5), empty, [], 0.6, 0.25), 0)
    np.testing.assert_array_equal(mine_labels_alpha(_blank(4, 5), empty, [], crf=None), 0)


def test_alpha_without_crf_hand_computed() -> None:
    cams = np.array([[[0.5, 0.1, 0.01, 0.0]]], np.float32)
    # la bg = (1-m)^4: 0.0625, 0.656, 0.961, 1; ha bg = (1-m)^32: ~0, 0.034, 0.725, 1
    np.testing.assert_allclose(
        alpha_scores(_blank(1, 4), cams, 4.0, crf=None)[0, 0], [0.0625, 0.6561, 0.96059601, 1.0], rtol=1e-5
    )
    got = mine_labels_alpha(_blank(1, 4), cams, [7], alpha_fg=4, alpha_bg=32, crf=None)
    np.testing.assert_array_equal(got, [[7, 255, 0, 0]])


def test_input_checks() -> None:
    cams = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="n_keys = 1"):
        mine_labels_thresholds(_blank(3, 3), cams, [1], 0.6, 0.2)
    with pytest.raises(ValueError, match="distinct class ids"):
        mine_labels_thresholds(_blank(3, 3), cams, [1, 255], 0.6, 0.2)
    with pytest.raises(ValueError, match="must not exceed"):
        mine_labels_thresholds(_blank(3, 3), cams, [1, 2], 0.2, 0.6)
    with pytest.raises(ValueError, match="image is"):
        mine_labels_alpha(_blank(4, 3), cams, [1, 2])


def _object_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Red 16x16 square (class 3) on grey; its CAM is 0.9 with a weak 4x4 hole and a 0.5 halo ring."""
    h, w = 32, 36
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 10:26] = 3
    image = np.full((h, w, 3), 128, np.uint8)
    image[mask == 3] = [220, 30, 30]
    cam = np.zeros((h, w), np.float32)
    cam[6:26, 8:28] = 0.5  # halo: above the bg threshold, below the fg threshold
    cam[8:24, 10:26] = 0.9
    cam[14:18, 16:20] = 0.4  # hole: the CAM misses the middle of the object
    return image, mask, cam[None]


def test_threshold_mining_without_crf_leaves_hole_and_halo_uncertain() -> None:
    image, _mask, cams = _object_scene()
    got = mine_labels_thresholds(image, cams, [3], 0.6, 0.25, crf=None)
    assert (got[14:18, 16:20] == 255).all()
    assert (got[6:8, 8:28] == 255).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_mining_with_crf_recovers_the_object(backend: str) -> None:
    """The label CRF fills the hole (red like the object) and drops the halo (grey like the background)."""
    _skip_if_missing(backend)
    image, mask, cams = _object_scene()
    got = mine_labels_thresholds(image, cams, [3], 0.6, 0.25, crf="label", backend=backend)
    np.testing.assert_array_equal(got, mask)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_mining_with_crf_recovers_the_object(backend: str) -> None:
    _skip_if_missing(backend)
    image, mask, cams = _object_scene()
    cams = np.where(cams == 0.5, 0.05, cams)  # no halo; the 0.4 hole is uncertain for α = 4 ...
    cams = np.where(cams == 0.4, 0.1, cams).astype(np.float32)
    plain = mine_labels_alpha(image, cams, [3], crf=None)
    assert (plain[14:18, 16:20] == 255).all()
    got = mine_labels_alpha(image, cams, [3], crf="psa", backend=backend)  # ... until the CRF fills it
    np.testing.assert_array_equal(got, mask)


# A faint square object (CAM 0.9) on a grey image, `contrast` grey levels brighter than the
# background: the label CRF keeps it only when a non-chosen label is expensive. With the image's
# own labels (background + class 3) a non-chosen label costs -log(0.3) = 1.20; with VOC's 21
# labels -log(0.3/20) = 4.20, so the object's unary holds against the bilateral pull of the
# background. The (size, contrast) of each backend sits between the two break points
# (exact: the object survives from contrast 6 with 2 labels and from 5 with 21; torch: 10 and 9).
LABEL_SPACE_CASES = [
    pytest.param("exact", 8, 5, marks=pytest.mark.crf),
    pytest.param("torch", 4, 9),
]


@pytest.mark.parametrize(("backend", "size", "contrast"), LABEL_SPACE_CASES)
def test_crf_label_space_decides_whether_a_faint_object_survives(
    backend: str, size: int, contrast: int
) -> None:
    _skip_if_missing(backend)
    image = np.full((32, 32, 3), 128, np.uint8)
    image[8 : 8 + size, 8 : 8 + size] = 128 + contrast
    cams = np.zeros((1, 32, 32), np.float32)
    cams[0, 8 : 8 + size, 8 : 8 + size] = 0.9
    present = threshold_labels_crf(image, cams, [3], 0.5, "label", backend, label_space=None)
    dataset = threshold_labels_crf(image, cams, [3], 0.5, "label", backend, label_space=21)
    assert (present == 3).sum() == 0  # 2 labels: the CRF flips the object to background
    assert (dataset == 3).sum() == size * size  # 21 labels: the object stays, exactly
    assert (dataset[cams[0] == 0] == 0).all()


def test_label_space_crf_maps_ids_and_checks_the_space() -> None:
    image = np.full((6, 6, 3), 100, np.uint8)
    labels = np.zeros((6, 6), np.int64)
    labels[1:5, 1:5] = 7
    image[labels == 7] = 200
    out = label_space_crf(image, labels, [7, 12], "label", label_space=None, backend="torch")
    np.testing.assert_array_equal(out, labels)  # a clear object keeps its label-space id 7
    out = label_space_crf(image, labels, [7, 12], "label", label_space=21, backend="torch")
    np.testing.assert_array_equal(out, labels)
    with pytest.raises(ValueError, match="label space of 5"):
        label_space_crf(image, labels, [7], "label", label_space=5, backend="torch")


def test_random_walk_crf_uses_the_recipe_label_space() -> None:
    """The walk's CRF (TransCAM infer_aff: 21 labels) keeps the faint object that the IRN-style
    label space (background + the image's tags) drops."""
    from wsss.stages.random_walk import crf_refine

    image = np.full((32, 32, 3), 128, np.uint8)
    image[8:12, 8:12] = 137
    walked = np.zeros((32, 32), np.uint8)
    walked[8:12, 8:12] = 3
    keys = np.array([3, 9])
    assert (crf_refine(image, walked, keys, "label", "torch", None) == 3).sum() == 0
    assert (crf_refine(image, walked, keys, "label", "torch", 21) == 3).sum() == 16
