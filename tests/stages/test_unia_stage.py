"""UniA through the pipeline: the single-stage network trains with every term, its CAMs are written and
scored, and predict segments with the network's own decoder (predict.model: classifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stage_context import cpu_context
from wsss.cli import main
from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.engine import export_weights
from wsss.errors import ConfigError
from wsss.stages import predict
from wsss.stages.train_cls import build_classifier

TINY = [
    "classifier.epochs=2",
    "classifier.batch_size=4",
    "classifier.num_workers=0",
    "classifier.crop_size=64",
    "classifier.validation_size=64",
    "classifier.model_args.img_size=64",
    "classifier.warmup_steps=2",
    # every term from step 2 on (the run has 6 steps): the objective's warm-up and switches all pass
    "classifier.method_args.starts={ptc: 0, aff: 0, dis: 0, seg: 2, reg: 2}",
    "classifier.method_args.switch_iter=3",
    "classifier.method_args.aux2final=4",
    "classifier.method_args.par_iters=2",
    "cams.scales=[1.0, 0.5]",
    "cams.batch_images=4",
    "predict.scales=[1.0]",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=4, size=64, seed=7, progress=False)
    return root


def test_unia_trains_every_term_then_makes_cams_and_predicts(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [item for o in [f"data.root={synth_root}", *TINY] for item in ("--set", o)]
    assert main(["run", "synth/unia-tiny", "--out", str(run), "--device", "cpu", "--no-progress", *sets]) == 0
    record = json.loads((run / "run.json").read_text())
    train = record["stages"]["train-cls"]["metrics"]
    assert train["steps"] == 6
    # the last epoch's mean losses hold every term, all finite and the regulariser negative (an energy)
    losses = train["final_losses"]
    assert set(losses) == {"loss", "cls", "aux_cls", "ptc", "aff", "dis", "seg", "reg"}
    assert losses["reg"] < 0 < losses["seg"]
    assert len(list((run / "cams").glob("*.npz"))) == 12 + 4
    assert len(list((run / "predictions").glob("*.png"))) == 4
    seg = record["stages"]["predict"]["metrics"]["val"]
    assert 0.0 <= seg["miou"] <= 1.0 and "all_background_miou" in seg


def test_predict_from_a_classifier_without_a_segmentation_head_is_refused(
    synth_root: Path, tmp_path: Path
) -> None:
    recipe = load_recipe("synth/irn-nano", [f"data.root={synth_root}", "predict.model=classifier"])
    ctx = cpu_context(recipe, tmp_path / "run")
    ctx.paths.classifier_weights.parent.mkdir(parents=True)

    export_weights(ctx.paths.classifier_weights, build_classifier(ctx, 4, pretrained=False), {})
    with pytest.raises(ConfigError, match="no segmentation head"):
        predict.load_predictor(ctx, 4)


def test_the_fully_supervised_reference_trains_on_the_masks(synth_root: Path, tmp_path: Path) -> None:
    """supervision: full gets the ground-truth masks through train-cls (the weak / full reference)."""
    run = tmp_path / "run"
    sets = [
        f"data.root={synth_root}",
        *TINY,
        "classifier.epochs=1",
        "classifier.method_args.supervision=full",
    ]
    argv = [
        "run",
        "synth/unia-tiny",
        "--out",
        str(run),
        "--device",
        "cpu",
        "--no-progress",
        "--stages",
        "train-cls",
    ]
    assert main([*argv, *[item for o in sets for item in ("--set", o)]]) == 0
    losses = json.loads((run / "run.json").read_text())["stages"]["train-cls"]["metrics"]["final_losses"]
    assert losses["seg"] > 0 and "ptc" in losses
