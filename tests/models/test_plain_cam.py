"""Plain (IRN/PSA) CAM classifier and its MLSM objective."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError
from wsss.models.cam.plain_cam import PlainCAM, PlainCAMOutput
from wsss.registry import CAM_MODELS, METHODS


def small(num_classes: int = 4, **kwargs) -> PlainCAM:
    torch.manual_seed(0)
    return CAM_MODELS.build("cam", backbone="mobilenet_v2", num_classes=num_classes, **kwargs)


def test_forward_contract_zero_background_and_logits_are_gap_of_cam():
    model = small(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x, with_attention=True)
        feats = model.backbone(x)
    assert isinstance(out, PlainCAMOutput)
    assert out.cam.shape == (2, 4, 4, 6) and out.logits.shape == (2, 4)
    assert torch.equal(out.cam[:, 0], torch.zeros(2, 4, 6)) and torch.equal(out.logits[:, 0], torch.zeros(2))
    # GAP of the CAM == classifier applied to GAP of the features (linear, no bias)
    pooled = model.classifier(feats.mean(dim=(2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(out.logits[:, 1:], pooled, atol=1e-5, rtol=1e-4)
    assert model.output_stride == 16
    assert model.classifier.bias is None and model.classifier.weight.shape == (3, 1280, 1, 1)


def test_extract_is_relu_of_classifier_weights_times_features():
    model = small(num_classes=3).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        cams = model.extract(x, method="cam")
        raw = model.extract(x, method="conv")
        feats = model.backbone.forward_features(x)["stage4"]
    w = model.classifier.weight.detach()[:, :, 0, 0]  # K × C
    by_hand = torch.zeros(1, 2, 3, 3)
    for k in range(2):
        for i in range(3):
            for j in range(3):
                by_hand[0, k, i, j] = max(0.0, float((w[k] * feats[0, :, i, j]).sum()))
    assert cams.shape == (1, 3, 3, 3)
    assert torch.equal(cams[:, 0], torch.zeros(1, 3, 3))
    torch.testing.assert_close(cams[:, 1:], by_hand, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cams, raw.clamp(min=0))
    assert bool((raw < 0).any())  # the raw map really has negatives that ReLU removed
    with pytest.raises(ConfigError, match="did you mean 'cam'"):
        model.extract(x, method="cams")


def test_objective_equals_hand_computed_mlsm():
    objective = METHODS.build("cam")
    assert objective.needs_attention is False
    logits = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = PlainCAMOutput(cam=torch.zeros(2, 3, 1, 1), logits=logits, features={})
    losses = objective(out, labels)

    def softplus(v: float) -> float:
        return math.log1p(math.exp(v))

    # -[y log σ(s) + (1-y) log(1-σ(s))] = softplus(-s) for y=1, softplus(s) for y=0
    row1 = (softplus(-2.0) + softplus(-1.0)) / 2
    row2 = (softplus(0.0) + softplus(-3.0)) / 2
    assert set(losses) == {"loss", "cls"}
    assert float(losses["loss"]) == pytest.approx((row1 + row2) / 2, abs=1e-6)
    assert float(losses["loss"]) == pytest.approx(0.2954810, abs=1e-6)
    with pytest.raises(ConfigError, match="num_classes"):
        objective(out, torch.zeros(2, 3))


def test_gradient_reaches_classifier_and_trainable_backbone_only():
    model = small(num_classes=3).train()
    out = model(torch.randn(2, 3, 32, 32))
    METHODS.build("cam")(out, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))["loss"].backward()
    assert model.classifier.weight.grad is not None and bool(model.classifier.weight.grad.abs().sum() > 0)
    late = model.backbone.features[17].conv[2].weight.grad
    assert late is not None and bool(late.abs().sum() > 0)
    assert model.backbone.features[0][0].weight.grad is None  # the stem is frozen by default
    groups = {g["name"]: g for g in model.optimizer_groups(0.1, 1e-4, 10.0)}
    assert set(groups) == {"backbone", "classifier"}
    assert groups["classifier"]["params"] == [model.classifier.weight]
    assert groups["classifier"]["lr"] == pytest.approx(1.0) and groups["backbone"]["lr"] == 0.1
    assert all(g["weight_decay"] == 1e-4 for g in groups.values())  # IRN decays every group
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter once, frozen ones never


def test_builder_forwards_backbone_options_and_psa_head_options():
    model = CAM_MODELS.build(
        "cam",
        backbone="resnet38",
        num_classes=21,
        frozen_stages=-1,
        freeze_bn=False,
        dropout=0.5,
        classifier_init="xavier",
        backbone_args={"width_divisor": 16},
    )
    assert model.output_stride == 8 and model.classifier.weight.shape == (20, 256, 1, 1)
    assert model.backbone.frozen_stages == -1 and not model.backbone.freeze_bn
    assert model.backbone.freeze_bn_affine  # untouched option keeps the backbone's (PSA) default
    # xavier-uniform bound for a 256→20 1×1 conv; PyTorch's default init stays within 1/sqrt(256)
    largest = float(model.classifier.weight.detach().abs().max())
    assert 1 / 16 < largest <= math.sqrt(6 / (256 + 20))
    assert isinstance(model.dropout, torch.nn.Dropout2d) and model.dropout.p == 0.5
    os8 = CAM_MODELS.build("cam", backbone="resnet50", num_classes=3, output_stride=8)
    assert os8.output_stride == 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "conformer_nano"}, "CNN backbone"),
        ({"backbone": "resnet5"}, "did you mean"),
        ({"num_classes": 1}, "num_classes"),
        ({"feature_level": "stage9"}, "no feature level 'stage9'"),
        ({"output_stride": 16, "backbone_args": {"output_stride": 8}}, "both directly and in backbone_args"),
        ({"backbone_args": {"dilation": 2}}, "unknown key"),
        ({"classifier_init": "xavir"}, "did you mean 'xavier'"),
    ],
)
def test_bad_builder_options_are_config_errors(kwargs, match):
    args = {"backbone": "mobilenet_v2", "num_classes": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        CAM_MODELS.build("cam", **args)
