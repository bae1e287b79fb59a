"""PMM's heat crops: the window grid, the relabelling rule, the dataset items and the wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tests.stage_context import cpu_context
from wsss.config import load_recipe
from wsss.data.base import TaggedImageDataset
from wsss.data.heat_crops import (
    HeatCropDataset,
    crop_labels,
    pick_window,
    scaled_windows,
    window_grid,
    window_spans,
)
from wsss.data.palette import read_label_png, write_label_png
from wsss.data.synth import generate_synth
from wsss.data.transforms import denormalize
from wsss.errors import ConfigError, DataError
from wsss.pipeline import run_pipeline
from wsss.stages import train_cls

# ----------------------------------------------------------------------------- window grid


def test_window_spans_hand_computed() -> None:
    # 1000 px, window 448, stride 300: 1 + ceil(552 / 300) = 3 windows, the last flush with the border
    assert window_spans(1000, 448, 300) == [(0, 448), (300, 748), (552, 1000)]
    # PMM's code cuts all but the last window only stride wide
    assert window_spans(1000, 448, 300, authors_code=True) == [(0, 300), (300, 600), (552, 1000)]
    assert window_spans(748, 448, 300) == [(0, 448), (300, 748)]
    assert window_spans(449, 448, 300) == [(0, 448), (1, 449)]
    assert window_spans(449, 448, 300, authors_code=True) == [(0, 300), (1, 449)]
    # as long as or shorter than the window: one window over the whole axis
    for rule in (False, True):
        assert window_spans(448, 448, 300, authors_code=rule) == [(0, 448)]
        assert window_spans(250, 448, 300, authors_code=rule) == [(0, 250)]


def test_window_grid_is_column_major_boxes() -> None:
    assert window_grid((300, 1000), 448, 300) == [(0, 0, 300, 448), (0, 300, 300, 748), (0, 552, 300, 1000)]
    # rows: 1 + ceil(28 / 24) = 3, the last two overlapping by 28 px; columns: 2
    rows = [(0, 32), (24, 56), (28, 60)]
    assert window_spans(60, 32, 24) == rows and window_spans(40, 32, 24) == [(0, 32), (8, 40)]
    assert window_grid((60, 40), 32, 24) == [
        (y0, x0, y1, x1) for x0, x1 in [(0, 32), (8, 40)] for y0, y1 in rows
    ]


def test_scaled_windows_map_back_to_the_original() -> None:
    # 375x500 at 2.0 → 750x1000: rows (0,448) (300,748) (302,750), cols (0,448) (300,748) (552,1000), halved
    boxes = scaled_windows((375, 500), 2.0, 448, 300)
    assert boxes[:3] == [(0, 0, 224, 224), (150, 0, 374, 224), (151, 0, 375, 224)]
    assert boxes[-1] == (151, 276, 375, 500) and len(boxes) == 9
    # at 0.75 the scaled image (281x375) is smaller than a window: one box, the whole image
    assert scaled_windows((375, 500), 0.75, 448, 300) == [(0, 0, 375, 500)]
    # PMM floors int(281.25) = 281 and int(281 / 0.75) = 374: its box misses the last row
    assert scaled_windows((375, 500), 0.75, 448, 300, authors_code=True) == [(0, 0, 374, 500)]


@pytest.mark.parametrize("authors_code", [False, True])
def test_windows_cover_every_pixel(authors_code: bool) -> None:
    g = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in g.integers(5, 400, 2))
        window = int(g.integers(8, 128))
        stride = int(g.integers(1, window + 1))
        cover = np.zeros((h, w), dtype=int)
        for y0, x0, y1, x1 in window_grid((h, w), window, stride, authors_code=authors_code):
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            cover[y0:y1, x0:x1] += 1
        assert cover.min() >= 1


def test_clean_grid_refuses_gaps() -> None:
    with pytest.raises(ConfigError, match="stride 40 > window 32"):
        window_spans(100, 32, 40)


# ----------------------------------------------------------------------------- relabelling


def _rough() -> np.ndarray:
    """60x60 rough mask; the crop under test is (0, 0, 20, 20), 400 px. 255 (unsure) elsewhere."""
    r = np.full((60, 60), 255, dtype=np.uint8)
    r[30:, :] = 0
    r[0, 0:8] = 1  # class 1: 8 of its 10 px inside (80 %), 2 % of the crop
    r[59, 0:2] = 1
    r[1:4, 0:20] = 2  # class 2: 60 px inside (15 % of the crop), < 10 % of its 1000 px
    r[35:50, 0:59] = 2
    r[50, 0:55] = 2
    r[4, 0:20] = 3  # class 3: 20 px inside: 5 % of its 400 px and 5 % of the crop
    r[51:57, 0:60] = 3
    r[57, 0:20] = 3
    return r


def test_relabelling_rule_on_a_hand_picked_crop() -> None:
    rough, box = _rough(), (0, 0, 20, 20)
    totals = np.bincount(rough.ravel(), minlength=256)
    assert totals[1] == 10 and totals[2] == 1000 and totals[3] == 400
    labels = crop_labels(rough, box, num_fg=4, keep=0.1)
    # 1 stays by the share of its pixels, 2 by the share of the crop, 3 (5 % / 5 %) and 4 (absent) go
    assert labels.tolist() == [True, True, False, False]
    assert crop_labels(rough, box, num_fg=4, keep=0.04).tolist() == [True, True, True, False]
    assert crop_labels(rough, box, num_fg=4, keep=0.9).tolist() == [False, False, False, False]
    # a crop over the two outside pixels of class 1 only: 20 % of the class, 2 / 100 of the crop
    assert crop_labels(rough, (50, 0, 60, 10), 4, 0.1).tolist() == [True, False, True, False]


def test_pick_window_finds_the_only_labelled_window() -> None:
    rough = np.zeros((30, 90), dtype=np.uint8)
    rough[5:25, 70:85] = 2  # only the last of three 30-px windows holds a class
    boxes = window_grid((30, 90), 30, 30)
    for seed in range(20):
        torch.manual_seed(seed)
        box, labels = pick_window(rough, boxes, np.array([1.0, 1.0, 0.0]), 0.1)
        assert box == (0, 60, 30, 90) and labels.tolist() == [0.0, 1.0, 0.0]
    # a class the image is not tagged with never enters the label: fallback, empty vector
    box, labels = pick_window(rough, boxes, np.array([1.0, 0.0, 0.0]), 0.1)
    assert box in boxes and labels.tolist() == [0.0, 0.0, 0.0]
    # PMM draws with replacement and can miss it: over many draws some fall back
    misses = 0
    for seed in range(200):
        torch.manual_seed(seed)
        misses += pick_window(rough, boxes, np.array([1.0, 1.0, 0.0]), 0.1, authors_code=True)[1].sum() == 0
    assert 30 < misses < 90  # expected (2/3)^3 ≈ 30 % of 200


# ----------------------------------------------------------------------------- the dataset


def _tiny_set(root: Path, rough_dir: Path | None = None) -> TaggedImageDataset:
    """Three 48x64 images with two-class rough masks; image 1 is tagged with class 1 only."""
    g = np.random.default_rng(0)
    names, paths, labels = [], [], []
    rough = np.zeros((48, 64), dtype=np.uint8)
    rough[4:20, 4:30] = 1
    rough[30:46, 40:62] = 2
    rough[24:28, :] = 255
    for i in range(3):
        name = f"img{i}"
        path = root / f"{name}.png"
        Image.fromarray(g.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        names.append(name)
        paths.append(path)
        labels.append([1.0, 0.0] if i == 1 else [1.0, 1.0])
        if rough_dir is not None:
            write_label_png(rough_dir / f"{name}.png", rough)
    return TaggedImageDataset(
        names=names,
        image_paths=paths,
        labels=np.array(labels, dtype=np.float32),
        class_names=("background", "a", "b"),
        with_masks=False,
    )


def test_heat_crop_items(tmp_path: Path) -> None:
    base = _tiny_set(tmp_path, tmp_path)
    ds = HeatCropDataset(
        base, tmp_path, crop_size=24, scales=[0.75, 1.0, 2.0], stride=16, flip=False, color_jitter=None
    )
    torch.manual_seed(0)
    seen_scales, seen_boxes = set(), set()
    for _ in range(10):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
            assert item["size"] == (48, 64) and item["name"] == base.names[i]
            tags = torch.from_numpy(base.labels[i])
            assert (item["labels"] <= tags).all()  # ⊆ the image's tags
            box = tuple(item["box"].tolist())
            assert box in scaled_windows((48, 64), item["scale"], 24, 16)
            rough = read_label_png(tmp_path / f"{base.names[i]}.png")
            expected = crop_labels(rough, box, 2, 0.1) & (base.labels[i] > 0)
            assert item["labels"].tolist() == expected.astype(float).tolist()
            # the pixels are the box's, resized (no flip, no jitter here)
            y0, x0, y1, x1 = box
            want = TF.resize(
                base[i]["image"][:, y0:y1, x0:x1], [24, 24], InterpolationMode.BICUBIC, antialias=True
            )
            assert (denormalize(item["image"]).int() - want.int()).abs().max() <= 1
            seen_scales.add(item["scale"])
            seen_boxes.add(box)
        assert ds[1]["labels"][1] == 0  # image 1 is not tagged with class 2
    assert seen_scales == {0.75, 1.0, 2.0} and len(seen_boxes) > 4


def test_heat_crops_follow_the_torch_seed(tmp_path: Path) -> None:
    ds = HeatCropDataset(_tiny_set(tmp_path, tmp_path), tmp_path, crop_size=24, scales=[1.0, 2.0], stride=16)

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [ds[i % 3]["image"] for i in range(6)]

    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_missing_rough_mask_names_the_file(tmp_path: Path) -> None:
    masks = tmp_path / "rough"
    masks.mkdir()
    base = _tiny_set(tmp_path, masks)
    (masks / "img2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 rough masks.*img2\.png.*make-labels"):
        HeatCropDataset(base, masks, crop_size=24, scales=[1.0], stride=16)


# ----------------------------------------------------------------------------- train-cls wiring


def test_heat_masks_must_be_a_folder(tmp_path: Path) -> None:
    def cfg(*sets: str):
        return load_recipe("synth/bnr-nano", ["classifier.crops=heat", *sets]).classifier

    with pytest.raises(ConfigError, match="heat_masks is not set"):
        train_cls.heat_mask_folder(cfg())
    with pytest.raises(ConfigError, match="not a folder"):
        train_cls.heat_mask_folder(cfg(f"classifier.heat_masks={tmp_path / 'nope'}"))
    assert train_cls.heat_mask_folder(cfg(f"classifier.heat_masks={tmp_path}")) == tmp_path


def test_heat_masks_are_checked_before_any_stage_runs(tmp_path: Path) -> None:
    recipe = load_recipe(
        "synth/bnr-nano",
        [f"data.root={tmp_path / 'data'}", "classifier.crops=heat", "classifier.heat_masks=nope"],
    )
    with pytest.raises(ConfigError, match="not a folder"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists() and not (tmp_path / "run" / "recipe.yaml").exists()


def test_train_cls_trains_on_heat_crops(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_synth(root, num_train=8, num_val=2, size=64, seed=3, progress=False)
    # the ground-truth masks stand in for a phase-A run's rough labels (same format, 255 = unsure)
    sets = [
        f"data.root={root}",
        "classifier.crops=heat",
        f"classifier.heat_masks={root / 'SegmentationClass'}",
        "classifier.heat_scales=[1.0, 1.5]",
        "classifier.heat_stride=24",
        "classifier.crop_size=48",
        "classifier.epochs=1",
        "classifier.batch_size=4",
        "classifier.num_workers=0",
    ]
    ctx = cpu_context(load_recipe("synth/bnr-nano", sets), tmp_path / "run")
    ds = train_cls.training_set(ctx)
    assert isinstance(ds, HeatCropDataset) and ds.scales == [1.0, 1.5] and ds.stride == 24
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and (item["labels"] <= torch.from_numpy(ds.labels[0])).all()
    # compat: authors_code (recipe-wide or the classifier's own) switches to PMM's grid and draws
    pmm = cpu_context(load_recipe("synth/bnr-nano", [*sets, "compat=authors_code"]), tmp_path)
    assert not ds.authors_code and train_cls.training_set(pmm).authors_code
    metrics = train_cls.run(ctx)
    assert metrics["steps"] == 2 and ctx.paths.classifier_weights.is_file()
