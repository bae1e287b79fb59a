"""Bad input gets a DataError that names the file and says what is wrong."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from wsss.cli import data as data_cli
from wsss.data.palette import write_label_png
from wsss.data.voc import build_voc
from wsss.errors import DataError
from wsss.registry import DATASETS

NAMES = ("img_a", "img_b", "img_c")


def make_voc(root, h=12, w=16):
    (root / "JPEGImages").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((h, w), np.uint8)
        mask[3:8, 4:9] = i + 1
        write_label_png(root / "SegmentationClass" / f"{name}.png", mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(NAMES) + "\n")
    return root


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_corrupt_jpeg(tmp_path):
    root = make_voc(tmp_path)
    bad = root / "JPEGImages" / "img_b.jpg"
    bad.write_bytes(b"this is not a JPEG file at all")
    ds = build_voc(root, "train")
    msg = error_of(ds.__getitem__, 1)
    assert str(bad) in msg and "corrupt" in msg
    assert ds[0]["name"] == "img_a"  # the other items still load


def test_truncated_jpeg(tmp_path):
    root = make_voc(tmp_path, h=64, w=64)
    bad = root / "JPEGImages" / "img_a.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    msg = error_of(build_voc(root, "train").__getitem__, 0)
    assert str(bad) in msg and "truncated" in msg


def test_truncated_png_mask(tmp_path):
    root = make_voc(tmp_path)
    bad = root / "SegmentationClass" / "img_c.png"
    bad.write_bytes(bad.read_bytes()[:60])
    # labels come from the masks, so construction already reads the broken file
    msg = error_of(build_voc, root, "train")
    assert str(bad) in msg and "corrupt or truncated" in msg


def test_mask_of_other_size(tmp_path):
    root = make_voc(tmp_path)
    bad = root / "SegmentationClass" / "img_a.png"
    write_label_png(bad, np.ones((10, 16), np.uint8))
    ds = build_voc(root, "train")
    msg = error_of(ds.__getitem__, 0)
    assert str(bad) in msg and "16x10" in msg and "16x12" in msg and "must match" in msg
    msg = error_of(ds.read_mask, 0)
    assert str(bad) in msg


def test_list_naming_missing_files(tmp_path):
    root = make_voc(tmp_path)
    list_file = root / "ImageSets" / "Segmentation" / "train.txt"
    list_file.write_text("img_a\nghost_1\nimg_b\nghost_2\n")
    msg = error_of(build_voc, root, "train")
    assert str(list_file) in msg and "2 image(s) that do not exist" in msg
    assert "ghost_1.jpg" in msg and "ghost_2.jpg" in msg and "(of 4)" in msg


def test_many_missing_files_are_summarised(tmp_path):
    root = make_voc(tmp_path)
    list_file = root / "ImageSets" / "Segmentation" / "train.txt"
    list_file.write_text("\n".join(f"ghost_{i}" for i in range(12)) + "\n")
    msg = error_of(build_voc, root, "train")
    assert "12 image(s)" in msg and "(+7 more)" in msg and "ghost_11" not in msg


def test_tags_with_unknown_class(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    tags = tmp_path / "tags.csv"
    tags.write_text("image,tags\na.jpg,cat; horse\n")
    msg = error_of(DATASETS.build, "folder", root=tmp_path, split="all")
    assert str(tags) in msg and "line 2" in msg and "unknown class 'horse'" in msg


def test_rgb_mask(tmp_path):
    root = make_voc(tmp_path)
    bad = root / "SegmentationClass" / "img_b.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(bad)
    msg = error_of(build_voc, root, "train")
    assert str(bad) in msg and "mode-RGB" in msg and "not an index map" in msg


def test_check_command_reports_every_bad_file(tmp_path, capsys):
    root = make_voc(tmp_path)
    (root / "JPEGImages" / "img_a.jpg").write_bytes(b"garbage")
    write_label_png(root / "SegmentationClass" / "img_c.png", np.full((5, 5), 3, np.uint8))
    parser = argparse.ArgumentParser(prog="wsss")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "check", "--root", str(root), "--split", "train", "--no-progress"])
    msg = error_of(args.func, args)
    assert "2 of 3 images failed" in msg and "img_a.jpg" in msg and "img_c.png" in msg
    out = capsys.readouterr().out
    assert "3 images, 21 classes" in out

    write_label_png(root / "SegmentationClass" / "img_c.png", np.full((12, 16), 3, np.uint8))
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "JPEGImages" / "img_a.jpg")
    assert args.func(args) == 0
    assert "all files OK" in capsys.readouterr().out
