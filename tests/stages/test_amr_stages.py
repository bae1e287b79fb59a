"""AMR's two training stages: pretrain-cls → train-cls hand-over, the refusals, a tiny run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.stage_context import cpu_context
from wsss.cli import main
from wsss.config import load_recipe, recipe_names
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError
from wsss.pipeline import run_pipeline
from wsss.stages import train_cls

TINY = [
    "pretrain.pretrained=null",
    "pretrain.epochs=1",
    "pretrain.batch_size=6",
    "pretrain.num_workers=0",
    "pretrain.resize_long=[56, 72]",
    "pretrain.crop_size=64",
    "pretrain.cutout=[3, 16]",
    "classifier.pretrained=null",
    "classifier.epochs=1",
    "classifier.batch_size=6",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[1.0, 0.5]",
]
AMR_RECIPES = [n for n in recipe_names() if load_recipe(n).classifier.model == "amr"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=2, size=64, seed=5, progress=False)
    return root


def _overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", *TINY, *extra]


def test_stage_two_without_stage_one_fails_before_any_work(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = load_recipe("synth/amr-nano", _overrides(synth_root))
    missing = rf"{run / 'pretrain-cls' / 'model.safetensors'} does not exist.*--stages pretrain-cls"
    with pytest.raises(ConfigError, match=missing):
        run_pipeline(recipe, run, stages=["train-cls"], device="cpu")
    assert not (run / "train-cls").exists() and not (run / "recipe.yaml").exists()
    with pytest.raises(ConfigError, match=missing):  # pretrain-cls after train-cls is no help
        run_pipeline(recipe, run, stages=["train-cls", "pretrain-cls"], device="cpu")
    with pytest.raises(ConfigError, match=missing):  # the stage itself refuses too
        train_cls.run(cpu_context(recipe, run))
    assert not (run / "train-cls" / "state.pt").exists()


def test_amr_without_its_first_stage_is_refused(synth_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe("synth/amr-nano", _overrides(synth_root, "classifier.init_from=null"))
    with pytest.raises(ConfigError, match=r"classifier\.init_from: pretrain.*run pretrain-cls first"):
        train_cls.run(cpu_context(recipe, tmp_path / "run"))
    no_section = load_recipe("synth/amr-nano", _overrides(synth_root, "pretrain=null"))
    with pytest.raises(ConfigError, match="'pretrain' section, which is null"):
        run_pipeline(no_section, tmp_path / "run", device="cpu")
    with pytest.raises(ConfigError, match="has no 'pretrain' section"):
        run_pipeline(no_section, tmp_path / "run", stages=["train-cls"], device="cpu")
    typo = load_recipe("synth/amr-nano", _overrides(synth_root, "classifier.model_args.insert=amn"))
    with pytest.raises(ConfigError, match=r"classifier\.model_args\.insert.*did you mean 'amm'"):
        run_pipeline(typo, tmp_path / "typo", device="cpu")
    assert not (tmp_path / "typo" / "pretrain-cls").exists()
    plain = load_recipe("synth/irn-nano", [f"data.root={synth_root}", "classifier.init_from=pretrain"])
    (tmp_path / "plain" / "pretrain-cls").mkdir(parents=True)
    (tmp_path / "plain" / "pretrain-cls" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="takes no pretrained stage"):
        train_cls.run(cpu_context(plain, tmp_path / "plain"))


def test_wsss_run_trains_both_stages_and_hands_the_spotlight_over(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [item for o in _overrides(synth_root) for item in ("--set", o)]
    argv = ["run", "synth/amr-nano", "--out", str(run), "--device", "cpu", *sets]
    assert main([*argv, "--stages", "pretrain-cls,train-cls,make-cams,eval-cams"]) == 0
    stage1 = load_file(run / "pretrain-cls" / "model.safetensors")
    stage2 = load_file(run / "train-cls" / "model.safetensors")
    assert json.loads((run / "pretrain-cls" / "model.json").read_text())["stage"] == "pretrain-cls"
    spot = {k[len("spotlight.") :]: v for k, v in stage2.items() if k.startswith("spotlight.")}
    assert spot.keys() == stage1.keys()
    # the frozen spotlight backbone is stage 1's, to the bit; its classifier trained on through CPS
    assert all(torch.equal(spot[k], stage1[k]) for k in stage1 if k.startswith("backbone."))
    assert not torch.equal(spot["classifier.weight"], stage1["classifier.weight"])
    assert any(".inserts.stage3." in k for k in stage2)  # the compensation branch's AMMs
    assert len(list((run / "cams").glob("*.npz"))) == 12
    record = json.loads((run / "run.json").read_text())
    assert set(record["stages"]["train-cls"]["metrics"]["final_losses"]) == {"loss", "cls_s", "cls_c", "cps"}
    files = [run / d / "model.safetensors" for d in ("pretrain-cls", "train-cls")]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main([*argv, "--stages", "pretrain-cls,train-cls"]) == 0  # complete: both skipped
    assert stamps == [f.stat().st_mtime_ns for f in files]


@pytest.mark.parametrize("name", AMR_RECIPES)
def test_amr_recipes_build_the_spotlight_as_the_pretrain_section(name: str) -> None:
    """The spotlight loads stage 1's weights by key, so its stride and dilation must be stage 1's."""
    r = load_recipe(name)
    assert r.stages.index("pretrain-cls") < r.stages.index("train-cls")
    assert r.classifier.init_from == "pretrain" and r.pretrain is not None and r.pretrain.init_from is None
    assert (r.pretrain.model, r.pretrain.method, r.classifier.method) == ("cam", "cam", "amr")
    assert r.pretrain.backbone == r.classifier.backbone and r.pretrain.cutout is not None
    for key in ("output_stride", "backbone_args", "feature_level"):
        assert r.pretrain.model_args.get(key) == r.classifier.model_args.get(key), key
