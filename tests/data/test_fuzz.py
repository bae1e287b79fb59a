"""Bounded fuzzing of the readers of untrusted files: images, masks, CAM and labels files, split
lists, class lists, tags files and recipes.

Random or damaged input must give a valid result or a ``WsssError`` naming the file: never another
exception type (a traceback for the user), never a hang (each example has a deadline). Damaged files
start from valid ones (bytes flipped, cut, inserted), which reaches far deeper into the decoders
than random bytes do. Runs are derandomised and bounded, so the module takes seconds and fails the
same way every time (``WSSS_FUZZ_EXAMPLES=2000`` runs more examples per test).
"""

from __future__ import annotations

import io
import json
import os
import pickle
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsss.cams.files import CamRecord, load_cam, save_cam
from wsss.config import Recipe, load_recipe, recipe_from_dict
from wsss.data.base import read_class_names, read_list_file
from wsss.data.images import image_header, read_image
from wsss.data.labels import read_cls_labels_npy, read_labels, read_tags, write_labels
from wsss.data.palette import read_label_png
from wsss.errors import ConfigError, DataError

FUZZ = settings(
    max_examples=int(os.environ.get("WSSS_FUZZ_EXAMPLES", "60")),  # e.g. 2000 for a deeper run by hand
    deadline=timedelta(seconds=3),  # a hang fails the example instead of stalling the suite
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLASSES = ("background", "cat", "dog", "traffic light")
# damaged files make PIL warn (corrupt EXIF, oversized tags) before it fails or recovers: expected here
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


# --------------------------------------------------------------------------- damaged bytes
def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (12, 9), **kw: object) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode=None if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


IMAGE_SEEDS = [
    _encode("PNG"),
    _encode("PNG", "RGBA"),
    _encode("PNG", "P"),
    _encode("JPEG", quality=90),
    _encode("JPEG", "CMYK"),
    _encode("BMP"),
    _encode("TIFF", "CMYK"),
    _encode("GIF", "P"),
    _encode("WEBP", lossless=True),
]
MASK_SEEDS = [_encode("PNG", "P"), _encode("PNG", "L"), _encode("PNG", "RGB"), _encode("BMP", "L")]


@st.composite
def damaged(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` with a few bytes overwritten, a slice cut out or bytes inserted; or noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(data=damaged(IMAGE_SEEDS))
def test_read_image_gives_rgb_or_a_data_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.img"
    path.write_bytes(data)
    try:
        pixels = read_image(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


@FUZZ
@given(data=damaged(IMAGE_SEEDS + MASK_SEEDS))
def test_image_header_gives_a_size_or_a_data_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.img"
    path.write_bytes(data)
    try:
        (h, w), mode = image_header(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert h >= 0 and w >= 0 and isinstance(mode, str)


@FUZZ
@given(data=damaged(MASK_SEEDS))
def test_read_label_png_gives_indices_or_a_data_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(data)
    try:
        mask = read_label_png(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert mask.dtype == np.uint8 and mask.ndim == 2


def _cam_seed() -> bytes:
    """A CAM file as save_cam writes it, made in memory."""
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    np.savez_compressed(
        buf,
        keys=np.array([1, 3], np.int16),
        cams=rng.random((2, 5, 6)).astype(np.float16),
        size=np.array([10, 12], np.int32),
        stride=np.int32(2),
        norm=np.asarray("minmax"),
        format_version=np.int32(1),
    )
    return buf.getvalue()


def _labels_seed(tmp: Path) -> bytes:
    path = tmp / "seed.npz"
    write_labels(path, {"a": np.array([1, 0, 0]), "b": np.array([0, 1, 1])}, CLASSES)
    return path.read_bytes()


def _cls_labels_seed() -> bytes:
    buf = io.BytesIO()
    np.save(
        buf, np.array({"2007_000032": np.array([1.0, 0.0, 1.0]), 2007000039: np.zeros(3)}), allow_pickle=True
    )
    return buf.getvalue()


CAM_SEEDS = [_cam_seed(), pickle.dumps({"keys": [0], "cam": np.zeros((2, 2))})]


@FUZZ
@given(data=damaged(CAM_SEEDS))
def test_load_cam_gives_a_record_or_a_data_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(data)
    try:
        record = load_cam(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(record, CamRecord) and record.cams.shape[0] == record.keys.shape[0]


def test_a_saved_cam_file_is_the_fuzzers_valid_seed(tmp_path: Path) -> None:
    """The CAM seed above is what save_cam writes (so the fuzzer damages a real file)."""
    path = tmp_path / "s.npz"
    path.write_bytes(_cam_seed())
    rec = load_cam(path)
    save_cam(tmp_path / "t.npz", rec.cams, rec.keys, rec.size, rec.stride, rec.norm)
    again = load_cam(tmp_path / "t.npz")
    assert again.size == (10, 12) and again.keys.tolist() == [1, 3] and np.array_equal(again.cams, rec.cams)


@FUZZ
@given(data=st.data())
def test_labels_files_give_labels_or_a_data_error(tmp_path: Path, data: st.DataObject) -> None:
    seeds = {".npz": [_labels_seed(tmp_path)], ".npy": [_cls_labels_seed()]}
    suffix = data.draw(st.sampled_from(sorted(seeds)))
    path = tmp_path / f"labels{suffix}"
    path.write_bytes(data.draw(damaged(seeds[suffix])))
    try:
        labels = read_labels(path)[0] if suffix == ".npz" else read_cls_labels_npy(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(k, str) and v.ndim == 1 for k, v in labels.items())


# --------------------------------------------------------------------------- text files
_TOKENS = st.sampled_from(
    ["image", "tags", "cat", "dog", "traffic light", "background", "a.jpg", "b.png", "../x", "..", ".",
     "/JPEGImages/c.jpg", "#", "", " ", "\ufeff", "é", "\x00", "\t", '"', "'", "{", "}", "[", "]", ":"]
)  # fmt: skip
_SEPARATORS = st.sampled_from([",", ";", " ", "\t", "\n", "\r\n", "\r", "|", '"'])


@st.composite
def user_text(draw: st.DrawFn) -> bytes:
    """Text like a hand-written list, tags or class file: known tokens and separators, some noise,
    in UTF-8 or another encoding."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))
    parts = draw(st.lists(st.one_of(_TOKENS, _SEPARATORS, st.text(max_size=6)), max_size=40))
    text = "".join(parts)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@FUZZ
@given(text=user_text())
def test_read_list_file_gives_names_inside_the_dataset_or_a_data_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(text)
    try:
        names = read_list_file(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert names and len(set(names)) == len(names)
    assert all(n and "/" not in n and "\\" not in n and n not in (".", "..") for n in names)


@FUZZ
@given(text=user_text(), background_optional=st.booleans())
def test_read_class_names_gives_classes_or_a_data_error(
    tmp_path: Path, text: bytes, background_optional: bool
) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(text)
    try:
        names = read_class_names(path, background_optional=background_optional)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert names[0] == "background" and "background" not in names[1:] and len(set(names)) == len(names)


@FUZZ
@given(text=user_text(), suffix=st.sampled_from([".csv", ".json"]))
def test_read_tags_gives_label_vectors_or_a_data_error(tmp_path: Path, text: bytes, suffix: str) -> None:
    path = tmp_path / f"tags{suffix}"
    if suffix == ".json" and text[:1] not in (b"{", b"["):  # give the JSON parser objects too
        text = json.dumps({"a.jpg": text.decode("utf-8", "replace").split(",")}).encode()
    path.write_bytes(text)
    try:
        tags = read_tags(path, CLASSES)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    for name, vec in tags.items():
        assert name and ".." not in Path(name).parts
        assert vec.shape == (len(CLASSES) - 1,) and set(np.unique(vec)) <= {0.0, 1.0}


# --------------------------------------------------------------------------- recipes
_SECTION_KEYS = {
    None: ["name", "seed", "stages", "compat", "base", "classifier", "cams", "labels", "data", "uns", "pretrain"],
    "classifier": ["epochs", "batch_size", "lr", "scale", "resize_long", "color_jitter", "cutout", "holdout", "crops"],
    "cams": ["scales", "stride", "splits", "window", "norm", "flip", "batch_images"],
    "labels": ["bg_threshold", "fg_threshold", "low_threshold", "mode", "mode_args", "crf"],
    "data": ["root", "dataset", "args", "labels_file"],
}  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["train-cls", "minmax", "nan", "1e999", "0.5", "[]", "heat", "clean"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def recipe_trees(draw: st.DrawFn) -> dict:
    """Recipe mappings whose keys are mostly real (so validation goes deep) and whose values are anything."""
    tree: dict = {}
    for key in draw(st.lists(st.sampled_from(_SECTION_KEYS[None]), max_size=5)):
        if key in _SECTION_KEYS and draw(st.booleans()):
            fields = st.sampled_from(_SECTION_KEYS[key]) | st.text(max_size=6)
            tree[key] = draw(st.dictionaries(fields, _VALUES, max_size=4))
        else:
            tree[key] = draw(_VALUES)
    return tree


@FUZZ
@given(tree=recipe_trees(), overrides=st.lists(st.text(max_size=20), max_size=2))
def test_recipe_structures_give_a_recipe_or_a_config_error(tree: dict, overrides: list[str]) -> None:
    try:
        recipe = recipe_from_dict(tree, overrides)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(recipe, Recipe)
    assert recipe.classifier.lr > 0 and recipe.classifier.epochs >= 1 and recipe.cams.scales


_YAML_BITS = st.sampled_from(
    ["classifier:", "  lr:", " -1e-3", " .nan", " [1, 2", "]", "\n", "  ", "- ", "{", "}", "&a", "*a",
     "!!python/object:os.system", "!!binary", " 2024-13-45", " 0x1F", "base: synth/demo", "stages: []", ":",
     "labels: {bg_threshold: 1.5}", "\t", "'", '"', "? ", "%YAML 1.1", "---", "...", "\ufeff"]
)  # fmt: skip


@FUZZ
@given(parts=st.lists(st.one_of(_YAML_BITS, st.text(max_size=5)), max_size=25))
def test_recipe_files_give_a_recipe_or_a_config_error(tmp_path: Path, parts: list[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("".join(parts), encoding="utf-8", errors="replace")
    try:
        recipe = load_recipe(path)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(recipe, Recipe)


def test_the_recipe_fuzzer_reaches_the_value_rules() -> None:
    """The generated trees do reach the checks the fuzzer exercises: a sample one by hand."""
    with pytest.raises(ConfigError, match=r"'classifier\.holdout' must be in \[0, 1\)"):
        recipe_from_dict({"classifier": {"holdout": 1.0}})
    with pytest.raises(ConfigError, match=r"'uns\.labels\.fg_threshold' must be in \[0, 1\]"):
        recipe_from_dict({"uns": {"labels": {"fg_threshold": 2}}})
