"""ResNet-50/101 backbones: torchvision parity, strides, weight loading by key, IRN-family freezing."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.resnet import ResNet
from wsss.registry import BACKBONES

FC_PARAMS = 2048 * 1000 + 1000


@pytest.mark.parametrize(("name", "output_stride"), [("resnet50", 16), ("resnet50", 8), ("resnet101", 16)])
def test_levels_shapes_and_strides(name, output_stride):
    model = BACKBONES.build(name, output_stride=output_stride).eval()
    deep = min(16, output_stride)
    want = {"stage1": (256, 4), "stage2": (512, 8), "stage3": (1024, deep), "stage4": (2048, output_stride)}
    assert {i.name: (i.channels, i.stride) for i in model.feature_info} == want
    assert model.output_stride == output_stride
    for h, w in ((64, 96), (70, 50)):  # odd sizes: every stride-2 layer rounds up
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, h, w))
        for level, (channels, stride) in want.items():
            assert feats[level].shape == (1, channels, math.ceil(h / stride), math.ceil(w / stride)), level


@pytest.mark.parametrize(
    ("name", "factory", "expected"),
    [
        ("resnet50", torchvision.models.resnet50, 23_508_032),
        ("resnet101", torchvision.models.resnet101, 42_500_160),
    ],
)
def test_parameter_counts_match_torchvision(name, factory, expected):
    with torch.device("meta"):  # shapes only, no initialisation cost
        ours = sum(p.numel() for p in BACKBONES.build(name).parameters())
        theirs = sum(p.numel() for p in factory(weights=None).parameters())
    assert ours == theirs - FC_PARAMS == expected


def test_torchvision_state_dict_loads_by_key_and_reproduces_its_features(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet50.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)  # DataParallel-style prefix
    ours = BACKBONES.build("resnet50", pretrained=str(path), output_stride=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(ref.children())[:-2])
        torch.testing.assert_close(ours(x), trunk(x))


def test_wrong_or_partial_checkpoints_fail_loudly(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        BACKBONES.build("resnet50", pretrained=str(path))


def test_dilation_or_irn_style_plain_stride_one():
    dilated = ResNet(50, output_stride=16)
    assert [b.conv2.dilation for b in dilated.layer4] == [(1, 1), (2, 2), (2, 2)]
    plain = ResNet(50, output_stride=16, dilate=False)
    assert [b.conv2.dilation for b in plain.layer4] == [(1, 1)] * 3
    assert [b.conv2.padding for b in plain.layer4] == [(1, 1)] * 3
    assert plain.layer4[0].conv2.stride == (1, 1)
    with torch.no_grad():
        assert plain.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 2048, 4, 6)
    os8 = ResNet(50, output_stride=8)
    assert os8.layer3[1].conv2.dilation == (2, 2) and os8.layer4[1].conv2.dilation == (4, 4)


def test_default_freezing_is_stem_and_fixed_batchnorm():
    model = BACKBONES.build("resnet50").train()
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["bn1.bias", "bn1.weight", "conv1.weight"]
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.layer1.training  # only BN layers are switched to eval
    before = model.layer3[0].bn1.running_mean.clone()
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer3[0].bn1.running_mean, before)
    out.mean().backward()
    assert model.layer3[0].bn1.weight.grad is not None  # IRN's FixedBatchNorm keeps the affine trainable
    assert model.conv1.weight.grad is None


def test_irn_cam_freezing_through_layer2_and_batchnorm_options():
    model = BACKBONES.build("resnet50", frozen_stages=2, freeze_bn_affine=True).train()
    trainable_top = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_top == {"layer3", "layer4"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".bn" in n or "downsample.1" in n)
    assert not model.layer2.training and model.layer3.training
    free = BACKBONES.build("resnet50", frozen_stages=-1, freeze_bn=False).train()
    assert all(p.requires_grad for p in free.parameters())
    before = free.bn1.running_mean.clone()
    free(torch.randn(2, 3, 32, 32))
    assert not torch.equal(free.bn1.running_mean, before)
    free.eval()
    assert not free.layer4.training  # eval() still reaches everything (IRN's override did not)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"frozen_stages": 5}, "frozen_stages"),
        ({"frozen_stages": True}, "frozen_stages"),
        ({"pretrained": "/nonexistent/r50.pth"}, "does not exist"),
    ],
)
def test_bad_options_fail_with_clear_errors(kwargs, match):
    with pytest.raises((ConfigError, CheckpointError), match=match):
        BACKBONES.build("resnet50", **kwargs)
