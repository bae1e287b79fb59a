"""Real photos: the coco128-voc set loads with the ``voc`` dataset, labels derived from masks.

``../shared/data/coco128-voc`` (beside the repository) is the first 128 COCO train2017 images with
masks mapped to the 20 VOC classes; README.md, "The coco128-voc folder", says how to build it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.data.classes import VOC_CLASSES
from wsss.data.transforms import train_transform
from wsss.registry import DATASETS

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128-voc"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(
        not ROOT.is_dir(),
        reason=f"shared real-photo set not found at {ROOT.resolve()} (README.md: 'The coco128-voc folder' builds it)",
    ),
]


def test_counts_from_masks():
    every = DATASETS.build("voc", root=ROOT, split="all")
    train = DATASETS.build("voc", root=ROOT, split="train")
    assert len(every) == 126 and len(train) == 97
    assert every.has_masks and every.class_names == VOC_CLASSES
    counts = dict(zip(VOC_CLASSES[1:], every.class_image_counts().tolist()))
    assert counts["cow"] == 0 and counts["sheep"] == 0 and counts["person"] == 61
    assert (train.labels.sum(1) >= 1).all()
    assert int((every.labels.sum(1) == 0).sum()) == 126 - 97
    assert set(train.names) <= set(every.names)


def test_real_item_through_training_transform():
    train = DATASETS.build("voc", root=ROOT, split="train", transform=train_transform(crop_size=256))
    torch.manual_seed(0)
    item = train[0]
    assert item["image"].shape == (3, 256, 256) and item["mask"].shape == (256, 256)
    present = set(item["mask"].unique().tolist()) - {0, 255}
    tagged = set((torch.nonzero(item["labels"]).flatten() + 1).tolist())
    assert present <= tagged
    assert item["size"] == train.image_size(0)  # the original size, not the cropped one
