"""The ``folder`` dataset for users' own images + tags file + class list."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss.data.palette import write_label_png
from wsss.errors import DataError
from wsss.registry import DATASETS


def make_folder(root, tags_csv=True, masks=False):
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((12, 10, 3), 40, np.uint8)).save(root / "images" / "beach.jpg")
    Image.fromarray(np.full((8, 14, 3), 90, np.uint8)).save(root / "images" / "kitchen.png")
    Image.fromarray(np.full((9, 9, 3), 200, np.uint8)).save(root / "images" / "street.jpeg")
    (root / "classes.txt").write_text("cat\ndog\nbicycle\n")
    if tags_csv:
        (root / "tags.csv").write_text(
            "image,tags\nbeach.jpg,dog\nkitchen.png,cat;dog\nstreet.jpeg,bicycle\n"
        )
    if masks:
        for name, (h, w), cls in (("beach", (12, 10), 2), ("kitchen", (8, 14), 1), ("street", (9, 9), 3)):
            m = np.zeros((h, w), np.uint8)
            m[1:4, 1:4] = cls
            write_label_png(root / "masks" / f"{name}.png", m)
    return root


def test_all_images_with_csv_tags(tmp_path):
    ds = DATASETS.build("folder", root=make_folder(tmp_path), split="all")
    assert ds.class_names == ("background", "cat", "dog", "bicycle") and ds.num_classes == 4
    assert ds.names == ["beach", "kitchen", "street"]
    np.testing.assert_array_equal(ds.labels, [[0, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert not ds.has_masks
    item = ds[1]
    assert item["size"] == (8, 14) and item["image"].shape == (3, 8, 14) and "mask" not in item
    assert int(item["image"][0, 3, 3]) == 90  # PNG is lossless
    assert ds.image_path(2).name == "street.jpeg"


def test_background_line_is_optional(tmp_path):
    root = make_folder(tmp_path)
    (root / "classes.txt").write_text("background\ncat\ndog\nbicycle\n")
    ds = DATASETS.build("folder", root=root, split="all")
    assert ds.class_names == ("background", "cat", "dog", "bicycle")


def test_split_list_and_json_tags(tmp_path):
    root = make_folder(tmp_path, tags_csv=False)
    (root / "tags.json").write_text('{"street": ["bicycle", "dog"], "beach.jpg": []}')
    (root / "val.txt").write_text("street\nbeach.jpg\n")
    ds = DATASETS.build("folder", root=root, split="val")
    assert ds.names == ["street", "beach"]
    np.testing.assert_array_equal(ds.labels, [[0, 1, 1], [0, 0, 0]])


def test_masks_give_labels_and_items(tmp_path):
    ds = DATASETS.build("folder", root=make_folder(tmp_path, tags_csv=False, masks=True), split="all")
    assert ds.has_masks
    np.testing.assert_array_equal(ds.labels, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert ds[0]["mask"][2, 2] == 2 and ds[0]["mask"].shape == (12, 10)


def test_labels_file_overrides_tags(tmp_path):
    root = make_folder(tmp_path)
    (tmp_path / "other.csv").write_text("image,tags\nbeach,cat\nkitchen,cat\nstreet,cat\n")
    ds = DATASETS.build("folder", root=root, split="all", labels_file=tmp_path / "other.csv")
    np.testing.assert_array_equal(ds.labels[:, 0], [1, 1, 1])


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path)
    (root / "tags.csv").write_text("image,tags\nbeach.jpg,dog\nkitchen.png,cat\n")
    with pytest.raises(DataError, match=r"tags\.csv has no image-level labels for 1 of 3.*street"):
        DATASETS.build("folder", root=root, split="all")
    (root / "val.txt").write_text("beach\nforest\n")
    with pytest.raises(DataError, match=r"val\.txt names 1 image\(s\) not found .*forest"):
        DATASETS.build("folder", root=root, split="val")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "beach.png")
    with pytest.raises(DataError, match=r"'beach\.jpg' and 'beach\.png' have the same name"):
        DATASETS.build("folder", root=root, split="all")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes\.txt not found"):
        DATASETS.build("folder", root=root, split="all")


def test_no_tags_no_masks(tmp_path):
    with pytest.raises(DataError, match=r"no image-level labels .*tags\.csv"):
        DATASETS.build("folder", root=make_folder(tmp_path, tags_csv=False), split="all")
