"""``export_folder`` / ``wsss data folder``: any dataset rewritten as a users' folder loads back the same."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import data as data_cli
from wsss.data.export_folder import export_folder
from wsss.data.palette import IGNORE_INDEX, write_label_png
from wsss.errors import ConfigError, DataError
from wsss.registry import DATASETS

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128-voc"

# name -> (H, W), classes drawn in the mask (0 = background only)
TINY = {
    "2007_000001": ((12, 10), (1,)),
    "2007_000002": ((8, 14), (1, 2)),
    "2007_000003": ((9, 9), ()),
    "2007_000004": ((10, 16), (2,)),
}
CLASSES = ("background", "cat", "dog", "bird")  # no image carries 'bird'


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="wsss")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv, "--no-progress"])
    return args.func(args)


def make_voc(root: Path) -> Path:
    """A VOC-layout set: palette masks with a 255 border, an unused class, a background-only image."""
    rng = np.random.default_rng(0)
    for name, ((h, w), classes) in TINY.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        mask = np.zeros((h, w), np.uint8)
        for j, c in enumerate(classes):
            mask[j * 3 : j * 3 + 3, 1:5] = c
        mask[-1, :] = IGNORE_INDEX
        write_label_png(root / "SegmentationClass" / f"{name}.png", mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "all.txt").write_text("".join(f"{n}\n" for n in TINY))
    (lists / "train.txt").write_text("2007_000004\n2007_000001\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def assert_same(folder, source) -> None:
    """The same images (by name; a folder's split 'all' is sorted), labels and masks; the image
    files identical byte for byte."""
    assert sorted(folder.names) == sorted(source.names)
    assert folder.class_names == source.class_names
    assert folder.has_masks == source.has_masks
    order = [source.names.index(n) for n in folder.names]
    np.testing.assert_array_equal(folder.labels, source.labels[order])
    for i, j in enumerate(order):
        assert folder.image_path(i).read_bytes() == source.image_path(j).read_bytes()
        if source.has_masks:
            np.testing.assert_array_equal(folder.read_mask(i), source.read_mask(j))


def test_voc_export_loads_back_as_folder(tmp_path: Path) -> None:
    src = make_voc(tmp_path / "voc")
    voc = DATASETS.build("voc", root=src, split="all")
    train = DATASETS.build("voc", root=src, split="train")
    out = tmp_path / "mine"
    summary = export_folder(voc, out, splits={"train": train.names})
    assert {k: summary[k] for k in ("images", "masks", "classes", "splits")} == {
        "images": 4,
        "masks": 4,
        "classes": 3,
        "splits": {"all": 4, "train": 2},
    }
    assert (out / "classes.txt").read_text() == "cat\ndog\nbird\n"  # no background line; unused bird kept
    assert (out / "tags.csv").read_text().splitlines() == [
        "image,tags",
        "2007_000001.jpg,cat",
        "2007_000002.jpg,cat;dog",
        "2007_000003.jpg,",
        "2007_000004.jpg,dog",
    ]
    assert (out / "train.txt").read_text() == "2007_000004\n2007_000001\n"
    for name in TINY:
        with Image.open(out / "masks" / f"{name}.png") as png:
            assert png.mode == "L"
    np.testing.assert_array_equal(voc.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    assert_same(DATASETS.build("folder", root=out, split="all"), voc)
    assert_same(DATASETS.build("folder", root=out, split="train"), train)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left


def test_refuses_non_empty_folder_and_leaves_it_unchanged(tmp_path: Path) -> None:
    voc = DATASETS.build("voc", root=make_voc(tmp_path / "voc"), split="all")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    (out / "images" / "holiday.jpg").write_bytes(b"not really a jpeg")
    before = tree_hashes(out)
    with pytest.raises(DataError, match=r"out is not empty; .*overwrite"):
        export_folder(voc, out)
    with pytest.raises(DataError, match=r"not empty"):
        run_cli("folder", "--root", str(tmp_path / "voc"), "--split", "all", "--out", str(out))
    assert tree_hashes(out) == before
    assert sorted(p.name for p in out.rglob("*")) == ["holiday.jpg", "images", "notes.txt"]


def test_overwrite_replaces_an_earlier_export(tmp_path: Path) -> None:
    src = make_voc(tmp_path / "voc")
    out = tmp_path / "out"
    export_folder(DATASETS.build("voc", root=src, split="all"), out)
    (out / "notes.txt").write_text("mine\n")
    train = DATASETS.build("voc", root=src, split="train")
    summary = export_folder(train, out, with_masks=False, overwrite=True)
    assert summary["removed"] == 2 + 4 and summary["masks"] == 0  # 2 stale images, every mask
    folder = DATASETS.build("folder", root=out, split="all")
    assert folder.names == sorted(train.names) and not folder.has_masks  # labels from tags.csv alone
    np.testing.assert_array_equal(folder.labels, [[1, 0, 0], [0, 1, 0]])
    assert (out / "notes.txt").read_text() == "mine\n"  # files the export does not own stay


def test_folder_source_with_spaced_class_names(tmp_path: Path) -> None:
    """A folder's own suffixes (png, jpeg) stay; a lone tag with a space survives the tag reader."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.fromarray(np.full((6, 7, 3), 30, np.uint8)).save(src / "images" / "a.png")
    Image.fromarray(np.full((5, 5, 3), 90, np.uint8)).save(src / "images" / "b.jpeg")
    (src / "classes.txt").write_text("traffic light\nhot dog\n")
    (src / "tags.csv").write_text('image,tags\na.png,"traffic light;"\nb.jpeg,traffic light;hot dog\n')
    ds = DATASETS.build("folder", root=src, split="all")
    out = tmp_path / "out"
    assert export_folder(ds, out)["masks"] == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.jpeg"]
    assert_same(DATASETS.build("folder", root=out, split="all"), ds)


def test_bad_splits_and_output(tmp_path: Path) -> None:
    src = make_voc(tmp_path / "voc")
    train = DATASETS.build("voc", root=src, split="train")
    with pytest.raises(DataError, match=r"split 'val' names 1 image\(s\) that are not exported: 2007_000002"):
        export_folder(train, tmp_path / "a", splits={"val": ["2007_000002"]})
    with pytest.raises(ConfigError, match=r"'all' already means every image"):
        export_folder(train, tmp_path / "a", splits={"all": train.names})
    with pytest.raises(ConfigError, match=r"must be a plain name"):
        export_folder(train, tmp_path / "a", splits={"../x": train.names})
    assert not (tmp_path / "a").exists()  # nothing written before the checks pass
    with pytest.raises(DataError, match=r"holds the source's own files"):
        export_folder(train, src, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"exists and is not a folder"):
        export_folder(train, tmp_path / "file")


def test_cli_writes_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_voc(tmp_path / "voc")
    out = tmp_path / "out"
    argv = [
        "folder",
        "--dataset",
        "voc",
        "--root",
        str(src),
        "--split",
        "all",
        "--out",
        str(out),
        "--list",
        "train",
    ]
    assert run_cli(*argv) == 0
    assert '"train": 2' in capsys.readouterr().out
    assert DATASETS.build("folder", root=out, split="train").names == ["2007_000004", "2007_000001"]
    with pytest.raises(DataError, match=r"not empty"):
        run_cli(*argv)
    with pytest.raises(ConfigError, match=r"'all' already means every image"):
        run_cli(*argv, "--overwrite", "--list", "all")
    with pytest.raises(ConfigError, match=r"--list names a split twice"):
        run_cli(*argv, "--overwrite", "--list", "train")


@pytest.mark.shared
@pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared real-photo set not found at {COCO128.resolve()}")
def test_coco128_as_folder(tmp_path: Path) -> None:
    out = tmp_path / "coco128-folder"
    argv = ["folder", "--dataset", "voc", "--root", str(COCO128), "--split", "all", "--out", str(out)]
    assert run_cli(*argv, "--list", "train") == 0
    for split, count in (("all", 126), ("train", 97)):
        voc = DATASETS.build("voc", root=COCO128, split=split)
        folder = DATASETS.build("folder", root=out, split=split)
        assert len(folder) == len(voc) == count
        assert_same(folder, voc)
    assert folder.names == voc.names  # train.txt keeps the source's order
