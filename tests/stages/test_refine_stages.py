"""CAM → confident labels (+CRF) → AffinityNet → random walk on a tiny embedded dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.config import load_recipe
from wsss.data.palette import read_label_png
from wsss.data.synth import generate_synth
from wsss.pipeline import run_pipeline

STAGES = "stages=[train-cls,make-cams,eval-cams,make-labels,train-affinity,random-walk]"
TINY = [
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[64.0]",
    "labels.mode=confident",
    "labels.fg_threshold=0.5",
    "labels.low_threshold=0.2",
    "labels.crf=label",
    "labels.crf_backend=torch",
    "affinity.backbone=mobilenet_v2",
    "affinity.model_args={levels: [stage3, stage4], level_channels: [128, 320], embed_dim: 448, output_stride: 8}",
    "affinity.crop_size=64",
    "affinity.resize_long=[56, 80]",
    "affinity.epochs=1",
    "affinity.batch_size=4",
    "affinity.num_workers=0",
    "random_walk.crf_backend=torch",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=4, size=64, seed=5, progress=False)
    return root


def test_affinity_chain_writes_scored_pseudo_masks(synth_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe("synth/bnr-nano", [f"data.root={synth_root}", STAGES, *TINY])
    run = tmp_path / "run"
    record = run_pipeline(recipe, run, device="cpu")
    assert list(record["stages"]) == [
        "train-cls",
        "make-cams",
        "eval-cams",
        "make-labels",
        "train-affinity",
        "random-walk",
    ]
    assert (run / "train-affinity" / "model.safetensors").is_file()
    labels = sorted((run / "labels").glob("*.png"))
    pseudo = sorted((run / "pseudo").glob("*.png"))
    assert len(labels) == len(pseudo) == 16
    seen_uncertain = False
    for path in pseudo:
        mask = read_label_png(path)
        assert mask.shape == (64, 64) and mask.max() <= 3  # walked masks have no uncertain pixels
        conf = read_label_png(run / "labels" / path.name)
        seen_uncertain |= bool((conf == 255).any())
        # a class appears in the walked mask only if the image is tagged with it
        rec = np.load(run / "cams" / f"{path.stem}.npz")
        assert set(np.unique(mask)) <= {0, *rec["keys"].tolist()}
    assert seen_uncertain, "confident labels leave uncertain pixels between the two thresholds"
    pseudo_json = json.loads((run / "eval" / "pseudo.json").read_text())["summary"]
    assert pseudo_json["evaluated_on"] == "train" and 0.0 <= pseudo_json["miou"] <= 1.0
    assert record["stages"]["random-walk"]["metrics"]["miou"] == pseudo_json["miou"]


def test_make_label_applies_the_cam_transform_and_passes_mode_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``labels.cam_transform: cvs`` reshapes the maps the generator receives (built once per
    process), and ``labels.mode_args`` arrive as keywords."""
    import math
    from dataclasses import asdict
    from types import SimpleNamespace

    from wsss.cams.files import save_cam
    from wsss.config import LabelConfig
    from wsss.stages import make_labels

    seen: list[tuple[np.ndarray, list[int], dict]] = []

    def capture(cams, keys, image, cfg, num_classes, **kwargs):
        seen.append((cams.numpy().copy(), keys.tolist(), kwargs))
        return np.zeros(cams.shape[1:], np.uint8)

    monkeypatch.setattr(make_labels, "LABEL_GENERATORS", SimpleNamespace(get=lambda name, where="": capture))
    # float16-exact values; class 3 above t = 0.05: 0.25, 0.5, 1.0 (mean 1.75 / 3, population
    # variance 0.291667 / 3); class 8 is flat (CoV 0): CVS leaves it as it is.
    cams = np.array([[[0.0, 0.25, 0.5, 1.0]], [[0.5, 0.5, 0.5, 0.5]]], np.float32)
    save_cam(tmp_path / "a.npz", cams, [3, 8], (1, 4), norm="minmax")
    cfg = asdict(
        LabelConfig(cam_transform="cvs", cam_transform_args={"cv_scale": 0.3}, mode_args={"alpha": 5.0})
    )
    make_labels.make_label(cfg, tmp_path / "a.npz", tmp_path / "unread.png", 9)
    e = 1.0 - 0.3 * math.sqrt(
        (0.25 - 7 / 12) ** 2 / 3 + (0.5 - 7 / 12) ** 2 / 3 + (1.0 - 7 / 12) ** 2 / 3
    ) / (7 / 12)
    got, keys, kwargs = seen[-1]
    np.testing.assert_allclose(got, [[[0.0, 0.25**e, 0.5**e, 1.0]], [[0.5] * 4]], rtol=1e-6)
    assert keys == [3, 8] and kwargs == {"alpha": 5.0}
    assert make_labels.cam_transform(cfg) is make_labels.cam_transform(cfg)  # built once, then reused
    cfg.update(cam_transform=None, mode_args={})
    make_labels.make_label(cfg, tmp_path / "a.npz", tmp_path / "unread.png", 9)
    assert np.array_equal(seen[-1][0], cams) and seen[-1][2] == {}


def test_ppg_labels_through_the_pipeline(synth_root: Path, tmp_path: Path) -> None:
    """``labels.mode=ppg`` end to end: every pixel labelled, only with background or the image's tags."""
    stages = "stages=[train-cls,make-cams,make-labels]"
    tiny = [s for s in TINY if not s.startswith(("labels.", "affinity.", "random_walk."))]
    ppg = ["labels.mode=ppg", "labels.crf_backend=torch", "labels.mode_args={alpha: 11.0, cv_scale: 0.3}"]
    recipe = load_recipe("synth/bnr-nano", [f"data.root={synth_root}", stages, *tiny, *ppg])
    run = tmp_path / "run"
    run_pipeline(recipe, run, device="cpu")
    labels = sorted((run / "labels").glob("*.png"))
    assert len(labels) == 16
    seen_fg = False
    for path in labels:
        mask = read_label_png(path)
        tags = np.load(run / "cams" / f"{path.stem}.npz")["keys"].tolist()
        assert mask.shape == (64, 64) and set(np.unique(mask).tolist()) <= {0, *tags}
        seen_fg |= bool((mask > 0).any())
    assert seen_fg
