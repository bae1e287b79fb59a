"""train-seg on pseudo-labels or ground truth, then predict + score, on a tiny embedded dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsss.config import load_recipe
from wsss.data.palette import read_label_png
from wsss.data.synth import generate_synth
from wsss.pipeline import run_pipeline
from wsss.registry import LOSSES
from wsss.stages.train_seg import FROM_SCRATCH

TINY = [
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "classifier.num_workers=0",
    "classifier.crop_size=64",
    "classifier.resize_long=[56, 72]",
    "cams.scales=[64.0]",
    "segmentation.crop_size=64",
    "segmentation.epochs=2",
    "segmentation.batch_size=4",
    "segmentation.num_workers=0",
    "predict.scales=[0.75, 1.0]",
    "predict.flip=true",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=4, size=64, seed=7, progress=False)
    return root


@pytest.mark.parametrize("labels", ["pseudo", "gt"])
def test_seg_stages_write_scored_predictions(synth_root: Path, tmp_path: Path, labels: str) -> None:
    stages = (
        "[train-cls,make-cams,make-labels,train-seg,predict]" if labels == "pseudo" else "[train-seg,predict]"
    )
    recipe = load_recipe(
        "synth/bnr-nano",
        [
            f"data.root={synth_root}",
            f"stages={stages}",
            f"segmentation.labels={labels}",
            *TINY,
            *(["segmentation.pretrained=null"] if labels == "gt" else []),
        ],
    )
    run = tmp_path / labels
    record = run_pipeline(recipe, run, device="cpu")
    seg = record["stages"]["train-seg"]["metrics"]
    # a random backbone is said out loud (summary and report read metrics["warnings"])
    assert seg.get("warnings") == ([FROM_SCRATCH] if labels == "gt" else None)
    assert seg["labels"] == ("ground truth" if labels == "gt" else str(run / "labels"))
    preds = sorted((run / "predictions").glob("*.png"))
    assert len(preds) == 4 and all(read_label_png(p).max() <= 3 for p in preds)
    saved = json.loads((run / "eval" / "seg_val.json").read_text())
    assert saved["scores"]["num_images"] == 4 and 0.0 <= saved["scores"]["miou"] <= 1.0
    assert saved["summary"]["evaluated_on"] == "val"
    assert record["stages"]["predict"]["metrics"]["val"]["miou"] == saved["scores"]["miou"]


def test_cycle_round_trains_on_round_one_predictions(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 trains with PUF; the cyclic round with plain CE (PMM's round-2 configs)."""
    built: list[tuple[str, str]] = []
    build = LOSSES.build

    def spy(name: str, where: str = "", **kwargs):
        built.append((name, where))
        return build(name, where, **kwargs)

    monkeypatch.setattr(LOSSES, "build", spy)
    recipe = load_recipe(
        "synth/bnr-nano",
        [
            f"data.root={synth_root}",
            "stages=[train-seg,predict,cycle-seg]",
            "segmentation.labels=gt",
            "segmentation.loss=puf",
            *TINY,
        ],
    )
    run = tmp_path / "cycle"
    record = run_pipeline(recipe, run, device="cpu")
    assert built == [("puf", "segmentation.loss"), ("ce", "segmentation.cycle_loss")]
    assert record["stages"]["train-seg"]["metrics"]["loss"] == "puf"
    cycle = record["stages"]["cycle-seg"]["metrics"]
    assert cycle["train"]["loss"] == "ce"
    round1 = sorted((run / "cycle" / "labels").glob("*.png"))
    assert cycle["round1_masks_written"] == len(round1) == 12  # every training image
    assert cycle["train"]["labels"] == str(run / "cycle" / "labels")
    assert (run / "cycle" / "train-seg" / "model.safetensors").is_file()
    assert len(list((run / "cycle" / "predictions").glob("*.png"))) == 4
    saved = json.loads((run / "eval" / "seg_cycle_val.json").read_text())["summary"]
    assert saved["evaluated_on"] == "val" and cycle["val"]["miou"] == saved["miou"]
    # round-1 masks are the round-1 model's predictions: no uncertain pixels, only known classes
    assert all(read_label_png(p).max() <= 3 for p in round1)


def test_select_by_val_is_opt_in_and_labelled(synth_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe(
        "synth/bnr-nano",
        [
            f"data.root={synth_root}",
            "stages=[train-seg,predict,cycle-seg]",
            "segmentation.labels=gt",
            "segmentation.select_by_val=true",
            *TINY,
        ],
    )
    run = tmp_path / "val"
    record = run_pipeline(recipe, run, device="cpu")
    chosen = record["stages"]["train-seg"]["metrics"]["selected_by_val"]
    assert chosen["label"] == "checkpoint chosen by val mIoU (uses val ground truth)"
    assert 1 <= chosen["epoch"] <= 2 and 0.0 <= chosen["miou"] <= 1.0
    assert (run / "train-seg" / "model_best_val.safetensors").is_file()
    assert record["stages"]["cycle-seg"]["metrics"]["round1_checkpoint"] == chosen["label"]
    # without the opt-in the cyclic round reads the last checkpoint
    plain = run_pipeline(
        load_recipe(
            "synth/bnr-nano",
            [
                f"data.root={synth_root}",
                "stages=[train-seg,predict,cycle-seg]",
                "segmentation.labels=gt",
                *TINY,
            ],
        ),
        tmp_path / "last",
        device="cpu",
    )
    assert plain["stages"]["cycle-seg"]["metrics"]["round1_checkpoint"] == "last"
    assert not (tmp_path / "last" / "train-seg" / "model_best_val.safetensors").exists()
