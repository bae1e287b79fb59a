"""A user's own folder (images + tags.csv + classes.txt, no masks) through the real ``wsss run``.

The folder is what a user would bring: mixed image formats and sizes, one image tagged with
nothing (background only), split list files, and a recipe of their own that inherits the
shipped synth recipe and only says where the data is and how long to train. No code changes:
the CLI runs in a subprocess, exactly as from a shell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.images import image_size
from wsss.data.palette import IGNORE_INDEX, read_label_png
from wsss.data.synth import generate_synth

NUM_TRAIN, NUM_VAL = 32, 8
STAGES = ["train-cls", "make-cams", "eval-cams", "make-labels", "train-seg", "predict"]
BACKGROUND_ONLY = "empty_wall"


@dataclass
class UserRun:
    """The user's folder, the tags it holds, and the finished run directory."""

    folder: Path
    classes: list[str]
    tags: dict[str, set[int]]  # image stem -> tagged class indices (1..K)
    splits: dict[str, list[str]]
    run: Path


def _make_user_folder(work: Path) -> tuple[Path, list[str], dict[str, set[int]], dict[str, list[str]]]:
    """Copy synth images into a folder layout, dropping the masks; vary formats and sizes."""
    synth = work / "synth"
    generate_synth(synth, seed=5, num_train=NUM_TRAIN, num_val=NUM_VAL, size=64, progress=False)
    meta = json.loads((synth / "synth_meta.json").read_text())
    classes = meta["classes"][1:]  # foreground names, index 1 first
    folder = work / "my photos"  # a space in the path, as users' folders have
    images = folder / "images"
    images.mkdir(parents=True)
    tags: dict[str, set[int]] = {}
    splits: dict[str, list[str]] = {}
    for split in ("train", "val"):
        names = (synth / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        splits[split] = names
        for i, name in enumerate(names):
            img = Image.open(synth / "JPEGImages" / f"{name}.jpg").convert("RGB")
            if i % 3 == 1:  # some landscape images of another size
                img = img.resize((80, 56), Image.Resampling.BILINEAR)
            suffix = ".png" if i % 4 == 2 else ".jpg"
            img.save(images / f"{name}{suffix}")
            tags[name] = set(meta["images"][name]["classes"])
    rng = np.random.default_rng(0)
    noise = rng.integers(90, 140, size=(60, 72, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / f"{BACKGROUND_ONLY}.png")
    tags[BACKGROUND_ONLY] = set()
    splits["train"].append(BACKGROUND_ONLY)
    rows = ["image,tags"]
    for name, found in tags.items():
        file = next(images.glob(f"{name}.*")).name
        rows.append(f"{file},{';'.join(classes[c - 1] for c in sorted(found))}")
    (folder / "tags.csv").write_text("\n".join(rows) + "\n")
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, names in splits.items():
        (folder / f"{split}.txt").write_text("\n".join(names) + "\n")
    return folder, classes, tags, splits


def _write_user_recipe(path: Path, folder: Path) -> None:
    base = resources.files("wsss.config.recipes").joinpath("synth/bnr-nano.yaml")
    path.write_text(
        f"""# my own data, everything else as in the shipped synth recipe
base: {json.dumps(str(base))}
name: my/photos
data:
  dataset: folder
  root: {json.dumps(str(folder))}
  train_split: train
  seed_eval_split: train
  val_split: val
classifier: {{epochs: 1, num_workers: 0, resize_long: [56, 72], crop_size: 64}}
cams: {{scales: [64.0]}}
segmentation: {{epochs: 1, pretrained: null, num_workers: 0, crop_size: 64, batch_size: 8}}
predict: {{scales: [1.0], flip: true}}
"""
    )


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> UserRun:
    work = tmp_path_factory.mktemp("user")
    folder, classes, tags, splits = _make_user_folder(work)
    assert not (folder / "masks").exists()
    recipe = work / "my_recipe.yaml"
    _write_user_recipe(recipe, folder)
    run = work / "runs" / "photos"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "wsss", "run", str(recipe), "--out", str(run), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, f"wsss run failed ({res.returncode}):\n{res.stderr[-4000:]}"
    return UserRun(folder, classes, tags, splits, run)


def _image_path(folder: Path, name: str) -> Path:
    return next((folder / "images").glob(f"{name}.*"))


def test_every_stage_ran_and_was_timed(user_run: UserRun) -> None:
    record = json.loads((user_run.run / "run.json").read_text())
    assert list(record["stages"]) == STAGES
    for name in STAGES:
        seconds = record["stages"][name]["seconds"]
        assert isinstance(seconds, (int, float)) and seconds >= 0, name
    assert record["config"]["data"]["dataset"] == "folder"
    assert record["stages"]["make-cams"]["metrics"]["written"] == NUM_TRAIN + 1 + NUM_VAL


def test_pseudo_masks_use_only_background_and_the_images_tags(user_run: UserRun) -> None:
    k = len(user_run.classes)
    names = user_run.splits["train"] + user_run.splits["val"]  # the map splits (cams.splits)
    written = sorted(p.stem for p in (user_run.run / "labels").glob("*.png"))
    assert written == sorted(names)
    with_objects = 0
    for name in names:
        mask = read_label_png(user_run.run / "labels" / f"{name}.png")
        assert mask.shape == image_size(_image_path(user_run.folder, name)), name
        values = set(np.unique(mask).tolist())
        assert values <= set(range(k + 1)) | {IGNORE_INDEX}, name
        assert values <= {0, IGNORE_INDEX} | user_run.tags[name], f"{name}: {values} vs {user_run.tags[name]}"
        with_objects += bool(values & user_run.tags[name])
    # not vacuous: the masks do mark the tagged objects (35 of 40 images on this seed)
    assert with_objects >= (len(names) - 1) // 2
    empty = read_label_png(user_run.run / "labels" / f"{BACKGROUND_ONLY}.png")
    assert set(np.unique(empty).tolist()) <= {0, IGNORE_INDEX}


def test_predictions_for_every_val_image(user_run: UserRun) -> None:
    k = len(user_run.classes)
    names = user_run.splits["val"]  # predict.splits defaults to [val]
    assert sorted(p.stem for p in (user_run.run / "predictions").glob("*.png")) == sorted(names)
    for name in names:
        pred = read_label_png(user_run.run / "predictions" / f"{name}.png")
        assert pred.shape == image_size(_image_path(user_run.folder, name)), name
        assert set(np.unique(pred).tolist()) <= set(range(k + 1)), name


def test_no_ground_truth_means_no_number(user_run: UserRun) -> None:
    record = json.loads((user_run.run / "run.json").read_text())
    cams = record["stages"]["eval-cams"]["metrics"]
    assert cams["splits"] == {} and cams["chosen_threshold"] is None
    assert cams["not_scored"] == {"train": "no ground-truth masks", "val": "no ground-truth masks"}
    saved = json.loads((user_run.run / "eval" / "cams.json").read_text())["summary"]
    assert saved == cams
    labels = record["stages"]["make-labels"]["metrics"]
    assert labels["written"] == NUM_TRAIN + 1 + NUM_VAL and "miou" not in labels
    assert "ground-truth" in labels["not_scored"]
    predicted = record["stages"]["predict"]["metrics"]["val"]
    assert predicted["written"] == NUM_VAL and "miou" not in predicted
    assert "ground-truth" in predicted["not_scored"]
    assert "miou" not in json.dumps(record["stages"])


def test_report_shows_pictures_and_says_why_nothing_is_scored(user_run: UserRun) -> None:
    page = (user_run.run / "report.html").read_text()
    assert "No per-class scores" in page and "has no ground truth" in page
    assert "not scored: train: no ground-truth masks; val: no ground-truth masks" in page
    assert 'id="val-best"' not in page and 'id="val-worst"' not in page  # nothing to rank by
    sample = re.search(r'<table class="grid" id="val-sample">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", sample, re.S)[1:]
    assert len(rows) == 6
    # image, CAM, pseudo-mask and prediction of each val image; its ground-truth cell is empty
    assert all(row.count("data:image/png;base64,") == 4 and row.count('class="missing"') == 1 for row in rows)
