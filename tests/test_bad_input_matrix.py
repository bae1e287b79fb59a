"""Bad input of every kind a user can hand wsss, through the command that user would run.

Each case of ``CASES`` builds a small valid world in ``tmp_path`` (a ``folder`` dataset with tags,
masks and a split list, a tiny recipe file, maybe a run directory), spoils one thing, and runs the
real command line (``wsss.cli.main``) in-process. Every case must end in exit code 2 with one
``wsss CMD: error:`` line that names the offending file or recipe key and says what to do, no
traceback, and no file that existed before the command changed (sha256; the run's log files may
only grow). Files that would run code when unpickled create a marker file if they ever are.

Valid but unusual input (CMYK, 16-bit, grayscale, RGBA, EXIF-rotated images; lists, tags and class
files with a BOM and Windows line ends) must load, with the pixel values and labels checked.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wsss.cams.files import save_cam
from wsss.cli import main
from wsss.config import load_recipe, save_recipe
from wsss.data.images import image_size, read_image
from wsss.data.labels import read_labels
from wsss.data.palette import write_label_png
from wsss.engine.checkpoint import save_training_state
from wsss.errors import WsssError

NAMES = ("a", "b", "c", "d")
SUFFIX = {"a": ".jpg", "b": ".png", "c": ".jpg", "d": ".png"}
H, W = 40, 48
TAGS = "image,tags\na.jpg,cat\nb.png,dog\nc.jpg,cat;dog\nd.png,cat\n"
LABELS = np.array([[1, 0], [0, 1], [1, 1], [1, 0]], np.float32)  # NAMES x (cat, dog)


class Payload:
    """Unpickling this opens (creates) ``marker``: the proof that some code path unpickled a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class World:
    """A valid user setup in ``tmp``; cases spoil one part of it and return the command to run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.images = self.data / "images"
        self.masks = self.data / "masks"
        self.recipe = tmp / "recipe.yaml"
        self.run_dir = tmp / "run"
        self.marker = tmp / "UNPICKLED"
        self.images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i, name in enumerate(NAMES):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(self.image(name))
            mask = np.zeros((H, W), np.uint8)
            mask[5:20, 8:30] = 1 + i % 2
            mask[0, :] = 255
            write_label_png(self.mask(name), mask)
        (self.data / "classes.txt").write_text("cat\ndog\n")
        (self.data / "tags.csv").write_text(TAGS)
        (self.data / "train.txt").write_text("\n".join(NAMES) + "\n")
        self.recipe.write_text(
            "base: synth/bnr-nano\n"
            "stages: [train-cls]\n"
            f"data: {{dataset: folder, root: {self.data}, train_split: train, seed_eval_split: train, "
            "val_split: train}\n"
            "classifier: {validation_split: null, epochs: 1, batch_size: 2, num_workers: 0, "
            "resize_long: [28, 36], crop_size: 32}\n"
        )

    def image(self, name: str) -> Path:
        return self.images / f"{name}{SUFFIX[name]}"

    def mask(self, name: str) -> Path:
        return self.masks / f"{name}.png"

    @property
    def state(self) -> Path:
        return self.run_dir / "train-cls" / "state.pt"

    def run(self, *sets: str) -> list[str]:
        """``wsss run RECIPE --out RUN``, with a run directory of this recipe already there (its
        resolved recipe and a log), so that the check covers files a failed run must not touch."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs" / "pipeline.log").write_text("an earlier invocation\n")
        with contextlib.suppress(WsssError):  # unless the case spoils the recipe itself
            save_recipe(load_recipe(self.recipe, list(sets)), self.run_dir / "recipe.yaml")
        argv = ["run", str(self.recipe), "--out", str(self.run_dir), "--device", "cpu", "--no-progress"]
        for item in sets:
            argv += ["--set", item]
        return argv

    def check(self) -> list[str]:
        """``wsss data check`` of the training split: decodes every image and mask."""
        return [
            "data",
            "check",
            "--dataset",
            "folder",
            "--root",
            str(self.data),
            "--split",
            "train",
            "--no-progress",
        ]

    def eval_cams(self) -> list[str]:
        """``wsss eval-cams`` over a folder of valid CAM files made here."""
        cams = self.tmp / "cams"
        for name in NAMES:
            save_cam(cams / f"{name}.npz", np.full((1, H, W), 0.5, np.float32), [1], (H, W), norm="minmax")
        return [
            "eval-cams", "--cams", str(cams), "--gt", str(self.masks), "--list", str(self.data / "train.txt"),
            "--classes", str(self.data / "classes.txt"), "--no-progress",
        ]  # fmt: skip

    def write_pickle(self, path: Path, obj: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(obj, protocol=4))
        return path


@dataclass(frozen=True)
class Case:
    """``spoil`` breaks the world and returns the command; the error must contain ``names`` (the file
    or key, from the world) and ``hint`` (what to do)."""

    id: str
    spoil: Callable[[World], list[str]]
    names: Callable[[World], object]
    hint: str


def _rewrite(path: Path, data: bytes | str) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _replace_image(w: World, name: str, new: Path, img: Image.Image) -> None:
    w.image(name).unlink()
    img.save(new)


# --------------------------------------------------------------------------- images
def _garbage_image(w: World) -> list[str]:
    _rewrite(w.image("b"), "<html><body>404 Not Found</body></html>")  # a failed download
    return w.run()


def _zero_byte_image(w: World) -> list[str]:
    _rewrite(w.image("c"), b"")
    return w.check()


def _truncated_image(w: World) -> list[str]:
    _truncate(w.image("a"))  # the header survives: found when training reads the pixels
    return w.run()


def _float_image(w: World) -> list[str]:
    _replace_image(w, "d", w.images / "d.tif", Image.fromarray(np.full((H, W), 0.5, np.float32)))
    return w.check()


def _eps_as_jpeg(w: World) -> list[str]:
    # PIL would hand an EPS file to Ghostscript; wsss opens image formats only
    _rewrite(w.image("a"), "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 48 40\nshowpage\n")
    return w.check()


# --------------------------------------------------------------------------- masks
def _mask_other_size(w: World) -> list[str]:
    write_label_png(w.mask("a"), np.zeros((H - 4, W), np.uint8))
    return w.run()


def _rgb_mask(w: World) -> list[str]:
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(w.mask("b"))
    return w.run()


def _sixteen_bit_mask(w: World) -> list[str]:
    Image.fromarray(np.ones((H, W), np.uint16)).save(w.mask("c"))
    return w.run()


def _mask_value_out_of_range(w: World) -> list[str]:
    mask = np.zeros((H, W), np.uint8)
    mask[10:12, 10:12] = 7  # 3 classes: 0, 1, 2 (and 255)
    write_label_png(w.mask("d"), mask)
    return w.check()


def _mask_out_of_range_without_tags(w: World) -> list[str]:
    (w.data / "tags.csv").unlink()  # labels come from the masks
    _mask_value_out_of_range(w)
    return w.run()


def _truncated_mask(w: World) -> list[str]:
    _truncate(w.mask("b"), 0.6)
    return w.check()


# --------------------------------------------------------------------------- split lists
def _list_missing_image(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "a\nb\nghost\n")
    return w.run()


def _list_duplicate(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "a\nb\nc\na\n")
    return w.run()


def _list_climbs_out(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "a\n../../etc/passwd\n")
    return w.run()


def _list_climbs_out_windows(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "a\r\n..\\..\\secret\\b.jpg\r\n")
    return w.check()


def _list_empty(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "# no images yet\n\n")
    return w.check()


def _list_not_utf8(w: World) -> list[str]:
    _rewrite(w.data / "train.txt", "a\ncaf\xe9\n".encode("latin-1"))
    return w.check()


# --------------------------------------------------------------------------- tags files
def _tags(text: str | bytes, then: str = "check") -> Callable[[World], list[str]]:
    def spoil(w: World) -> list[str]:
        _rewrite(w.data / "tags.csv", text)
        return w.check() if then == "check" else w.run()

    return spoil


def _tags_json(text: str) -> Callable[[World], list[str]]:
    def spoil(w: World) -> list[str]:
        (w.data / "tags.csv").unlink()
        _rewrite(w.data / "tags.json", text)
        return w.check()

    return spoil


# --------------------------------------------------------------------------- class lists
def _classes(text: str | None) -> Callable[[World], list[str]]:
    def spoil(w: World) -> list[str]:
        if text is None:
            (w.data / "classes.txt").unlink()
        else:
            _rewrite(w.data / "classes.txt", text)
        return w.run()

    return spoil


# --------------------------------------------------------------------------- recipes
def _recipe_set(*sets: str) -> Callable[[World], list[str]]:
    return lambda w: w.run(*sets)


def _recipe_text(text: str | bytes, *, append: bool = False) -> Callable[[World], list[str]]:
    def spoil(w: World) -> list[str]:
        old = w.recipe.read_bytes() if append else b""
        _rewrite(w.recipe, old + (text.encode() if isinstance(text, str) else text))
        return w.run()

    return spoil


# --------------------------------------------------------------------------- checkpoints
def _other_architecture(w: World) -> list[str]:
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 10))
    path = w.tmp / "resnet_like.pth"
    torch.save(other.state_dict(), path)
    return w.run(f"classifier.pretrained={path}")


def _truncated_weights(w: World) -> list[str]:
    path = w.tmp / "weights.pth"
    torch.save(nn.Linear(64, 64).state_dict(), path)
    _truncate(path)
    return w.run(f"classifier.pretrained={path}")


def _pickled_weights(w: World) -> list[str]:
    path = w.tmp / "weights.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(w.marker)}, path)
    return w.run(f"classifier.pretrained={path}")


def _garbage_safetensors(w: World) -> list[str]:
    path = w.tmp / "weights.safetensors"
    _rewrite(path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return w.run(f"classifier.pretrained={path}")


def _state_of_other_model(w: World) -> list[str]:
    argv = w.run()
    model = nn.Linear(4, 2)
    w.state.parent.mkdir(parents=True)
    save_training_state(
        w.state, model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1), epoch=1, step=2
    )
    return argv


def _truncated_state(w: World) -> list[str]:
    _state_of_other_model(w)
    _truncate(w.state)
    return w.run()


def _pickled_state(w: World) -> list[str]:
    argv = w.run()
    w.state.parent.mkdir(parents=True)
    torch.save({"format": "wsss.training_state", "version": 1, "model": Payload(w.marker)}, w.state)
    return argv


def _pickled_labels_file(w: World) -> list[str]:
    path = w.tmp / "cls_labels.npy"
    np.save(path, np.array({"a": Payload(w.marker)}, dtype=object), allow_pickle=True)
    return w.run(f"data.labels_file={path}")


# --------------------------------------------------------------------------- CAM files
def _cam_version_2(w: World) -> list[str]:
    argv = w.eval_cams()
    path = w.tmp / "cams" / "c.npz"
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files}
    with path.open("wb") as fh:
        np.savez_compressed(fh, **{**fields, "format_version": np.int32(2)})
    return argv


def _pickled_cam(w: World) -> list[str]:
    argv = w.eval_cams()
    w.write_pickle(w.tmp / "cams" / "b.npz", {"keys": [0], "cam": Payload(w.marker)})
    return argv


def _truncated_cam(w: World) -> list[str]:
    argv = w.eval_cams()
    _truncate(w.tmp / "cams" / "a.npz")
    return argv


def _import_untrusted(w: World) -> list[str]:
    src = w.tmp / "irn_dump"
    src.mkdir()
    np.save(src / "a.npy", np.array({"keys": Payload(w.marker)}, dtype=object), allow_pickle=True)
    return [
        "import-cams",
        "--format",
        "irn",
        "--src",
        str(src),
        "--out",
        str(w.tmp / "imported"),
        "--no-progress",
    ]


# --------------------------------------------------------------------------- run directories
def _run_dir_of_other_recipe(w: World) -> list[str]:
    argv = w.run()
    save_recipe(load_recipe(w.recipe, ["classifier.lr=0.5"]), w.run_dir / "recipe.yaml")
    (w.run_dir / "train-cls").mkdir()
    (w.run_dir / "train-cls" / "state.pt").write_bytes(b"a state of that other recipe")
    return argv


def _path(rel: str) -> Callable[[World], Path]:
    return lambda w: w.tmp / rel


CASES = [
    # images
    Case("image-garbage", _garbage_image, _path("data/images/b.png"), "re-create or re-download"),
    Case("image-zero-bytes", _zero_byte_image, _path("data/images/c.jpg"), "re-create or re-download"),
    Case("image-truncated", _truncated_image, _path("data/images/a.jpg"), "re-create or re-download"),
    Case("image-float32-tiff", _float_image, _path("data/images/d.tif"), "save it as an 8-bit"),
    Case("image-eps-renamed-jpg", _eps_as_jpeg, _path("data/images/a.jpg"), "re-create or re-download"),
    # masks
    Case("mask-other-size", _mask_other_size, _path("data/masks/a.png"), "re-create these files"),
    Case("mask-rgb", _rgb_mask, _path("data/masks/b.png"), "convert it with the dataset's palette"),
    Case("mask-16-bit", _sixteen_bit_mask, _path("data/masks/c.png"), "save it as an 8-bit"),
    Case("mask-value-out-of-range", _mask_value_out_of_range, _path("data/masks/d.png"), "add the class"),
    Case(
        "mask-value-out-of-range-labels-from-masks",
        _mask_out_of_range_without_tags,
        _path("data/masks/d.png"),
        "add the class",
    ),
    Case("mask-truncated", _truncated_mask, _path("data/masks/b.png"), "re-create or re-download"),
    # split lists
    Case("list-missing-image", _list_missing_image, _path("data/train.txt"), "remove their names"),
    Case("list-duplicate-name", _list_duplicate, _path("data/train.txt"), "delete one of the lines"),
    Case("list-path-climbs-out", _list_climbs_out, _path("data/train.txt"), "write the image's name"),
    Case(
        "list-windows-path-climbs-out", _list_climbs_out_windows, _path("data/train.txt"), "write the image"
    ),
    Case("list-empty", _list_empty, _path("data/train.txt"), "one image name per line"),
    Case("list-not-utf8", _list_not_utf8, _path("data/train.txt"), "save it as UTF-8"),
    # tags files
    Case("tags-unknown-class", _tags(TAGS + "x.jpg,cat;horse\n"), _path("data/tags.csv"), "add the class"),
    Case("tags-zero-bytes", _tags("", then="run"), _path("data/tags.csv"), "the first line must read"),
    Case(
        "tags-header-only", _tags("image,tags\n", then="run"), _path("data/tags.csv"), "add a line for each"
    ),
    Case(
        "tags-semicolon-columns",
        _tags(TAGS.replace(",", ";")),
        _path("data/tags.csv"),
        "separates image and tags by a comma",
    ),
    Case("tags-tab-columns", _tags(TAGS.replace(",", "\t")), _path("data/tags.csv"), "by a comma"),
    Case(
        "tags-comma-between-tags",
        _tags(TAGS.replace("cat;dog", "cat,dog")),
        _path("data/tags.csv"),
        "put all tags in the second column",
    ),
    Case(
        "tags-path-climbs-out", _tags(TAGS + "../x/a.jpg,dog\n"), _path("data/tags.csv"), "write the image's"
    ),
    Case("tags-image-twice", _tags(TAGS + "a.png,dog\n"), _path("data/tags.csv"), "merge its tags"),
    Case(
        "tags-not-utf8",
        _tags("image,tags\ncaf\xe9.jpg,cat\n".encode("cp1252")),
        _path("data/tags.csv"),
        "UTF-8",
    ),
    Case("tags-json-invalid", _tags_json('{"a.jpg": ["cat"],}'), _path("data/tags.json"), "fix the syntax"),
    Case(
        "tags-json-not-object", _tags_json('["a.jpg", "cat"]'), _path("data/tags.json"), "write the tags as"
    ),
    Case("tags-json-not-list", _tags_json('{"a.jpg": 3}'), _path("data/tags.json"), '["cat", "dog"]'),
    # class lists
    Case("classes-empty", _classes(""), _path("data/classes.txt"), "write the class names"),
    Case("classes-missing", _classes(None), _path("data/classes.txt"), "list the foreground class names"),
    Case(
        "classes-background-not-first", _classes("cat\nbackground\ndog\n"), _path("data/classes.txt"), "move"
    ),
    Case("classes-duplicate", _classes("cat\ndog\ncat\n"), _path("data/classes.txt"), "delete the repeats"),
    # recipes
    Case(
        "recipe-unknown-key",
        _recipe_text("clasifier: {epochs: 2}\n", append=True),
        lambda w: "clasifier",
        "did you mean 'classifier'",
    ),
    Case(
        "recipe-wrong-type",
        _recipe_set("classifier.epochs=ten"),
        lambda w: "classifier.epochs",
        "--set classifier.epochs=",
    ),
    Case(
        "recipe-negative-lr",
        _recipe_set("classifier.lr=-0.001"),
        lambda w: "classifier.lr",
        "--set classifier.lr=",
    ),
    Case(
        "recipe-nan-lr", _recipe_set("classifier.lr=.nan"), lambda w: "classifier.lr", "--set classifier.lr="
    ),
    Case(
        "recipe-threshold-above-1",
        _recipe_text("labels: {bg_threshold: 1.5}\n", append=True),
        lambda w: "labels.bg_threshold",
        "in [0, 1]",
    ),
    Case("recipe-empty-scales", _recipe_set("cams.scales=[]"), lambda w: "cams.scales", "--set cams.scales="),
    Case("recipe-zero-epochs", _recipe_set("segmentation.epochs=0"), lambda w: "segmentation.epochs", ">= 1"),
    Case(
        "recipe-negative-batch",
        _recipe_set("classifier.batch_size=-4"),
        lambda w: "classifier.batch_size",
        ">= 1",
    ),
    Case("recipe-invalid-yaml", _recipe_text("stages: [train-cls\n"), _path("recipe.yaml"), "fix the syntax"),
    Case(
        "recipe-not-a-mapping", _recipe_text("- train-cls\n- make-cams\n"), _path("recipe.yaml"), "key: value"
    ),
    Case("recipe-impossible-date", _recipe_text("name: 2024-13-45\n"), _path("recipe.yaml"), "quote it"),
    Case("recipe-not-utf8", _recipe_text("name: caf\xe9\n".encode("latin-1")), _path("recipe.yaml"), "UTF-8"),
    # checkpoints and weight files
    Case("weights-other-architecture", _other_architecture, _path("resnet_like.pth"), "Use weights made for"),
    Case("weights-truncated", _truncated_weights, _path("weights.pth"), "download it again"),
    Case("weights-pickled-objects", _pickled_weights, _path("weights.pth"), "re-save its tensors"),
    Case(
        "weights-garbage-safetensors", _garbage_safetensors, _path("weights.safetensors"), "download it again"
    ),
    Case("state-of-other-model", _state_of_other_model, _path("run/train-cls/state.pt"), "delete"),
    Case("state-truncated", _truncated_state, _path("run/train-cls/state.pt"), "delete"),
    Case("state-pickled-objects", _pickled_state, _path("run/train-cls/state.pt"), "delete"),
    Case("labels-npy-pickled-objects", _pickled_labels_file, _path("cls_labels.npy"), "wsss data tags"),
    # CAM files
    Case("cam-format-version-2", _cam_version_2, _path("cams/c.npz"), "upgrade wsss"),
    Case("cam-pickled", _pickled_cam, _path("cams/b.npz"), "wsss import-cams"),
    Case("cam-truncated", _truncated_cam, _path("cams/a.npz"), "re-run"),
    Case("import-cams-untrusted", _import_untrusted, _path("irn_dump/a.npy"), "--trust-pickle"),
    # run directories
    Case("run-dir-of-other-recipe", _run_dir_of_other_recipe, _path("run"), "use another --out"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its content (small test files: content beats a hash in a diff)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_the_matrix_has_no_duplicate_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 55


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path)
    argv = case.spoil(world)
    before = _snapshot(tmp_path)
    capsys.readouterr()

    rc = main(argv)

    out, err = capsys.readouterr()
    lines = err.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(f"wsss {argv[0]}: error: ")]
    assert rc == 2, f"exit code {rc}; stderr:\n{err[-2000:]}"
    assert len(starts) == 1, f"expected one error:\n{err[-2000:]}"
    assert "Traceback" not in out + err
    message = "\n".join(lines[starts[0] :])  # `data check` lists every bad file on lines of its own
    assert str(case.names(world)) in message, message
    assert case.hint in message, message
    assert not world.marker.exists(), "a file was unpickled"

    after = _snapshot(tmp_path)
    for rel, old in before.items():
        assert rel in after, f"{rel} was deleted"
        if rel.startswith("run/logs/") and rel.endswith(".log"):
            assert after[rel].startswith(old), f"{rel} was rewritten, not appended to"
        else:
            assert _digest(after[rel]) == _digest(old), f"{rel} changed"


# --------------------------------------------------------------------------- valid but unusual images
def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one); ``arr`` is HxWx3 uint16."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


GRID = np.array([[0, 60, 120], [180, 240, 255]], np.uint8)  # 2x3, row-major distinguishable


def _unusual(kind: str, path_stem: Path) -> tuple[Path, np.ndarray, int]:
    """Write one unusual image; return its path, the RGB pixels wsss must read, and the tolerance."""
    if kind == "cmyk-tiff":
        cmyk = np.zeros((2, 3, 4), np.uint8)
        cmyk[0, 0] = (255, 0, 0, 0)  # cyan
        cmyk[0, 1] = (0, 0, 0, 255)  # black
        cmyk[0, 2] = (0, 128, 255, 0)  # orange
        path = path_stem.with_suffix(".tif")
        Image.fromarray(cmyk, mode="CMYK").save(path)
        expected = np.array([[[0, 255, 255], [0, 0, 0], [255, 127, 0]], [[255, 255, 255]] * 3], np.uint8)
        return path, expected, 0
    if kind == "cmyk-jpeg":
        path = path_stem.with_suffix(".jpg")
        Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=100)  # red
        return path, np.broadcast_to(np.array([255, 0, 0], np.uint8), (8, 16, 3)), 3
    if kind == "grey-16-bit":
        path = path_stem.with_suffix(".png")
        Image.fromarray(GRID.astype(np.uint16) * 256 + 100).save(path)  # high byte = GRID
        return path, np.repeat(GRID[:, :, None], 3, axis=2), 0
    if kind == "rgb-16-bit":
        path = path_stem.with_suffix(".png")
        rgb16 = np.stack([GRID, GRID[::-1], 255 - GRID], axis=2).astype(np.uint16) * 256 + 255
        _png16_rgb(path, rgb16)
        return path, (rgb16 >> 8).astype(np.uint8), 0
    if kind == "grey-8-bit":
        path = path_stem.with_suffix(".png")
        Image.fromarray(GRID).save(path)
        return path, np.repeat(GRID[:, :, None], 3, axis=2), 0
    if kind == "bilevel":
        path = path_stem.with_suffix(".png")
        Image.fromarray(GRID > 100).convert("1").save(path)
        return path, np.repeat(np.where(GRID > 100, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2), 0
    if kind == "rgba":  # alpha is dropped, the colours under it kept (PIL's and torchvision's RGB)
        path = path_stem.with_suffix(".png")
        rgba = np.stack([GRID, GRID[::-1], 255 - GRID, np.array([[0, 0, 0], [255, 128, 0]], np.uint8)], 2)
        Image.fromarray(rgba, mode="RGBA").save(path)
        return path, rgba[:, :, :3], 0
    if kind == "grey-alpha":
        path = path_stem.with_suffix(".png")
        Image.fromarray(np.stack([GRID, 255 - GRID], 2), mode="LA").save(path)
        return path, np.repeat(GRID[:, :, None], 3, axis=2), 0
    if kind == "palette-transparent":
        path = path_stem.with_suffix(".png")
        img = Image.fromarray(np.array([[0, 1, 2], [2, 1, 0]], np.uint8), mode="P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
        img.save(path, transparency=0)
        lut = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
        return path, lut[np.array([[0, 1, 2], [2, 1, 0]])], 0
    if kind == "exif-rotated":  # orientation 6 ("rotate 90° to view"): pixels are read as stored
        path = path_stem.with_suffix(".png")
        rgb = np.stack([GRID, GRID, GRID[::-1]], 2)
        Image.fromarray(rgb).save(path, exif=_exif(6))
        return path, rgb, 0
    raise AssertionError(kind)


UNUSUAL = (
    "cmyk-tiff", "cmyk-jpeg", "grey-16-bit", "rgb-16-bit", "grey-8-bit", "bilevel", "rgba", "grey-alpha",
    "palette-transparent", "exif-rotated",
)  # fmt: skip


@pytest.mark.parametrize("kind", UNUSUAL)
def test_unusual_images_load_as_rgb(kind: str, tmp_path: Path) -> None:
    path, expected, tolerance = _unusual(kind, tmp_path / "img")
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (*expected.shape[:2], 3)
    assert image_size(path) == pixels.shape[:2]  # the header size is the decoded size (no EXIF turn)
    diff = np.abs(pixels.astype(int) - expected.astype(int)).max()
    assert diff <= tolerance, f"{kind}: max difference {diff}\n{pixels}\nexpected\n{expected}"


def test_a_folder_of_unusual_images_passes_the_data_check(tmp_path: Path, capsys) -> None:
    """Every unusual image of one folder dataset, each with a mask of its stored size (an EXIF-rotated
    JPEG of 48x40 stored pixels too): ``wsss data check`` decodes all and finds nothing wrong."""
    world = World(tmp_path)
    for i, kind in enumerate(UNUSUAL):
        _, expected, _ = _unusual(kind, world.images / f"u{i}")
        write_label_png(world.masks / f"u{i}.png", np.ones(expected.shape[:2], np.uint8))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(world.images / "turned.jpg", exif=_exif(8))
    write_label_png(world.masks / "turned.png", np.zeros((H, W), np.uint8))
    tags = "".join(f"u{i},dog\n" for i in range(len(UNUSUAL))) + "turned.jpg,\n"
    (world.data / "tags.csv").write_text(TAGS + tags)
    rc = main(["data", "check", "--dataset", "folder", "--root", str(world.data), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "all files OK" in out and f"{len(NAMES) + len(UNUSUAL) + 1} images" in out


# --------------------------------------------------------------------------- valid text-file variants
def test_bom_windows_line_ends_and_optional_background_give_the_same_labels(tmp_path: Path, capsys) -> None:
    """A list, tags file and class list saved by Windows Notepad (UTF-8 BOM, CRLF), the class list with
    a 'background' line, and an image with an empty tag field (background only): ``wsss data tags``
    writes exactly the labels the plain files give."""
    plain, windows = World(tmp_path / "plain"), World(tmp_path / "windows")
    for world in (plain, windows):
        (world.data / "tags.csv").write_text(TAGS.replace("d.png,cat", "d.png,"))
    bom = "\ufeff"
    for name, text in (
        ("train.txt", "c\nb\na\nd\n"),
        ("tags.csv", TAGS.replace("d.png,cat", "d.png,")),
        ("classes.txt", "background\ncat\ndog\n"),
    ):
        (windows.data / name).write_bytes((bom + text.replace("\n", "\r\n")).encode("utf-8"))
    (plain.data / "train.txt").write_text("c\nb\na\nd\n")
    results = []
    for world in (plain, windows):
        out = world.tmp / "labels.npz"
        argv = ["data", "tags", "--dataset", "folder", "--root", str(world.data), "--split", "train"]
        assert main([*argv, "--out", str(out), "--no-progress"]) == 0
        results.append(read_labels(out))
    capsys.readouterr()
    (labels_p, classes_p), (labels_w, classes_w) = results
    assert classes_p == classes_w == ("background", "cat", "dog")
    expected = {"a": [1, 0], "b": [0, 1], "c": [1, 1], "d": [0, 0]}
    for labels in (labels_p, labels_w):
        assert {k: v.tolist() for k, v in labels.items()} == expected


# --------------------------------------------------------------------------- nothing unpickles untrusted
# Calls that would unpickle, and where each is allowed: only behind an explicit trust flag, or through
# the restricted numpy-only unpickler of legacy cls_labels.npy files.
_UNPICKLING = {"torch.load", "np.load", "numpy.load", "pickle.load", "pickle.loads", "pickle.Unpickler"}
_ALLOWED = {
    ("src/wsss/models/weights.py", "torch.load", "trust_pickle"),  # weights_only=False only if trust_pickle
    ("src/wsss/cams/importers.py", "np.load", "trust"),  # allow_pickle=True only after _refuse_untrusted
    ("src/wsss/data/labels.py", "pickle.Unpickler", ""),  # _NumpyOnlyUnpickler: numpy globals only
}


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> object:
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def _guarded(tree: ast.Module, call: ast.Call, flag: str) -> bool:
    """Whether ``call`` runs only when ``flag`` is true: it sits in the body of an ``if``/``elif flag:``,
    or its function first runs ``if not flag:`` whose body raises or calls a ``_refuse…`` function."""

    def names_flag(test: ast.expr) -> bool:
        return isinstance(test, ast.Name) and test.id == flag

    def inside(node: ast.AST, body: list[ast.stmt]) -> bool:
        return any(call is sub for stmt in body for sub in ast.walk(stmt))

    for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        if not inside(call, func.body):
            continue
        for branch in (n for n in ast.walk(func) if isinstance(n, ast.If)):
            if names_flag(branch.test) and inside(call, branch.body):
                return True
            negated = isinstance(branch.test, ast.UnaryOp) and isinstance(branch.test.op, ast.Not)
            if negated and names_flag(branch.test.operand) and branch.lineno < call.lineno:
                last = branch.body[-1]
                refuses = isinstance(last, ast.Raise) or (
                    isinstance(last, ast.Expr)
                    and isinstance(last.value, ast.Call)
                    and _call_name(last.value).startswith("_refuse")
                )
                if refuses:
                    return True
    return False


def test_no_code_path_unpickles_without_a_trust_flag() -> None:
    repo = Path(__file__).resolve().parents[1]
    unsafe = []
    for path in sorted((repo / "src" / "wsss").rglob("*.py")):
        rel = str(path.relative_to(repo))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            subclasses = isinstance(node, ast.ClassDef) and any(
                "Unpickler" in ast.unparse(b) for b in node.bases
            )
            if subclasses and (rel, "pickle.Unpickler", "") not in _ALLOWED:
                unsafe.append(f"{rel}:{node.lineno} subclasses an Unpickler")
            if not isinstance(node, ast.Call) or _call_name(node) not in _UNPICKLING:
                continue
            name = _call_name(node)
            if name == "torch.load" and _keyword(node, "weights_only") is True:
                continue
            if name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is False:
                continue
            flags = [flag for file, call, flag in _ALLOWED if file == rel and call == name]
            if flags and _guarded(tree, node, flags[0]):
                continue
            unsafe.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert unsafe == [], "calls that may unpickle without a trust flag:\n" + "\n".join(unsafe)


def test_the_trust_flags_really_gate_the_unpickling(tmp_path: Path) -> None:
    """The allowed calls above: without the flag the payload is refused before it can run; with it,
    the same file is read (and the payload runs: the flag is the user's explicit trust)."""
    from wsss.cams.importers import import_irn
    from wsss.errors import CheckpointError, DataError
    from wsss.models.weights import load_checkpoint_file

    marker = tmp_path / "UNPICKLED"
    weights = tmp_path / "w.pth"
    torch.save({"model": {"x": torch.ones(1)}, "note": Payload(marker)}, weights)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint_file(weights)
    assert not marker.exists()
    assert load_checkpoint_file(weights, trust_pickle=True)["x"].item() == 1.0 and marker.exists()
    marker.unlink()
    dump = tmp_path / "d.npy"
    np.save(dump, np.array({"keys": Payload(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="--trust-pickle"):
        import_irn(dump)
    assert not marker.exists()
    with pytest.raises(DataError, match="lacks 'high_res'"):
        import_irn(dump, trust=True)
    assert marker.exists()


def test_a_list_entry_outside_the_dataset_is_refused_by_every_reader(tmp_path: Path) -> None:
    from wsss.data.base import read_list_file
    from wsss.data.labels import read_tags
    from wsss.errors import DataError

    for entry in ("../../etc/x", "..\\x.jpg", "images/../../x.jpg", "..", "."):
        lst = tmp_path / "l.txt"
        lst.write_text(f"a\n{entry}\n")
        with pytest.raises(DataError, match=r"l\.txt, line 2: .* not an image name inside the dataset"):
            read_list_file(lst)
        tags = tmp_path / "t.json"
        tags.write_text(json.dumps({entry: ["cat"]}))
        with pytest.raises(DataError, match="not an image name inside the dataset"):
            read_tags(tags, ("background", "cat"))
    lst.write_text("/JPEGImages/x.jpg /SegmentationClassAug/x.png\nsub/y.png\n")  # DeepLab-style: fine
    assert read_list_file(lst) == ["x", "y"]
