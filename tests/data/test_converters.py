"""Converters: COCO instances → PNG masks/lists/labels, SBD → SegmentationClassAug, and ``wsss data tags``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from wsss.cli import data as data_cli
from wsss.data.classes import VOC_CLASSES
from wsss.data.coco import build_coco, convert_coco
from wsss.data.labels import read_labels
from wsss.data.palette import read_label_png, write_label_png
from wsss.data.sbd import check_count, convert_sbd, train_aug_names
from wsss.errors import DataError

HAVE_SCIPY = importlib.util.find_spec("scipy") is not None


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="wsss")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv, "--no-progress"])
    return args.func(args)


def rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_instances(path):
    """3 images, sparse category ids 1/5/90, overlapping instances and crowd annotations."""
    images = [
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 20, "width": 30},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": 16, "width": 16},
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "height": 10, "width": 10},
    ]
    anns = [
        {"id": 1, "image_id": 9, "category_id": 5, "segmentation": rect(2, 2, 20, 12), "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 1, "segmentation": rect(10, 6, 28, 18), "iscrowd": 0},
        {"id": 3, "image_id": 25, "category_id": 90, "segmentation": rect(0, 0, 8, 8), "iscrowd": 0},
        {"id": 4, "image_id": 25, "category_id": 5, "segmentation": rect(4, 4, 14, 14), "iscrowd": 1},
        {"id": 5, "image_id": 30, "category_id": 1, "segmentation": rect(0, 0, 9, 9), "iscrowd": 1},
    ]
    for a in anns:
        a["area"], a["bbox"] = 1.0, [0, 0, 1, 1]
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_conversion(tmp_path):
    pytest.importorskip("pycocotools")
    ann = write_instances(tmp_path / "instances_train2014.json")
    root = tmp_path / "coco"
    summary = convert_coco(ann, root, expected_count=2, progress=False)
    assert summary["images"] == 3 and summary["labelled_images"] == 2 and summary["subset"] == "train2014"
    assert (root / "classes.txt").read_text().split("\n")[:4] == [
        "background",
        "person",
        "airplane",
        "toothbrush",
    ]
    m9 = read_label_png(root / "SegmentationClass" / "train2014" / "COCO_train2014_000000000009.png")
    assert m9.shape == (20, 30)
    assert m9[4, 5] == 2  # airplane only
    assert m9[10, 15] == 1  # person drawn later over the airplane
    assert m9[15, 25] == 1 and m9[0, 29] == 0 and m9[19, 0] == 0
    m25 = read_label_png(root / "SegmentationClass" / "train2014" / "COCO_train2014_000000000025.png")
    assert m25[3, 3] == 3 and m25[12, 12] == 0  # id 90 -> 3; crowd skipped
    m30 = read_label_png(root / "SegmentationClass" / "train2014" / "COCO_train2014_000000000030.png")
    assert not m30.any()
    names = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert names == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    labels, classes = read_labels(root / "cls_labels_train.npz")
    assert classes == ("background", "person", "airplane", "toothbrush")
    np.testing.assert_array_equal(labels["COCO_train2014_000000000009"], [1, 1, 0])
    np.testing.assert_array_equal(labels["COCO_train2014_000000000025"], [0, 0, 1])

    # a rerun resumes from the written masks and gives the same result
    again = convert_coco(ann, root, expected_count=2, progress=False)
    assert again["masks_reused"] == 3 and again["class_image_counts"] == summary["class_image_counts"]

    # the dataset reads the converted layout (images as unzipped: root/train2014/)
    (root / "train2014").mkdir()
    for n, (h, w) in zip(names, [(20, 30), (16, 16)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "train2014" / f"{n}.jpg")
    ds = build_coco(root, "train")
    assert ds.num_classes == 4 and ds.names == names and ds.has_masks
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0], [0, 0, 1]])
    assert ds[0]["mask"][10, 15] == 1 and ds.image_path(1).parent.name == "train2014"


def test_coco_count_check_fails_before_lists(tmp_path):
    pytest.importorskip("pycocotools")
    ann = write_instances(tmp_path / "instances_train2014.json")
    with pytest.raises(DataError, match="2 images have at least one label, expected 82081"):
        convert_coco(ann, tmp_path / "coco", progress=False)
    assert not (tmp_path / "coco" / "ImageSets").exists()
    summary = convert_coco(ann, tmp_path / "coco", check_counts=False, progress=False)
    assert summary["labelled_images"] == 2


def test_coco_without_pycocotools(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(DataError, match=r"pip install wsss\[coco\]"):
        convert_coco(write_instances(tmp_path / "instances_val2014.json"), tmp_path / "c", progress=False)


def test_coco_cli(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    ann = write_instances(tmp_path / "inst.json")
    assert run_cli("coco", "--annotations", str(ann), "--root", str(tmp_path / "c"), "--subset", "train2014",
                   "--expected", "2") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["labelled_images"] == 2


def test_train_aug_arithmetic():
    names = train_aug_names(
        sbd_train=["a", "b", "c"], sbd_val=["d", "v1"], voc_train=["e", "a"], voc_val=["v1", "v2"]
    )
    assert names == ["a", "b", "c", "d", "e"]
    check_count(len(names), 5, "train_aug images")
    with pytest.raises(DataError, match="train_aug images: got 5, expected 10582"):
        check_count(len(names), 10582, "train_aug images")


def make_sbd_and_voc(tmp_path, sbd_train, sbd_val, voc_train, voc_val, h=6, w=8):
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    voc = tmp_path / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(voc_train) + "\n")
    (lists / "val.txt").write_text("\n".join(voc_val) + "\n")
    (voc / "JPEGImages").mkdir()
    for n in sorted(set(sbd_train) | set(sbd_val) | set(voc_train) | set(voc_val)):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(voc / "JPEGImages" / f"{n}.jpg")
    for i, n in enumerate(sorted(set(voc_train) | set(voc_val))):
        m = np.full((h, w), i + 1, np.uint8)
        m[0] = 255
        write_label_png(voc / "SegmentationClass" / f"{n}.png", m)
    return tmp_path / "benchmark_RELEASE", voc


def test_sbd_count_mismatch_writes_nothing(tmp_path):
    sbd, voc = make_sbd_and_voc(tmp_path, ["a"], ["b"], ["a"], ["v"])
    with pytest.raises(DataError, match="got 2, expected 10582"):
        convert_sbd(sbd, voc, progress=False)
    assert not (voc / "SegmentationClassAug").exists()
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()


def test_sbd_names_covered_by_voc_need_no_scipy(tmp_path):
    sbd, voc = make_sbd_and_voc(tmp_path, ["a", "b"], ["v"], ["a", "b", "c"], ["v"])
    summary = convert_sbd(sbd, voc, expected_count=3, progress=False)
    assert summary["train_aug"] == 3 and summary["masks_from_voc"] == 4 and summary["masks_from_sbd"] == 0
    assert (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == ["a", "b", "c"]
    np.testing.assert_array_equal(
        read_label_png(voc / "SegmentationClassAug" / "c.png"),
        read_label_png(voc / "SegmentationClass" / "c.png"),
    )
    assert (voc / "SegmentationClassAug" / "v.png").is_file()  # val masks too, for evaluation


@pytest.mark.skipif(HAVE_SCIPY, reason="checks the message shown when scipy is missing")
def test_sbd_mat_without_scipy(tmp_path):
    sbd, voc = make_sbd_and_voc(tmp_path, ["a", "s"], ["v"], ["a"], ["v"])
    with pytest.raises(DataError, match=r"s\.mat needs scipy: pip install scipy"):
        convert_sbd(sbd, voc, expected_count=2, progress=False)


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy is not installed (needed to write and read SBD .mat files)")
def test_sbd_mat_conversion(tmp_path):
    from scipy.io import savemat

    sbd, voc = make_sbd_and_voc(tmp_path, ["a", "s"], ["v"], ["a"], ["v"])
    seg = np.zeros((6, 8), np.uint8)
    seg[2:4, 3:7] = 17
    savemat(sbd / "dataset" / "cls" / "s.mat", {"GTcls": {"Segmentation": seg, "CategoriesPresent": [17]}})
    summary = convert_sbd(sbd, voc, expected_count=2, progress=False)
    assert summary["masks_from_sbd"] == 1
    np.testing.assert_array_equal(read_label_png(voc / "SegmentationClassAug" / "s.png"), seg)


def test_tags_command_writes_npz_from_masks_and_xml(tmp_path, capsys):
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    for name, cls, objects in (("x1", 8, "cat dog"), ("x2", 15, "person")):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        write_label_png(voc / "SegmentationClass" / f"{name}.png", np.full((8, 8), cls, np.uint8))
        xml = "".join(f"<object><name>{o}</name></object>" for o in objects.split())
        (voc / "Annotations" / f"{name}.xml").write_text(f"<annotation>{xml}</annotation>")
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("x1\nx2\n")

    assert run_cli("tags", "--root", str(tmp_path), "--split", "train", "--out", str(tmp_path / "m.npz")) == 0
    labels, classes = read_labels(tmp_path / "m.npz")
    assert classes == VOC_CLASSES
    assert np.flatnonzero(labels["x1"]).tolist() == [7] and np.flatnonzero(labels["x2"]).tolist() == [14]
    assert "wrote labels of 2 images" in capsys.readouterr().out

    run_cli(
        "tags",
        "--root",
        str(tmp_path),
        "--source",
        "xml",
        "--split",
        "train",
        "--out",
        str(tmp_path / "x.npz"),
    )
    labels, _ = read_labels(tmp_path / "x.npz")
    assert np.flatnonzero(labels["x1"]).tolist() == [7, 11]
