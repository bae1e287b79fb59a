"""Image-level label readers and writers: legacy cls_labels.npy, our .npz, masks, XML and tags files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from numpy.lib import format as npy_format

from wsss.data.classes import VOC_CLASSES
from wsss.data.labels import (
    labels_from_masks,
    labels_from_voc_xml,
    load_image_labels,
    read_cls_labels_npy,
    read_labels,
    read_tags,
    write_labels,
)
from wsss.data.palette import write_label_png
from wsss.errors import DataError

CLASSES = ("background", "cat", "dog", "traffic light")


def _onehot(*classes: int, k: int = 20) -> np.ndarray:
    v = np.zeros(k, dtype=np.float32)
    v[[c - 1 for c in classes]] = 1
    return v


def _save_npy_pickle(path, obj, protocol: int) -> None:
    """Write an object .npy exactly as np.save does, but with a chosen pickle protocol."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(arr, fh, protocol=protocol)


def test_int_and_str_keys_give_the_same_dict(tmp_path):
    irn = {np.int32(2007000032): _onehot(1, 15), np.int32(2011003276): _onehot(20)}
    toco = {"2007_000032": _onehot(1, 15), "2011_003276": _onehot(20)}
    np.save(tmp_path / "irn.npy", irn)
    np.save(tmp_path / "toco.npy", toco)
    a, b = read_cls_labels_npy(tmp_path / "irn.npy"), read_cls_labels_npy(tmp_path / "toco.npy")
    assert sorted(a) == ["2007_000032", "2011_003276"] == sorted(b)
    for key in a:
        assert a[key].dtype == np.float32
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(np.flatnonzero(a["2007_000032"]), [0, 14])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_is_read(tmp_path, protocol):
    path = tmp_path / f"p{protocol}.npy"
    _save_npy_pickle(path, {np.int32(2008000123): _onehot(3), 2009000001: _onehot(7, 8)}, protocol)
    labels = read_cls_labels_npy(path)
    np.testing.assert_array_equal(labels["2008_000123"], _onehot(3))
    np.testing.assert_array_equal(labels["2009_000001"], _onehot(7, 8))


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cls_labels.npy"
    np.save(path, {"2007_000032": _Payload(str(marker))})
    with pytest.raises(DataError) as err:
        read_cls_labels_npy(path)
    assert str(path) in str(err.value) and "mkdir" in str(err.value)
    assert not marker.exists()


def test_non_voc_int_key_and_plain_array_are_errors(tmp_path):
    np.save(tmp_path / "short.npy", {np.int32(123): _onehot(1)})
    with pytest.raises(DataError, match="not a VOC id"):
        read_cls_labels_npy(tmp_path / "short.npy")
    np.save(tmp_path / "plain.npy", np.zeros((3, 20), np.float32))
    with pytest.raises(DataError, match="not the pickled dict"):
        read_cls_labels_npy(tmp_path / "plain.npy")


def test_npz_round_trip_is_pickle_free(tmp_path):
    labels = {"b": _onehot(2, k=3), "a": _onehot(1, 3, k=3)}
    path = tmp_path / "labels.npz"
    write_labels(path, labels, CLASSES)
    with np.load(path, allow_pickle=False) as z:
        assert int(z["format_version"]) == 1
        assert list(z["names"]) == ["a", "b"]
        assert z["labels"].shape == (2, 3)
    back, classes = read_labels(path)
    assert classes == CLASSES
    assert sorted(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"], [1, 0, 1])
    np.testing.assert_array_equal(back["b"], [0, 1, 0])
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_npz_with_other_classes_is_rejected(tmp_path):
    path = tmp_path / "labels.npz"
    write_labels(path, {"a": _onehot(1, k=3)}, CLASSES)
    assert load_image_labels(path, CLASSES)["a"][0] == 1
    with pytest.raises(DataError, match="written for classes"):
        load_image_labels(path, VOC_CLASSES)


def test_labels_from_masks_ignore_background_and_void(tmp_path):
    m1 = np.array([[0, 0, 255], [3, 3, 0]], np.uint8)
    m2 = np.array([[255, 255], [0, 0]], np.uint8)
    write_label_png(tmp_path / "x1.png", m1)
    write_label_png(tmp_path / "x2.png", m2)
    out = labels_from_masks([tmp_path / "x1.png", tmp_path / "x2.png"], num_classes=4)
    np.testing.assert_array_equal(out["x1"], [0, 0, 1])
    np.testing.assert_array_equal(out["x2"], [0, 0, 0])
    write_label_png(tmp_path / "bad.png", np.array([[4]], np.uint8))
    with pytest.raises(DataError, match=r"bad\.png.*class index 4"):
        labels_from_masks([tmp_path / "bad.png"], num_classes=4)


_XML = """<annotation><filename>x.jpg</filename>
<object><name>person</name><difficult>1</difficult>
  <part><name>head</name></part><part><name>hand</name></part></object>
<object><name>dog</name></object><object><name> person </name></object>
</annotation>"""


def test_voc_xml_labels(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(_XML)
    vec = labels_from_voc_xml(path, VOC_CLASSES)
    np.testing.assert_array_equal(
        np.flatnonzero(vec) + 1, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    )
    path.write_text(_XML.replace("dog", "dgo"))
    with pytest.raises(DataError, match=r"x\.xml.*'dgo'.*did you mean 'dog'"):
        labels_from_voc_xml(path, VOC_CLASSES)


def test_tags_csv_separators_and_stems(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,tags\nimg1.jpg,cat;traffic light\nimg2.png,dog cat\nimg3,\nimg4.jpg,background\n")
    tags = read_tags(path, CLASSES)
    np.testing.assert_array_equal(tags["img1"], [1, 0, 1])
    np.testing.assert_array_equal(tags["img2"], [1, 1, 0])
    np.testing.assert_array_equal(tags["img3"], [0, 0, 0])
    np.testing.assert_array_equal(tags["img4"], [0, 0, 0])


def test_tags_json_equals_csv(tmp_path):
    (tmp_path / "t.json").write_text('{"img1.jpg": ["cat", "traffic light"], "img2": ["dog"]}')
    tags = read_tags(tmp_path / "t.json", CLASSES)
    np.testing.assert_array_equal(tags["img1"], [1, 0, 1])
    np.testing.assert_array_equal(tags["img2"], [0, 1, 0])


def test_tags_errors_name_file_line_and_suggestion(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("image,tags\na.jpg,cat\nb.jpg,dgo;cat\n")
    with pytest.raises(DataError) as err:
        read_tags(path, CLASSES)
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg and "'dgo'" in msg and "did you mean 'dog'" in msg
    path.write_text("a.jpg,cat\n")
    with pytest.raises(DataError, match="header must be 'image,tags'"):
        read_tags(path, CLASSES)
    path.write_text("image,tags\na.jpg,cat\na.png,dog\n")
    with pytest.raises(DataError, match=r"line 3.*listed twice"):
        read_tags(path, CLASSES)
    (tmp_path / "t.json").write_text('{"a": "cat", "b": ["kat"]}')
    with pytest.raises(DataError, match=r"t\.json, image 'b'.*'kat'"):
        read_tags(tmp_path / "t.json", CLASSES)
