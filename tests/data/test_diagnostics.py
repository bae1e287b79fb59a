"""Tag diagnostics: a frequent tag, entangled tags and absent classes are named before training."""

from __future__ import annotations

import argparse
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from wsss.cli import data as data_cli
from wsss.data.diagnostics import tag_report
from wsss.pipeline import log_training_tags

CLASSES = ("sky", "boat", "sail", "gull", "tern", "whale")


def constructed_tags() -> np.ndarray:
    """10 images: sky on 9; boat and sail together on the same 6; gull with tern on 2; no whale."""
    tags = np.zeros((10, len(CLASSES)), np.float32)
    tags[:9, 0] = 1  # sky: 90 %
    tags[:6, 1] = 1  # boat on images 0-5
    tags[:6, 2] = 1  # sail on the same images
    tags[6, 2] = 1  # ... and one more: P(boat | sail) = 6 / 7
    tags[7:9, 3] = 1  # gull on 2 images
    tags[7:9, 4] = 1  # tern on the same 2: entangled, but too rare to warn about
    return tags


def test_counts_pairs_and_shares() -> None:
    report = tag_report(constructed_tags(), CLASSES)
    assert report.num_images == 10 and report.untagged == 1  # image 9 has no tag
    assert report.counts == (9, 6, 7, 2, 2, 0)
    pairs = {(a, b): (k, p_ba, p_ab) for a, b, k, p_ba, p_ab in report.pairs}
    assert pairs[("boat", "sail")] == (6, 1.0, pytest.approx(6 / 7))
    assert pairs[("sky", "boat")] == (6, pytest.approx(6 / 9), 1.0)
    assert ("boat", "gull") not in pairs  # never together
    assert "    1  sky" in report.table() and "90.0 %" in report.table()
    # the most entangled pair first: gull & tern (2 images, 100 % both ways)
    assert report.pair_lines(1)[0].startswith("  gull & tern: 2 images; 100 %")


def test_warnings_name_the_frequent_tag_the_entangled_pair_and_the_absent_class() -> None:
    warnings = tag_report(constructed_tags(), CLASSES).warnings
    assert len(warnings) == 2  # whale absent, sky frequent; boat/sail: P(boat | sail) = 6 / 7 < 0.9
    assert "no image is tagged with 'whale'" in warnings
    assert any(
        "'sky' is tagged on 9 of 10 images (90 %)" in w and "nearly every image" in w for w in warnings
    )
    assert not any("'gull' and 'tern'" in w for w in warnings)  # 2 images: below MIN_PAIR_IMAGES
    # one more sail-only image fewer and boat/sail become inseparable: 6 of 6 both ways
    tags = constructed_tags()
    tags[6, 2] = 0
    entangled = [w for w in tag_report(tags, CLASSES).warnings if "'boat' and 'sail'" in w]
    assert len(entangled) == 1 and "6 images (100 % of boat's, 100 % of sail's)" in entangled[0]


def test_a_tag_at_the_limit_does_not_warn() -> None:
    tags = np.zeros((10, 2), np.float32)
    tags[:8, 0] = 1  # exactly 80 %: not more than FREQUENT_TAG
    tags[8:, 1] = 1
    assert tag_report(tags, ("a", "b")).warnings == ()


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        tag_report(np.zeros((4, 2)), ("a", "b", "c"))


def test_runs_log_the_warnings_of_their_training_tags(caplog: pytest.LogCaptureFixture) -> None:
    ds = SimpleNamespace(labels=constructed_tags(), class_names=("background", *CLASSES))
    ctx = SimpleNamespace(
        recipe=SimpleNamespace(data=SimpleNamespace(train_split="train")), logger=logging.getLogger("t")
    )
    with caplog.at_level(logging.INFO, logger="t"):
        log_training_tags(ctx, ds)
    info = [r.message for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert info == [
        "training tags (train): 10 images; per class: sky 9 (90 %), boat 6 (60 %), sail 7 (70 %), "
        "gull 2 (20 %), tern 2 (20 %), whale 0 (0 %)"
    ]
    assert len(warnings) == 2 and all(w.startswith("training tags (train): ") for w in warnings)
    assert any("'sky' is tagged on 9 of 10 images" in w for w in warnings)


def test_data_check_prints_sizes_shares_pairs_and_warnings(tmp_path, capsys) -> None:
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    rows = []
    for i, (w, h) in enumerate([(10, 12), (14, 8), (9, 9), (20, 6), (16, 16)]):
        Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(root / "images" / f"im{i}.png")
        rows.append(f"im{i}.png,cat" + (";dog" if i == 0 else ""))
    (root / "tags.csv").write_text("image,tags\n" + "\n".join(rows) + "\n")
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "check", "--dataset", "folder", "--root", str(root), "--split", "all", "--no-progress"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    # areas 120, 112, 81, 120, 256: smallest 9×9, median 10×12 or 20×6 (equal areas), largest 16×16
    assert "image sizes (W×H): smallest 9×9, median " in out and "largest 16×16" in out
    assert "cat        5  100.0 %" in out and "dog        1   20.0 %" in out
    assert "cat & dog: 1 images" in out
    assert "warning: 'cat' is tagged on 5 of 5 images (100 %)" in out
