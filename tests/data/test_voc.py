"""The VOC-layout dataset (``voc`` and ``synth``): items, label sources, splits, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from wsss.data.classes import VOC_CLASSES
from wsss.data.labels import write_labels
from wsss.data.palette import write_label_png
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from wsss.data.voc import build_voc
from wsss.errors import DataError
from wsss.registry import DATASETS

# name -> (H, W, mask class placed in a square, XML object names)
ITEMS = {
    "2007_000001": (20, 30, 15, ["person"]),
    "2007_000002": (24, 16, 12, ["dog", "cat"]),
    "2008_000003": (20, 30, 1, ["aeroplane"]),
}


def make_voc(root, items=ITEMS, masks=True, xml=True, split="train"):
    """A tiny VOCdevkit/VOC2012 tree; images are the mask value x 10 in the red channel."""
    for name, (h, w, cls, objects) in items.items():
        mask = np.zeros((h, w), np.uint8)
        mask[2:10, 3:11] = cls
        mask[10, 3:11] = 255
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = mask.astype(np.int32) * 10 % 256
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        if masks:
            write_label_png(root / "SegmentationClass" / f"{name}.png", mask)
        if xml:
            (root / "Annotations").mkdir(exist_ok=True)
            objs = "".join(f"<object><name>{o}</name></object>" for o in objects)
            (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{objs}</annotation>")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("\n".join(items) + "\n")
    return root


def test_items_have_the_documented_fields(tmp_path):
    ds = build_voc(make_voc(tmp_path), "train")
    assert len(ds) == 3 and ds.names == list(ITEMS)
    assert ds.class_names == VOC_CLASSES and ds.num_classes == 21 and ds.has_masks
    item = ds[1]
    assert item["name"] == "2007_000002" and item["size"] == (24, 16)
    assert isinstance(item["image"], tv_tensors.Image)
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 16)
    assert isinstance(item["mask"], tv_tensors.Mask)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (24, 16)
    assert item["labels"].dtype == torch.float32 and item["labels"].shape == (20,)
    assert torch.nonzero(item["labels"]).flatten().tolist() == [11]  # from the mask: dog only
    assert item["mask"][5, 5] == 12 and item["mask"][10, 5] == 255 and item["mask"][0, 0] == 0
    np.testing.assert_array_equal(ds.read_mask(1), item["mask"].numpy())
    assert ds.image_path(1).name == "2007_000002.jpg" and ds.mask_path(1).name == "2007_000002.png"
    assert ds.image_size(1) == (24, 16)


def test_label_sources_in_order(tmp_path):
    root = make_voc(tmp_path)
    # masks beat XML: the XML of image 2 also says 'cat'
    assert build_voc(root, "train").labels[1].nonzero()[0].tolist() == [11]
    assert build_voc(root, "train", label_source="xml").labels[1].nonzero()[0].tolist() == [7, 11]
    # a labels file beats both
    np.save(
        tmp_path / "cls.npy",
        {np.int32(int(n.replace("_", ""))): np.eye(20, dtype=np.float32)[4] for n in ITEMS},
    )
    ds = build_voc(root, "train", labels_file=tmp_path / "cls.npy")
    assert (ds.labels.argmax(1) == 4).all() and ds.labels.sum() == 3
    write_labels(tmp_path / "l.npz", {n: np.eye(20, dtype=np.float32)[2] for n in ITEMS}, VOC_CLASSES)
    assert (build_voc(root, "train", labels_file=tmp_path / "l.npz").labels.argmax(1) == 2).all()


def test_without_masks_labels_come_from_xml(tmp_path):
    ds = build_voc(make_voc(tmp_path, masks=False), "train")
    assert not ds.has_masks and "mask" not in ds[0]
    assert ds.labels[1].nonzero()[0].tolist() == [7, 11]
    with pytest.raises(DataError, match="has no masks"):
        ds.read_mask(0)


def test_no_label_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no image-level labels"):
        build_voc(make_voc(tmp_path, masks=False, xml=False), "train")


def test_labels_file_missing_names(tmp_path):
    root = make_voc(tmp_path)
    np.save(tmp_path / "cls.npy", {"2007_000001": np.zeros(20, np.float32)})
    with pytest.raises(DataError, match=r"cls\.npy has no image-level labels for 2 of 3.*2007_000002"):
        build_voc(root, "train", labels_file=tmp_path / "cls.npy")


def test_partial_masks(tmp_path):
    root = make_voc(tmp_path)
    (root / "SegmentationClass" / "2008_000003.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 masks are missing: .*2008_000003\.png.*mask_dir"):
        build_voc(root, "train")
    ds = build_voc(root, "train", with_masks=False)  # labels then come from XML
    assert not ds.has_masks and ds.labels[2].nonzero()[0].tolist() == [0]


def test_mask_dir_and_split_path_and_devkit_root(tmp_path):
    voc = make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    aug = voc / "SegmentationClassAug"
    for name, (h, w, _, _) in ITEMS.items():
        write_label_png(aug / f"{name}.png", np.full((h, w), 19, np.uint8))
    custom = tmp_path / "two.txt"
    custom.write_text("2008_000003\n2007_000001\n")
    ds = build_voc(tmp_path, str(custom), mask_dir="SegmentationClassAug")
    assert ds.names == ["2008_000003", "2007_000001"]
    assert (ds.labels.argmax(1) == 18).all() and int(ds[0]["mask"].unique()) == 19
    with pytest.raises(DataError, match=r"splits in .*: train"):
        build_voc(tmp_path, "nope")


def test_classes_txt_and_synth_registration(tmp_path):
    root = make_voc(tmp_path, items={"s_0": (16, 16, 2, [])}, xml=False)
    (root / "classes.txt").write_text("background\ndisc\nsquare\n")
    ds = DATASETS.build("synth", root=root, split="train")
    assert ds.class_names == ("background", "disc", "square")
    np.testing.assert_array_equal(ds.labels, [[0, 1]])
    (root / "classes.txt").write_text("disc\nsquare\n")
    with pytest.raises(DataError, match="first line must be 'background'"):
        build_voc(root, "train")
    with pytest.raises(DataError, match="wsss data synth"):
        DATASETS.build("synth", root=tmp_path / "missing", split="train")


def test_generated_synth_dataset(tmp_path):
    synth = pytest.importorskip("wsss.data.synth")
    synth.generate_synth(tmp_path, num_classes=3, num_train=4, num_val=2, size=32, progress=False)
    train = DATASETS.build("synth", root=tmp_path, split="train")
    assert len(train) == 4 and train.num_classes == 4 and train.has_masks
    for i in range(len(train)):
        item = train[i]
        present = sorted(set(item["mask"].unique().tolist()) - {0, 255})
        assert (torch.nonzero(item["labels"]).flatten() + 1).tolist() == present


def test_transform_and_dataloader(tmp_path):
    items = {"a": (20, 30, 3, ["bird"]), "b": (20, 30, 4, ["boat"])}
    ds = build_voc(make_voc(tmp_path, items=items, xml=False), "train", transform=eval_transform())
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 20, 30)
    assert batch["mask"].shape == (2, 20, 30) and batch["mask"][1, 5, 5] == 4
    assert batch["labels"].shape == (2, 20) and batch["name"] == ["a", "b"]
    # a black pixel becomes -mean/std
    expected = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(batch["image"][0, :, 0, 0], expected, atol=0.05, rtol=0)
