"""ResNet-38: PSA's layout and key names, feature levels and strides, freezing defaults."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.errors import ConfigError
from wsss.models.backbones.resnet38 import PreActBlock, ResNet38
from wsss.registry import BACKBONES

LEVELS = {"conv2": (128, 2), "conv3": (256, 4), "conv4": (512, 8), "conv5": (1024, 8), "conv6": (4096, 8)}


@pytest.fixture(scope="module")
def full() -> ResNet38:
    torch.manual_seed(0)
    return BACKBONES.build("resnet38").eval()


@pytest.mark.parametrize("size", [(64, 96), (70, 50)])
def test_levels_shapes_and_strides(full, size):
    h, w = size
    with torch.no_grad():
        feats = full.forward_features(torch.randn(1, 3, h, w))
    assert list(feats) == list(LEVELS)
    assert {i.name: (i.channels, i.stride) for i in full.feature_info} == LEVELS
    for name, (channels, stride) in LEVELS.items():
        assert feats[name].shape == (1, channels, math.ceil(h / stride), math.ceil(w / stride)), name
    assert full.output_stride == 8 and full.out_channels == 4096
    assert bool((feats["conv6"] >= 0).all()) and bool((feats["conv4"] >= 0).all())  # ReLU outputs


def test_psa_key_names_and_parameter_count(full):
    keys = set(full.state_dict())
    for key in (
        "conv1a.weight",
        "b2.bn_branch2a.running_var",
        "b2.conv_branch1.weight",
        "b4_5.conv_branch2b1.weight",
        "b5.conv_branch1.weight",
        "b6.bn_branch2b2.weight",
        "b7.conv_branch2b2.weight",
        "bn7.running_mean",
    ):
        assert key in keys, key
    # shortcuts exist exactly where the shape changes (PSA's ``same_shape``)
    with_shortcut = {k.split(".")[0] for k in keys if ".conv_branch1." in k}
    assert with_shortcut == {"b2", "b3", "b4", "b5", "b6", "b7"}
    assert full.b5.conv_branch2a.dilation == (1, 1) and full.b5.conv_branch2b1.dilation == (2, 2)
    assert full.b5_1.conv_branch2a.dilation == (2, 2)
    assert full.b7.conv_branch2b1.dilation == (4, 4) and full.b7.conv_branch2b1.weight.shape == (
        2048,
        1024,
        3,
        3,
    )
    # model A1 trunk without its ImageNet classifier: b7 37.7M + b6 9.4M + b5 group 26.5M + b4 group 27.3M + rest
    assert sum(p.numel() for p in full.parameters()) == 105_070_912


def test_dropout_placement_and_rates():
    model = ResNet38(width_divisor=16)
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout2d)}
    assert rates == {
        "b6.dropout_2b1": 0.3,
        "b6.dropout_2b2": 0.3,
        "b7.dropout_2b1": 0.5,
        "b7.dropout_2b2": 0.5,
    }


def test_preact_block_matches_hand_composition():
    torch.manual_seed(0)
    block = PreActBlock(4, 6, 8, stride=2).eval()
    for bn in (block.bn_branch2a, block.bn_branch2b1):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 7, 5)
    out, entry = block(x)

    def bn(m: torch.nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (t - m.running_mean.view(shape)) / torch.sqrt(
            m.running_var.view(shape) + m.eps
        ) * m.weight.view(shape) + m.bias.view(shape)

    a = torch.relu(bn(block.bn_branch2a, x))
    branch2 = F.conv2d(a, block.conv_branch2a.weight, stride=2, padding=1)
    branch2 = F.conv2d(torch.relu(bn(block.bn_branch2b1, branch2)), block.conv_branch2b1.weight, padding=1)
    expected = F.conv2d(a, block.conv_branch1.weight, stride=2) + branch2
    torch.testing.assert_close(entry, a)
    torch.testing.assert_close(out, expected)
    assert out.shape == (2, 8, 4, 3)
    same = PreActBlock(8, 8, 8).eval()
    y, same_entry = same(out)
    assert not hasattr(same, "conv_branch1")
    residual = same.conv_branch2b1(torch.relu(same.bn_branch2b1(same.conv_branch2a(same_entry))))
    torch.testing.assert_close(y - out, residual)  # identity shortcut


def test_psa_freezing_defaults():
    model = BACKBONES.build("resnet38", width_divisor=16)
    model.train()
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad and "bn" not in n}
    assert frozen == {"conv1a", "b2", "b2_1", "b2_2"}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.b3.conv_branch2a.weight.requires_grad and model.b6.dropout_2b1.training
    before = model.b4.bn_branch2a.running_mean.clone()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert torch.equal(model.b4.bn_branch2a.running_mean, before)  # statistics stay ImageNet's
    assert model.b3.conv_branch2a.weight.grad is not None and model.conv1a.weight.grad is None
    model.eval()
    assert not model.b6.dropout_2b1.training


def test_unfrozen_variant_trains_batch_statistics():
    model = BACKBONES.build(
        "resnet38", width_divisor=16, frozen_stages=-1, freeze_bn=False, freeze_bn_affine=False
    ).train()
    assert all(p.requires_grad for p in model.parameters())
    before = model.bn7.running_mean.clone()
    model(torch.randn(2, 3, 24, 24))
    assert not torch.equal(model.bn7.running_mean, before)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="output stride 8 only"):
        BACKBONES.build("resnet38", output_stride=16)
    with pytest.raises(ConfigError, match="frozen_stages"):
        BACKBONES.build("resnet38", width_divisor=16, frozen_stages=7)
    with pytest.raises(ConfigError, match="width_divisor"):
        ResNet38(width_divisor=3)
