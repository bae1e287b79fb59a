"""train-cls scores held-out tags: which images are held out, what the metrics hold, the warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.stage_context import cpu_context
from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError
from wsss.losses.cam import PlainCAMObjective
from wsss.report.results import stage_warnings
from wsss.stages import train_cls

TINY = [
    "classifier.pretrained=null",
    "classifier.epochs=2",
    "classifier.batch_size=4",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "classifier.validation_size=64",
    "classifier.validation_split=null",  # the shipped recipe scores val; each test chooses
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=4, size=64, seed=3, progress=False)
    return root


def _recipe(root: Path, *extra: str):
    return load_recipe("synth/irn-nano", [f"data.root={root}", *TINY, *extra])


def test_holdout_depends_on_names_only() -> None:
    names = [f"img{i:03d}" for i in range(40)]
    kept, held = train_cls.holdout_split(names, 0.25)
    assert len(held) == 10 and sorted(kept + held) == list(range(40))
    shuffled = names[::-1]
    _, held_rev = train_cls.holdout_split(shuffled, 0.25)
    assert {shuffled[i] for i in held_rev} == {names[i] for i in held}
    assert train_cls.holdout_split(names, 0.0) == (list(range(40)), [])
    with pytest.raises(ConfigError, match=r"classifier\.holdout must be in \[0, 1\)"):
        train_cls.holdout_split(names, 1.0)
    with pytest.raises(ConfigError, match="at least one image on each side"):
        train_cls.holdout_split(names[:2], 0.1)


def test_holdout_images_are_not_trained_on_and_are_scored(synth_root: Path, tmp_path: Path) -> None:
    ctx = cpu_context(_recipe(synth_root, "classifier.holdout=0.25", "classifier.validate_every=1"), tmp_path)
    train_names = set(train_cls.training_set(ctx).names)
    val_names = set(train_cls.validation_set(ctx).names)
    assert len(val_names) == 3 and len(train_names) == 9 and not train_names & val_names
    metrics = train_cls.run(ctx)
    v = metrics["validation"]
    assert v["images"] == 3 and v["epoch"] == 2 and v["split"] == "holdout 0.25 of train_split"
    assert [h["epoch"] for h in v["history"]] == [1, 2]
    assert 0.0 <= v["map"] <= 1.0
    assert list(v["per_class"]) == list(train_cls.validation_set(ctx).class_names[1:])
    assert v["chance_map"] == pytest.approx(
        sum(c["positives"] / 3 for n, c in v["per_class"].items() if n not in v["unscored"])
        / (3 - len(v["unscored"]))
    )


def test_validation_split_and_no_validation(synth_root: Path, tmp_path: Path) -> None:
    ctx = cpu_context(_recipe(synth_root, "classifier.validation_split=val"), tmp_path / "a")
    assert len(train_cls.validation_set(ctx)) == 4 and len(train_cls.training_set(ctx)) == 12
    ctx = cpu_context(_recipe(synth_root), tmp_path / "b")
    assert train_cls.validation_set(ctx) is None
    both = cpu_context(
        _recipe(synth_root, "classifier.validation_split=val", "classifier.holdout=0.2"), tmp_path
    )
    with pytest.raises(ConfigError, match="set one"):
        train_cls.training_set(both)


def test_a_classifier_at_chance_is_flagged(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    # every image gets the same score for every class: a ranking no better than chance
    monkeypatch.setattr(
        PlainCAMObjective, "class_probabilities", lambda self, out: torch.full_like(out.logits[:, 1:], 0.5)
    )
    ctx = cpu_context(_recipe(synth_root, "classifier.validation_split=val", "classifier.epochs=1"), tmp_path)
    metrics = train_cls.run(ctx)
    assert metrics["validation"]["map"] <= metrics["validation"]["chance_map"]
    (warning,) = metrics["warnings"]
    assert "barely beats chance" in warning and "4 images" in warning
    record = {"stages": {"train-cls": {"metrics": metrics}}}
    assert stage_warnings(record) == [("train-cls", warning)]


def test_validation_between_epochs_does_not_change_training(synth_root: Path, tmp_path: Path) -> None:
    """Scoring after every epoch leaves the trained weights bit-identical (own RNG, eval mode)."""
    from safetensors.torch import load_file

    plain = cpu_context(_recipe(synth_root), tmp_path / "plain")
    scored = cpu_context(
        _recipe(synth_root, "classifier.validation_split=val", "classifier.validate_every=1"),
        tmp_path / "scored",
    )
    assert "validation" not in train_cls.run(plain)
    assert [h["epoch"] for h in train_cls.run(scored)["validation"]["history"]] == [1, 2]
    a, b = load_file(plain.paths.classifier_weights), load_file(scored.paths.classifier_weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
