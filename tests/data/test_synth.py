"""The embedded synth benchmark: determinism, VOC-style masks, truthful tags, context bias, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data.images import read_image
from wsss.data.palette import IGNORE_INDEX, read_label_png
from wsss.data.synth import (
    META_FILE,
    PARAMS_FILE,
    SynthParams,
    generate_synth,
    num_background_styles,
    preferred_style,
    render_sample,
    sample_name,
    synth_class_names,
)
from wsss.errors import ConfigError, DataError

K = 6
SMALL = {"num_classes": K, "num_train": 20, "num_val": 10, "size": 64, "progress": False}


def _split_names(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _all_names(root: Path) -> list[str]:
    return _split_names(root, "train") + _split_names(root, "val")


def _mask(root: Path, name: str) -> np.ndarray:
    return read_label_png(root / "SegmentationClass" / f"{name}.png")


def _image(root: Path, name: str) -> np.ndarray:
    return read_image(root / "JPEGImages" / f"{name}.jpg")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "ds"
    return root, generate_synth(root, seed=0, **SMALL)


@pytest.fixture(scope="module")
def context_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_ctx") / "ds"
    summary = generate_synth(
        root, num_classes=K, num_train=300, num_val=0, size=64, seed=3, context_prob=0.7, progress=False
    )
    return root, summary


def test_voc_layout_names_and_classes(small: tuple[Path, dict]) -> None:
    root, summary = small
    assert (root / "classes.txt").read_text().splitlines() == ["background", *synth_class_names(K)]
    assert synth_class_names(K) == ["disc", "square", "triangle", "ring", "cross", "star"]
    assert _split_names(root, "train") == [f"synth_train_{i:06d}" for i in range(20)]
    assert _split_names(root, "val") == [f"synth_val_{i:06d}" for i in range(10)]
    assert summary["counts"] == {"train": 20, "val": 10}
    assert summary["skipped"] is False
    for name in _all_names(root):
        assert _image(root, name).shape == (64, 64, 3)
        assert _mask(root, name).shape == (64, 64)
    # nothing half-written is left behind (atomic writes use hidden temporary names)
    assert not [p for p in root.rglob(".*") if p.is_file()]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path, small: tuple[Path, dict]) -> None:
    root_a, _ = small
    root_b = tmp_path / "b"
    generate_synth(root_b, seed=0, **SMALL)
    for name in _all_names(root_a):
        a = (root_a / "SegmentationClass" / f"{name}.png").read_bytes()
        assert a == (root_b / "SegmentationClass" / f"{name}.png").read_bytes()
        assert np.array_equal(_image(root_a, name), _image(root_b, name))

    root_c = tmp_path / "c"
    generate_synth(root_c, seed=1, **SMALL)
    differing = sum(not np.array_equal(_mask(root_a, n), _mask(root_c, n)) for n in _all_names(root_a))
    assert differing >= 25  # out of 30


def test_each_image_depends_only_on_seed_split_and_index(small: tuple[Path, dict]) -> None:
    root, _ = small
    params = SynthParams(num_classes=K, size=64, seed=0)
    for split, index in (("val", 7), ("train", 13), ("train", 2)):  # any order: resumable, parallelisable
        sample = render_sample(params, split, index)
        assert np.array_equal(sample.mask, _mask(root, sample_name(split, index)))
    assert not np.array_equal(render_sample(params, "train", 3).mask, render_sample(params, "val", 3).mask)


def test_mask_values_and_one_to_three_classes(small: tuple[Path, dict]) -> None:
    root, _ = small
    meta = json.loads((root / META_FILE).read_text())["images"]
    allowed = {*range(K + 1), IGNORE_INDEX}
    for name in _all_names(root):
        values = set(np.unique(_mask(root, name)).tolist())
        assert values <= allowed, name
        classes = sorted(values - {0, IGNORE_INDEX})
        assert 1 <= len(classes) <= 3, (name, classes)
        assert classes == meta[name]["classes"]  # tags derived from masks are the drawn objects


def test_void_band_separates_objects_from_background(small: tuple[Path, dict]) -> None:
    root, _ = small
    for name in _all_names(root):
        mask = _mask(root, name)
        obj = (mask != 0) & (mask != IGNORE_INDEX)
        void = mask == IGNORE_INDEX
        padded_obj = np.pad(obj, 1)
        padded_bg = np.pad(mask == 0, 1)
        h, w = mask.shape
        near_obj = np.zeros_like(obj)
        near_bg = np.zeros_like(obj)
        for dy in range(3):
            for dx in range(3):
                near_obj |= padded_obj[dy : dy + h, dx : dx + w]
                near_bg |= padded_bg[dy : dy + h, dx : dx + w]
        assert (void & near_obj).any(), name  # 255 pixels border the objects…
        assert not (obj & near_bg).any(), name  # …so no object pixel touches background directly
        assert void.mean() < 0.25, name  # a thin band, not a blanket


def test_objects_stay_visible_and_occlusion_happens(context_set: tuple[Path, dict]) -> None:
    root, _ = context_set
    meta = json.loads((root / META_FILE).read_text())["images"]
    occluded = 0
    for name, info in meta.items():
        mask = _mask(root, name)
        for obj in info["objects"]:
            assert obj["visible"] >= 0.5 * obj["area"], (name, obj)
            assert (mask == obj["class"]).sum() > 0, (name, obj)
            occluded += obj["visible"] < obj["area"]
        assert 1 <= len(info["objects"]) <= 3
    assert occluded > 10


def test_every_class_appears_in_train(small: tuple[Path, dict]) -> None:
    root, summary = small
    seen = set()
    for name in _split_names(root, "train"):
        seen |= set(np.unique(_mask(root, name)).tolist())
    assert seen >= set(range(1, K + 1))
    assert all(n > 0 for n in summary["class_images"]["train"].values())
    recount = {c: 0 for c in synth_class_names(K)}
    for name in _split_names(root, "train"):
        for c in set(np.unique(_mask(root, name)).tolist()) - {0, IGNORE_INDEX}:
            recount[synth_class_names(K)[c - 1]] += 1
    assert recount == summary["class_images"]["train"]


def test_background_follows_class_context_at_context_prob(context_set: tuple[Path, dict]) -> None:
    root, _ = context_set
    meta = json.loads((root / META_FILE).read_text())["images"]
    styles = num_background_styles(K)
    hits = [info["background"] == preferred_style(info["context_class"], K) for info in meta.values()]
    expected = 0.7 + 0.3 / styles  # the random fallback picks the preferred style 1/S of the time
    assert abs(np.mean(hits) - expected) < 0.08  # ~3 binomial standard deviations at n=300
    assert all(info["context_class"] in info["classes"] for info in meta.values())

    # The recorded style is what was drawn: background pixels' mean colour identifies it.
    feats, ids = [], []
    for name, info in meta.items():
        mask, image = _mask(root, name), _image(root, name).astype(np.float64)
        feats.append(image[mask == 0].mean(axis=0))
        ids.append(info["background"])
    feats_arr, ids_arr = np.stack(feats), np.array(ids)
    centroids = {s: feats_arr[ids_arr == s].mean(axis=0) for s in set(ids)}
    keys = sorted(centroids)
    dist = np.stack([np.linalg.norm(feats_arr - centroids[s], axis=1) for s in keys], axis=1)
    accuracy = np.mean(np.array(keys)[dist.argmin(axis=1)] == ids_arr)
    assert accuracy > 0.75


def test_context_prob_zero_gives_chance_level_context(tmp_path: Path) -> None:
    params = SynthParams(num_classes=K, size=48, seed=5, context_prob=0.0)
    metas = [render_sample(params, "train", i).meta for i in range(240)]
    hits = np.mean([m["background"] == preferred_style(m["context_class"], K) for m in metas])
    assert abs(hits - 1.0 / num_background_styles(K)) < 0.07
    assert not any(m["context_used"] for m in metas)


def test_identical_rerun_is_skipped_without_rewriting(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    first = generate_synth(root, seed=0, **SMALL)
    probe = [root / PARAMS_FILE, root / "JPEGImages" / "synth_train_000004.jpg", root / "classes.txt"]
    stamps = [p.stat().st_mtime_ns for p in probe]
    again = generate_synth(root, seed=0, **SMALL)
    assert again["skipped"] is True
    assert again["counts"] == first["counts"] and again["class_images"] == first["class_images"]
    assert [p.stat().st_mtime_ns for p in probe] == stamps


def test_different_params_raise_unless_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    generate_synth(root, seed=0, **SMALL)
    with pytest.raises(DataError, match=r"seed=0 \(asked 4\).*overwrite"):
        generate_synth(root, seed=4, **SMALL)
    smaller = {**SMALL, "num_train": 8}
    summary = generate_synth(root, seed=4, overwrite=True, **smaller)
    assert summary["skipped"] is False and summary["params"]["seed"] == 4
    assert _split_names(root, "train") == [f"synth_train_{i:06d}" for i in range(8)]
    assert not (root / "JPEGImages" / "synth_train_000015.jpg").exists()  # stale files removed
    assert len(list((root / "SegmentationClass").iterdir())) == 8 + 10


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    generate_synth(root, seed=0, **SMALL)
    (root / "SegmentationClass" / "synth_val_000003.png").unlink()
    summary = generate_synth(root, seed=0, **SMALL)
    assert summary["skipped"] is False
    assert (root / "SegmentationClass" / "synth_val_000003.png").is_file()
    record = json.loads((root / PARAMS_FILE).read_text())
    assert record["status"] == "complete"


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages" / "2007_000032.jpg").write_bytes(b"user data")
    with pytest.raises(DataError, match=r"not empty.*synth\.json"):
        generate_synth(root, overwrite=True, **SMALL)
    assert (root / "JPEGImages" / "2007_000032.jpg").read_bytes() == b"user data"


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("num_classes", 21, "num_classes"),
        ("num_classes", 0, "num_classes"),
        ("context_prob", 1.5, "context_prob"),
        ("size", 8, "size"),
        ("num_train", 0, "num_train"),
    ],
)
def test_bad_parameters_name_the_key(tmp_path: Path, key: str, value: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        generate_synth(tmp_path / "ds", **{**SMALL, key: value})
    assert not (tmp_path / "ds").exists()


def test_twenty_classes_have_distinct_shapes() -> None:
    names = synth_class_names(20)
    assert len(set(names)) == 20
    params = SynthParams(num_classes=20, size=64, seed=0)
    seen = set()
    for i in range(40):
        seen |= set(np.unique(render_sample(params, "train", i).mask).tolist())
    assert seen - {0, IGNORE_INDEX} == set(range(1, 21))


# ----------------------------------------------------------------------------- learnability


def _colour_histograms(images: list[np.ndarray], masks: list[np.ndarray], keep_background_only: bool):
    """Joint 4x4x4 RGB histogram per image (optionally over background pixels only)."""
    rows = []
    for image, mask in zip(images, masks):
        pixels = image[mask == 0] if keep_background_only else image.reshape(-1, 3)
        bins = (pixels // 64).astype(np.int64)
        idx = bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]
        rows.append(np.bincount(idx, minlength=64) / max(len(idx), 1))
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def _tags(masks: list[np.ndarray]) -> torch.Tensor:
    tags = torch.zeros(len(masks), K)
    for i, m in enumerate(masks):
        for c in set(np.unique(m).tolist()) - {0, IGNORE_INDEX}:
            tags[i, c - 1] = 1.0
    return tags


def _fit_logistic(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
    torch.manual_seed(0)
    mean, std = x.mean(0), x.std(0) + 1e-3
    model = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(400):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model((x - mean) / std), y)
        loss.backward()
        opt.step()
    model.register_buffer("mean", mean)
    model.register_buffer("std", std)
    return model


def _mean_auc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over classes of the Mann-Whitney AUC (ties count half)."""
    aucs = []
    for k in range(y.shape[1]):
        pos, neg = scores[y[:, k] == 1, k], scores[y[:, k] == 0, k]
        greater = (pos[:, None] > neg[None, :]).float().mean()
        ties = (pos[:, None] == neg[None, :]).float().mean()
        aucs.append(float(greater + 0.5 * ties))
    return float(np.mean(aucs))


@pytest.mark.slow
def test_tags_are_learnable_and_background_carries_context(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    generate_synth(root, num_classes=K, num_train=400, num_val=200, size=64, seed=11, progress=False)
    data = {}
    for split in ("train", "val"):
        names = _split_names(root, split)
        data[split] = ([_image(root, n) for n in names], [_mask(root, n) for n in names])

    def auc(background_only: bool, shuffle: bool = False) -> float:
        x_tr = _colour_histograms(*data["train"], background_only)
        y_tr = _tags(data["train"][1])
        if shuffle:
            y_tr = y_tr[torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))]
        model = _fit_logistic(x_tr, y_tr)
        x_va = _colour_histograms(*data["val"], background_only)
        with torch.no_grad():
            scores = model((x_va - model.mean) / model.std)
        return _mean_auc(scores, _tags(data["val"][1]))

    whole, shuffled, background = auc(False), auc(False, shuffle=True), auc(True)
    assert whole > 0.9  # the tags are learnable from image content…
    assert abs(shuffled - 0.5) < 0.1  # …and not from an artefact of the evaluation
    assert background > 0.6  # background alone predicts the tags: the context bias WSSS must fight


def test_damaged_record_needs_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    generate_synth(root, seed=0, **SMALL)
    (root / PARAMS_FILE).write_text("{not json")
    with pytest.raises(DataError, match=r"synth\.json is unreadable"):
        generate_synth(root, seed=0, **SMALL)
    summary = generate_synth(root, seed=0, overwrite=True, **SMALL)
    assert summary["skipped"] is False
    assert json.loads((root / PARAMS_FILE).read_text())["status"] == "complete"
