"""labels.mode picks a generator from LABEL_GENERATORS; each one gives the hand-computed labels."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.config import LabelConfig, load_recipe
from wsss.errors import ConfigError
from wsss.pipeline import run_pipeline
from wsss.refine.label_generators import check_label_config
from wsss.registry import LABEL_GENERATORS

# one class (id 3) over a 1x4 strip: scores 0.9, 0.5, 0.2, 0.0
CAMS = torch.tensor([[[0.9, 0.5, 0.2, 0.0]]])
KEYS = np.array([3])


def _never_read() -> np.ndarray:
    raise AssertionError("the image is only read for the CRF")


def _cfg(**kw) -> dict:
    return asdict(LabelConfig(**kw))


def test_generators_by_name_without_crf() -> None:
    threshold = LABEL_GENERATORS.get("threshold")(CAMS, KEYS, _never_read, _cfg(bg_threshold=0.3), 4)
    assert threshold.tolist() == [[3, 3, 0, 0]] and threshold.dtype == np.uint8
    confident = LABEL_GENERATORS.get("confident")(
        CAMS, KEYS, _never_read, _cfg(fg_threshold=0.6, low_threshold=0.25), 4
    )
    assert confident.tolist() == [[3, 255, 0, 0]]


def test_alpha_generator_hand_computed() -> None:
    image = np.zeros((1, 4, 3), np.uint8)
    # background (1 - s)^alpha: alpha 1 -> 0.1, 0.5, 0.8, 1.0; alpha 4 -> 0.0001, 0.0625, 0.41, 1.0.
    # la (alpha_fg 1): class where s > 1 - s, i.e. pixel 0 only; ha (alpha_bg 4): background where
    # (1 - s)^4 >= s: pixels 2 and 3. So 3, uncertain, 0, 0.
    got = LABEL_GENERATORS.get("alpha")(
        CAMS, KEYS, lambda: image, _cfg(alpha_fg=1.0, alpha_bg=4.0, crf=None), 4
    )
    assert got.tolist() == [[3, 255, 0, 0]]


def test_alpha_generator_refuses_the_dataset_label_space() -> None:
    with pytest.raises(ConfigError, match="crf_label_space"):
        LABEL_GENERATORS.get("alpha")(CAMS, KEYS, _never_read, _cfg(crf_label_space="dataset"), 4)


@pytest.mark.parametrize("mode", ["threshold", "confident"])
@pytest.mark.parametrize("space", ["present", "dataset"])
def test_generators_pass_the_crf_label_space(monkeypatch: pytest.MonkeyPatch, mode: str, space: str) -> None:
    """``crf_label_space: dataset`` runs the label CRF over all 21 labels in label-space ids;
    ``present`` over background + the tagged class in compact ids (IRN)."""
    import wsss.refine.crf as crf_module

    seen: list[tuple[int, set[int]]] = []

    def fake_crf_labels(image, labels, params, *, n_labels, backend):
        seen.append((n_labels, set(np.unique(labels).tolist())))
        return labels

    monkeypatch.setattr(crf_module, "crf_labels", fake_crf_labels)
    image = np.zeros((1, 4, 3), np.uint8)
    cfg = _cfg(mode=mode, bg_threshold=0.3, crf="label", crf_label_space=space)
    got = LABEL_GENERATORS.get(mode)(CAMS, KEYS, lambda: image, cfg, 21)
    want_n, want_ids = (21, {0, 3}) if space == "dataset" else (2, {0, 1})
    assert seen and all(n == want_n and ids == want_ids for n, ids in seen)
    assert set(np.unique(got).tolist()) <= {0, 3, 255}


def test_unknown_mode_fails_before_any_work(tmp_path: Path) -> None:
    recipe = load_recipe("synth/bnr-nano", [f"data.root={tmp_path / 'data'}", "labels.mode=treshold"])
    with pytest.raises(ConfigError, match=r"labels\.mode.*threshold"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()


def test_ppg_and_rough_by_name_take_their_mode_args() -> None:
    """The generators read their settings from keywords (labels.mode_args) and the backend from cfg."""
    from tests.refine.test_ppg import mirror_scene, overlap_scene

    image, cams, want = overlap_scene()
    ppg = LABEL_GENERATORS.get("ppg")(
        torch.from_numpy(cams), np.array([3, 7]), lambda: image, _cfg(crf_backend="torch"), 8, alpha=11.0
    )
    assert np.array_equal(ppg, want)
    # the mirror scene's middle column ties near 0.5: 255 at confidence 0.9, a class at 0.3
    image, cams = mirror_scene()
    rough = LABEL_GENERATORS.get("rough")
    cfg = _cfg(crf_backend="torch")
    assert (rough(torch.from_numpy(cams), np.array([3, 7]), lambda: image, cfg, 8)[:, 4] == 255).all()
    low = rough(torch.from_numpy(cams), np.array([3, 7]), lambda: image, cfg, 8, confidence=0.3)
    assert set(low[:, 4].tolist()) <= {3, 7}


def test_ppg_refuses_a_cvs_transform_in_front() -> None:
    cfg = _cfg(mode="ppg", cam_transform="cvs")
    with pytest.raises(ConfigError, match=r"already smooths.*cv_scale"):
        LABEL_GENERATORS.get("ppg")(CAMS, KEYS, _never_read, cfg, 4)
    with pytest.raises(ConfigError, match="already smooths"):
        check_label_config(cfg)
    check_label_config(_cfg(mode="threshold", cam_transform="cvs"))  # other modes may use it


@pytest.mark.parametrize(
    ("mode", "kw", "match"),
    [
        ("rough", {"mode_args": {"crf": "label"}}, "softmax"),
        ("ppg", {"mode_args": {"cv_scale": -1.0}}, "cv_scale"),
        ("ppg", {"mode_args": {"alpah": 3.0}}, r"labels\.mode_args\.alpah"),
        ("threshold", {"mode_args": {"alpha": 3.0}}, r"labels\.mode_args\.alpha"),
        ("rough", {"crf_label_space": "dataset"}, "crf_label_space"),
    ],
)
def test_label_config_checks_fail_before_any_image(mode: str, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_label_config(_cfg(mode=mode, **kw))


def test_ppg_with_a_cvs_transform_fails_before_any_training(tmp_path: Path) -> None:
    """PPG smooths with CVS itself: asking for the transform too is refused before train-cls runs."""
    recipe = load_recipe(
        "synth/bnr-nano", [f"data.root={tmp_path / 'data'}", "labels.mode=ppg", "labels.cam_transform=cvs"]
    )
    with pytest.raises(ConfigError, match="cv_scale"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()


def test_unknown_mode_args_key_fails_before_any_work(tmp_path: Path) -> None:
    recipe = load_recipe(
        "synth/bnr-nano", [f"data.root={tmp_path / 'data'}", "labels.mode=ppg", "labels.mode_args={alpah: 3}"]
    )
    with pytest.raises(ConfigError, match=r"labels\.mode_args\.alpah"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()
