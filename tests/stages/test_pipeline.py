"""The pipeline on a tiny embedded dataset: outputs, skip-when-done, exact resume, sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.stage_context import cpu_context
from wsss.cams.files import load_cam
from wsss.config import load_recipe
from wsss.data.palette import write_label_png
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError, DataError
from wsss.pipeline import run_pipeline, splits_to_check
from wsss.stages import make_cams, train_cls

TINY = [
    "stages=[train-cls, make-cams, eval-cams, make-labels]",
    "classifier.epochs=2",
    "classifier.batch_size=8",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[48.0, 64.0]",
    "cams.batch_images=5",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=16, num_val=6, size=64, seed=3, progress=False)
    return root


def _recipe(root: Path, *extra: str):
    return load_recipe("synth/bnr-nano", [f"data.root={root}", *TINY, *extra])


def test_pipeline_outputs_and_skip(synth_root: Path, tmp_path: Path) -> None:
    recipe = _recipe(synth_root)
    run = tmp_path / "run"
    record = run_pipeline(recipe, run, device="cpu")
    assert list(record["stages"]) == ["train-cls", "make-cams", "eval-cams", "make-labels"]
    cams = sorted((run / "cams").glob("*.npz"))
    labels = sorted((run / "labels").glob("*.png"))
    assert len(cams) == 16 + 6 and len(labels) == 16 + 6
    rec = load_cam(cams[0])
    assert rec.norm == "minmax" and rec.stride == 1 and rec.size == (64, 64)
    assert rec.cams.shape[1:] == (64, 64) and np.isclose(rec.cams.max(axis=(1, 2)), 1.0, atol=1e-3).all()
    summary = json.loads((run / "eval" / "cams.json").read_text())["summary"]
    train = summary["splits"]["train"]
    assert 0.0 <= train["oracle_miou"] <= 1.0 and train["miou_at_chosen"] == train["oracle_miou"]
    assert (run / "eval" / "threshold_curve_train.png").stat().st_size > 1000
    run_json = json.loads((run / "run.json").read_text())
    assert (
        run_json["versions"]["torch"] == torch.__version__ and run_json["versions"]["python"].count(".") == 2
    )
    assert run_json["machine"]["cpu_count"] >= 1 and run_json["device"] == "cpu"
    assert run_json["config"]["classifier"]["epochs"] == 2 and run_json["cwd"]
    saved = load_recipe(run / "recipe.yaml")
    assert saved.classifier.epochs == 2 and saved.data.root == str(synth_root)
    stamp = {p: p.stat().st_mtime_ns for p in (run / "cams").glob("*.npz")}
    again = run_pipeline(recipe, run, device="cpu")
    assert again["stages"]["make-cams"] == record["stages"]["make-cams"]  # not re-run
    assert stamp == {p: p.stat().st_mtime_ns for p in (run / "cams").glob("*.npz")}


def test_changed_recipe_is_refused(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(_recipe(synth_root, "stages=[train-cls]", "classifier.epochs=1"), run, device="cpu")
    with pytest.raises(ConfigError, match=r"classifier\.lr"):
        run_pipeline(
            _recipe(synth_root, "stages=[train-cls]", "classifier.epochs=1", "classifier.lr=0.1"),
            run,
            device="cpu",
        )
    # the non-finite policy and a per-image stage's splits are not "another recipe"
    same = _recipe(
        synth_root,
        "stages=[train-cls]",
        "classifier.epochs=1",
        "classifier.nonfinite=skip",
        "labels.splits=[train]",
        "predict.splits=[train]",
    )
    assert run_pipeline(same, run, device="cpu")["stages"]["train-cls"]
    # settings of stages that never ran here (no train-seg/, predictions/ …) are not "another recipe"
    later = ["stages=[train-cls]", "classifier.epochs=1", "segmentation.lr=0.05", "predict.flip=false"]
    assert run_pipeline(_recipe(synth_root, *later), run, device="cpu")["stages"]["train-cls"]
    (run / "train-seg").mkdir()  # ... until one of them has started
    with pytest.raises(ConfigError, match=r"segmentation\.lr"):
        run_pipeline(_recipe(synth_root, *later[:2], "segmentation.lr=0.2"), run, device="cpu")


def test_resume_reproduces_uninterrupted_weights(synth_root: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cls.run(cpu_context(_recipe(synth_root, "classifier.epochs=2"), straight))
    # "interrupted" after epoch 1: the state file holds epoch 1; a rerun continues from it
    train_cls.run(cpu_context(_recipe(synth_root, "classifier.epochs=1"), resumed))
    assert torch.load(resumed / "train-cls" / "state.pt", weights_only=True)["epoch"] == 1
    train_cls.run(cpu_context(_recipe(synth_root, "classifier.epochs=2"), resumed))
    a = load_file(straight / "train-cls" / "model.safetensors")
    b = load_file(resumed / "train-cls" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shards_cover_the_split_identically(synth_root: Path, tmp_path: Path) -> None:
    # 6 images in groups of 2: shard 0 of 2 takes groups 0 and 2 (4 images), shard 1 group 1
    recipe = _recipe(synth_root, "classifier.epochs=1", "cams.splits=[val]", "cams.batch_images=2")
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    train_cls.run(cpu_context(recipe, full))
    sharded.mkdir()
    (sharded / "train-cls").mkdir()
    for f in ("model.safetensors", "model.json"):
        (sharded / "train-cls" / f).write_bytes((full / "train-cls" / f).read_bytes())
    make_cams.run(cpu_context(recipe, full))
    make_cams.run(cpu_context(recipe, sharded, shard=(0, 2)))
    assert not make_cams.is_complete(cpu_context(recipe, sharded))
    names = [p.stem for p in sorted((full / "cams").glob("*.npz"))]  # the val list is in name order
    assert sorted(p.stem for p in (sharded / "cams").glob("*.npz")) == names[:2] + names[4:]
    make_cams.run(cpu_context(recipe, sharded, shard=(1, 2)))
    assert make_cams.is_complete(cpu_context(recipe, sharded))
    for path in (full / "cams").glob("*.npz"):
        a, b = load_cam(path), load_cam(sharded / "cams" / path.name)
        assert np.array_equal(a.cams, b.cams) and np.array_equal(a.keys, b.keys)


def test_unknown_component_fails_before_any_work(synth_root: Path, tmp_path: Path) -> None:
    recipe = _recipe(synth_root, "cams.extractor=transcm")
    with pytest.raises(ConfigError, match=r"cams\.extractor.*did you mean 'transcam'"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()


def test_missing_weight_file_fails_before_any_work(synth_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "Conformer_small_patch16.pth"
    recipe = _recipe(synth_root, f"classifier.pretrained={missing}")
    with pytest.raises(ConfigError, match=rf"classifier\.pretrained: weight file {missing} not found"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    # nothing written that would make the corrected recipe count as a different one
    assert not (tmp_path / "run" / "recipe.yaml").exists() and not (tmp_path / "run" / "train-cls").exists()
    run_pipeline(_recipe(synth_root, "stages=[train-cls]"), tmp_path / "run", device="cpu")


def test_offline_weights_package_is_checked_up_front(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsss.pipeline

    monkeypatch.setattr(wsss.pipeline, "offline_mobilenet_v2_weights", lambda: None)
    recipe = _recipe(synth_root, "stages=[train-cls, train-seg]", "segmentation.pretrained=offline")
    with pytest.raises(ConfigError, match=r"segmentation\.pretrained: offline needs the package"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        (
            "segmentation.model=deeplab_v3_lit",
            r"segmentation model 'deeplab_v3_lit' at 'segmentation\.model'",
        ),
        ("segmentation.backbone=mobilenet_v3", r"at 'segmentation\.backbone'"),
        ("segmentation.loss=pfu", r"loss 'pfu' at 'segmentation\.loss'.*puf"),
        ("labels.crf=lable", r"labels\.crf: unknown CRF preset 'lable'.*label"),
        ("random_walk.crf=lable", r"random_walk\.crf: unknown CRF preset"),
        (
            "predict.protocol=transcm",
            r"predict\.protocol: unknown segmentation test protocol 'transcm'.*transcam",
        ),
        ("predict.crf=deeplabb", r"predict\.crf: unknown CRF preset 'deeplabb'"),
        (
            "segmentation.model_args={chanels: 64}",
            r"unknown key 'segmentation\.model_args\.chanels'.*channels",
        ),
        (
            "segmentation.loss_args={ignore_indx: 255}",
            r"'segmentation\.loss_args\.ignore_indx'.*ignore_index",
        ),
        ("classifier.method_args={noise_scal: 1.0}", r"'classifier\.method_args\.noise_scal'.*noise_scale"),
    ],
)
def test_typos_in_later_stages_fail_before_any_work(
    synth_root: Path, tmp_path: Path, typo: str, message: str
) -> None:
    stages = "stages=[train-cls, make-cams, make-labels, random-walk, train-seg, predict]"
    recipe = _recipe(synth_root, stages, typo)
    with pytest.raises(ConfigError, match=message):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()


def test_a_report_problem_does_not_fail_a_finished_run(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wsss.pipeline
    from wsss.errors import DataError

    def broken(run_dir: Path) -> Path:
        raise DataError(f"mask file not found: {run_dir}/x.png")

    monkeypatch.setattr(wsss.pipeline, "write_report", broken)
    record = run_pipeline(_recipe(synth_root, "stages=[train-cls]"), tmp_path / "run", device="cpu")
    assert (
        "train-cls" in record["stages"] and (tmp_path / "run" / "train-cls" / "model.safetensors").is_file()
    )
    log = (tmp_path / "run" / "logs" / "pipeline.log").read_text()
    assert "report not written (mask file not found" in log and f"wsss report {tmp_path / 'run'}" in log


def _synth_with_bad_mask(root: Path, name: str) -> Path:
    """A tiny synth set whose mask ``name`` is 64 wide but 60 high (its image is 64x64)."""
    generate_synth(root, num_train=8, num_val=4, size=64, seed=3, progress=False)
    bad = root / "SegmentationClass" / f"{name}.png"
    write_label_png(bad, np.zeros((60, 64), np.uint8))
    return bad


def test_a_mask_of_the_wrong_size_fails_before_any_work(tmp_path: Path) -> None:
    # before the check, this mask stopped the run at eval-cams, after training and CAMs
    bad = _synth_with_bad_mask(tmp_path / "data", "synth_val_000002")
    recipe = _recipe(tmp_path / "data", "cams.splits=[train, val]")
    with pytest.raises(DataError) as err:
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    msg = str(err.value)
    assert f"mask {bad} is 64x60 but its image" in msg and "synth_val_000002.jpg is 64x64" in msg
    assert "(sizes WxH)" in msg and "1 of 4 images" in msg
    assert not (tmp_path / "run" / "train-cls").exists() and not (tmp_path / "run" / "recipe.yaml").exists()


def test_the_data_check_reads_only_splits_that_stages_still_to_run_read(tmp_path: Path) -> None:
    _synth_with_bad_mask(tmp_path / "data", "synth_val_000002")
    recipe = _recipe(tmp_path / "data", "cams.splits=[train, val]", "predict.splits=[val]")
    ctx = cpu_context(recipe, tmp_path / "run")
    assert splits_to_check(ctx, ["train-cls"]) == ["train"]  # the bad val mask does not stop it
    assert splits_to_check(ctx, ["train-cls", "make-cams", "predict"]) == ["train", "val"]
    (tmp_path / "run" / "train-cls").mkdir(parents=True)
    (tmp_path / "run" / "train-cls" / "model.safetensors").write_bytes(b"")  # train-cls finished
    assert splits_to_check(ctx, ["train-cls", "predict"]) == ["val"]
    run_pipeline(_recipe(tmp_path / "data", "stages=[train-cls]"), tmp_path / "run2", device="cpu")


def test_label_splits_narrow_and_widen_on_a_rerun_without_redoing_finished_work(
    synth_root: Path, tmp_path: Path
) -> None:
    """make-labels on the train split only; a rerun that asks for val too keeps every finished
    file (weights, CAMs, train labels) and writes only val's labels; narrowing again skips it."""
    run = tmp_path / "run"
    narrow = _recipe(synth_root, "classifier.epochs=1", "labels.splits=[train]")
    assert narrow.cams.splits == ["train", "val"]
    run_pipeline(narrow, run, device="cpu")
    labels = {p.name: p.read_bytes() for p in (run / "labels").glob("*.png")}
    assert len(labels) == 16  # the val split's 6 images got CAMs but no labels
    kept = {p: p.stat().st_mtime_ns for p in [*(run / "cams").glob("*.npz"), *(run / "train-cls").glob("*")]}
    wide = _recipe(synth_root, "classifier.epochs=1", "labels.splits=[train, val]")
    record = run_pipeline(wide, run, device="cpu")  # not refused as another recipe
    assert record["stages"]["make-labels"]["metrics"]["written"] == 6
    after = {p.name: p.read_bytes() for p in (run / "labels").glob("*.png")}
    assert len(after) == 22 and all(after[name] == data for name, data in labels.items())
    assert kept == {p: p.stat().st_mtime_ns for p in kept}
    stamp = {p: p.stat().st_mtime_ns for p in (run / "labels").glob("*.png")}
    again = run_pipeline(narrow, run, device="cpu")  # every train label exists: nothing to do
    assert again["stages"]["make-labels"] == record["stages"]["make-labels"]
    assert stamp == {p: p.stat().st_mtime_ns for p in (run / "labels").glob("*.png")}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["labels.splits=[test]"], r"labels\.splits names \['test'\], which get no CAMs"),
        (["labels.splits=[]"], r"labels\.splits is empty"),
        (
            ["stages=[train-cls, make-cams, make-labels, train-affinity]", "labels.splits=[val]"],
            r"labels\.splits is \['val'\], but stage train-affinity reads the labels of split\(s\) \['train'\]",
        ),
    ],
)
def test_label_splits_that_cannot_work_fail_before_any_work(
    synth_root: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        run_pipeline(_recipe(synth_root, *overrides), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()
