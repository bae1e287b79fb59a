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
