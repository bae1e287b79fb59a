"""A hand-made run directory whose every number and picture is known in advance.

Four 32x32 images of a two-class folder dataset with masks. Images a and b are predicted
perfectly, c gets half its object, d is predicted all background: the report must rank them in
exactly that order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cams.files import save_cam
from wsss.config import load_recipe, save_recipe
from wsss.data.palette import write_label_png

NAMES = ("a", "b", "c", "d")
TAGS = {"a": [1], "b": [2], "c": [1], "d": [2]}


def _gt(name: str) -> np.ndarray:
    gt = np.zeros((32, 32), np.uint8)
    gt[8:24, 8:24] = TAGS[name][0]
    gt[0, :] = 255  # an ignored border row, drawn white
    return gt


def _prediction(name: str) -> np.ndarray:
    pred = _gt(name).copy()
    pred[pred == 255] = 0
    if name == "c":
        pred[8:24, 16:24] = 0  # half the object lost
    if name == "d":
        pred[:] = 0
    return pred


def make_run_dir(tmp: Path, *overrides: str) -> Path:
    data, run = tmp / "data", tmp / "run"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "classes.txt").write_text("cat\ndog\n")
    (data / "val.txt").write_text("\n".join(NAMES) + "\n")
    (data / "train.txt").write_text("\n".join(NAMES[:2]) + "\n")
    (data / "tags.csv").write_text(
        "image,tags\n" + "".join(f"{n}.png,{'cat' if TAGS[n] == [1] else 'dog'}\n" for n in NAMES)
    )
    for k, n in enumerate(NAMES):
        rgb = np.full((32, 32, 3), 40 * k, np.uint8)
        Image.fromarray(rgb).save(data / "images" / f"{n}.png")
        write_label_png(data / "masks" / f"{n}.png", _gt(n))
    for sub in ("cams", "labels", "predictions", "eval"):
        (run / sub).mkdir(parents=True)
    for n in NAMES:
        cam = np.zeros((1, 32, 32), np.float32)
        cam[0, 8:24, 8:24] = 1.0
        save_cam(run / "cams" / f"{n}.npz", cam, TAGS[n], (32, 32), norm="minmax")
        write_label_png(run / "labels" / f"{n}.png", _prediction(n))
        write_label_png(run / "predictions" / f"{n}.png", _prediction(n))
    recipe = load_recipe(
        "synth/bnr-nano",
        [
            "data.dataset=folder",
            f"data.root={data}",
            "data.train_split=val",
            "data.seed_eval_split=val",
            "data.val_split=val",
            "cams.splits=[val]",
            "predict.splits=[val]",
            *overrides,
        ],
    )
    save_recipe(recipe, run / "recipe.yaml")
    record = {
        "recipe": recipe.name,
        "versions": {"wsss": "test"},
        "git_commit": "0123456789abcdef",
        "device": "cpu",
        "stages": {
            "make-labels": {
                "seconds": 1.5,
                "metrics": {
                    "miou": 0.5,
                    "evaluated_on": "val",
                    "per_class_iou": {"background": 0.9, "cat": 0.4},
                },
            },
            "predict": {
                "seconds": 2.0,
                "metrics": {
                    "val": {
                        "written": 4,
                        "miou": 0.625,
                        "evaluated_on": "val",
                        "per_class_iou": {"background": 0.95, "cat": 0.55, "dog": 0.375},
                    }
                },
            },
        },
    }
    (run / "run.json").write_text(json.dumps(record))
    per_class = [
        {"name": "background", "iou": 0.95, "precision": 0.96, "recall": 0.99},
        {"name": "cat", "iou": 0.55, "precision": 0.9, "recall": 0.6},
        {"name": "dog", "iou": 0.375, "precision": 1.0, "recall": 0.375},
    ]
    seg = {
        "summary": {"miou": 0.625, "evaluated_on": "val"},
        "scores": {"miou": 0.625, "per_class": per_class},
    }
    (run / "eval" / "seg_val.json").write_text(json.dumps(seg))
    (run / "eval" / "labels.json").write_text(json.dumps({"summary": {}, "scores": {}}))  # nothing scored
    lines = [json.dumps({"tag": "train-seg/loss", "value": 1.0 / s, "step": s}) for s in range(1, 6)]
    (run / "metrics.jsonl").write_text(
        "\n".join(lines) + '\n{"tag": "train-seg/lo'
    )  # last line cut by a kill
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path)
