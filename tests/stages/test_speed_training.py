"""Channels-last training batches (``channels_last: auto`` on the CPU) train the same network.

The loop hands the step its images in NHWC order; the values are the same, so one training step
gives the same loss and gradients up to float rounding (float64: to 1e-10), and a short train-cls
run ends with the same weights up to float rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.stage_context import cpu_context
from wsss.config import ClassifierConfig, load_recipe
from wsss.data.synth import generate_synth
from wsss.errors import CheckpointError
from wsss.registry import CAM_MODELS
from wsss.stages import train_cls
from wsss.stages.training import batch_layout, train_loop, uses_channels_last

CL = torch.channels_last


def test_batch_layout_moves_only_the_float_image() -> None:
    image = torch.randn(2, 3, 5, 7)
    mask = torch.zeros(2, 5, 7, dtype=torch.int64)
    batch = {"image": image, "mask": mask, "labels": torch.ones(2, 4), "name": ["a", "b"]}
    out = batch_layout(batch, True)
    assert out["image"].is_contiguous(memory_format=CL) and torch.equal(out["image"], image)
    assert out["mask"] is mask and out["labels"] is batch["labels"] and out["name"] == ["a", "b"]
    assert batch["image"] is image  # the loader's dict is not changed in place
    assert batch_layout(batch, False) is batch
    uint8 = {"image": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}
    assert batch_layout(uint8, True)["image"].is_contiguous()  # only floating images
    assert batch_layout([image], True)[0] is image  # not a dict: as loaded


def test_uses_channels_last() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not uses_channels_last(ClassifierConfig(), cpu)  # off by default: the measured runs repeat
    auto = ClassifierConfig(channels_last="auto")
    assert uses_channels_last(auto, cpu) and not uses_channels_last(auto, gpu)
    assert uses_channels_last(ClassifierConfig(channels_last=True), gpu)
    assert not uses_channels_last(ClassifierConfig(channels_last=False), cpu)


def _model(dtype: torch.dtype, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    kw = dict(backbone="mobilenet_v2", num_classes=num_classes, output_stride=16)
    try:
        model = CAM_MODELS.build("cam", pretrained="offline", **kw)
    except CheckpointError:
        model = CAM_MODELS.build("cam", **kw)
    return model.to(dtype).train()


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = F.multilabel_soft_margin_loss(model(x).logits[:, 1:], y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_step_same_loss_and_gradients(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    size = 64 if dtype == torch.float32 else 32  # float64 runs the slow reference kernels
    x = torch.randn(4, 3, size, size, generator=g, dtype=dtype)
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=dtype)
    model = _model(dtype)
    loss_a, grads_a = _step(model, x, y)
    loss_b, grads_b = _step(model, batch_layout({"image": x}, True)["image"], y)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert abs(float(loss_a - loss_b)) <= tol
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    for name, a in grads_a.items():
        b = grads_b[name]
        assert float((a - b).norm()) <= tol * max(float(a.norm()), 1e-12), name


SETS = [
    "classifier.epochs=2",
    "classifier.batch_size=4",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=48",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=8, num_val=3, size=64, seed=6, progress=False)
    return root


def test_the_loop_hands_the_step_channels_last_images(synth_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe("synth/irn-nano", [f"data.root={synth_root}", *SETS])
    seen: dict[Any, list[bool]] = {"auto": [], False: []}
    for setting in seen:
        recipe.classifier.channels_last = setting
        ctx = cpu_context(recipe, tmp_path / str(setting))
        model = nn.Conv2d(3, 2, 1)

        def step(
            net: nn.Module, batch: dict[str, Any], _: Any, setting: Any = setting
        ) -> dict[str, torch.Tensor]:
            seen[setting].append(batch["image"].is_contiguous(memory_format=CL))
            return {"loss": net(batch["image"]).mean()}

        train_loop(
            ctx,
            name="t",
            model=model,
            dataset=train_cls.training_set(ctx),
            cfg=recipe.classifier,
            step_fn=step,
            state_path=tmp_path / f"{setting}.pt",
        )
    assert seen["auto"] == [True] * 4 and seen[False] == [False] * 4


def test_training_with_channels_last_ends_with_the_same_weights(synth_root: Path, tmp_path: Path) -> None:
    """Four SGD steps of the loop (real loader, augmentation, objective) on the recipe's MobileNetV2,
    in float64: the weights agree to 1e-9 of how far training moved them.

    (In float32 the two paths differ by float rounding only, ~1e-6 per step, but SGD grows any such
    difference within a few steps: the contiguous path on 1 torch thread instead of 2 drifts from
    itself exactly as far, so float32 weights cannot be the yardstick.)
    """
    recipe = load_recipe("synth/irn-nano", [f"data.root={synth_root}", *SETS])
    method = train_cls.build_method(recipe.classifier, recipe.compat)
    classes = train_cls.training_set(cpu_context(recipe, tmp_path)).num_classes
    start = {k: v.clone() for k, v in _model(torch.float64, classes).state_dict().items()}
    weights = {}
    for setting in ("auto", False):
        recipe.classifier.channels_last = setting
        ctx = cpu_context(recipe, tmp_path / str(setting))
        model = _model(torch.float64, classes)

        def step(net: nn.Module, batch: dict[str, Any], _: Any) -> dict[str, torch.Tensor]:
            x = batch["image"].to(torch.float64)  # keeps the memory format
            return method.step(net, x, batch["labels"].to(torch.float64))

        train_loop(
            ctx,
            name="t",
            model=model,
            dataset=train_cls.training_set(ctx),
            cfg=recipe.classifier,
            step_fn=step,
            state_path=tmp_path / f"{setting}.pt",
        )
        weights[setting] = model.state_dict()
    a, b = weights["auto"], weights[False]
    moved = 0
    for name, wa in a.items():
        if not wa.is_floating_point():
            continue
        update = float((b[name] - start[name]).norm())
        moved += update > 0
        assert float((wa - b[name]).norm()) <= 1e-9 * max(update, 1e-12), name
    assert moved > 100  # the backbone trained
