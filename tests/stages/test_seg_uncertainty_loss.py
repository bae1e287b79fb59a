"""train-seg with SPU's uncertainty-rectified loss: both heads reach the loss, compat picks the form,
and a model without an auxiliary head is refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError
from wsss.losses.uncertainty import UncertaintyRectifiedLoss
from wsss.pipeline import run_pipeline

TINY = [
    "stages=[train-seg]",
    "segmentation.labels=gt",
    "segmentation.loss=uncertainty_rectified",
    "segmentation.model=pspnet",
    "segmentation.backbone=mobilenet_v2",
    "segmentation.pretrained=null",
    "segmentation.crop_size=48",
    "segmentation.epochs=1",
    "segmentation.batch_size=4",
    "segmentation.num_workers=0",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=8, num_val=2, size=48, seed=3, progress=False)
    return root


def spy_forward(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...], tuple[int, ...] | None]]:
    calls: list[tuple[str, tuple[int, ...], tuple[int, ...] | None]] = []
    forward = UncertaintyRectifiedLoss.forward

    def spy(self, logits, labels, aux_logits=None):
        calls.append(
            (self.form, tuple(logits.shape), None if aux_logits is None else tuple(aux_logits.shape))
        )
        return forward(self, logits, labels, aux_logits)

    monkeypatch.setattr(UncertaintyRectifiedLoss, "forward", spy)
    return calls


@pytest.mark.parametrize(("compat", "form"), [("clean", "pixelwise"), ("authors_code", "scalar")])
def test_pspnet_trains_with_both_heads(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compat: str, form: str
) -> None:
    calls = spy_forward(monkeypatch)
    recipe = load_recipe(
        "synth/bnr-nano",
        [f"data.root={synth_root}", f"compat={compat}", "segmentation.model_args={output_stride: 16}", *TINY],
    )
    record = run_pipeline(recipe, tmp_path / compat, device="cpu")
    metrics = record["stages"]["train-seg"]["metrics"]
    assert metrics["loss"] == "uncertainty_rectified" and metrics["steps"] == 2
    assert len(calls) == 2
    for used_form, main_shape, aux_shape in calls:
        assert used_form == form  # the recipe's compat reached the loss builder
        # 48-pixel crops, bg + 3 classes: main head at stride 16, auxiliary head (stage3) at 8
        assert main_shape == (4, 4, 3, 3) and aux_shape == (4, 4, 6, 6)
    losses = metrics["final_losses"]
    assert set(losses) == {"loss", "pcl", "kl_main", "kl_aux", "confidence"}
    assert all(math.isfinite(v) for v in losses.values())
    assert (tmp_path / compat / "train-seg" / "model.safetensors").is_file()


def test_model_without_auxiliary_head_is_refused(synth_root: Path, tmp_path: Path) -> None:
    no_aux = (
        "segmentation.model_args={output_stride: 16, aux_weight: 0}",
        "segmentation.model=deeplab_v3_lite",
    )
    for i, override in enumerate(no_aux):
        recipe = load_recipe("synth/bnr-nano", [f"data.root={synth_root}", *TINY, override])
        with pytest.raises(ConfigError, match=r"segmentation\.loss 'uncertainty_rectified'.*auxiliary head"):
            run_pipeline(recipe, tmp_path / str(i), device="cpu")
