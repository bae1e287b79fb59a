"""SPU's hybrid attention and the backbone's chosen insertion levels."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import ConfigError
from wsss.models.modules import HybridAttention
from wsss.registry import BACKBONE_INSERTS, BACKBONES


def _zero_gate(module: HybridAttention) -> None:
    """Make both gate logits exactly zero: the last layer of each gate outputs 0."""
    for layer in (module.channel.mlp[-1], module.spatial.body[-1]):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_zero_gates_give_one_and_a_half_times_the_input(combine: str) -> None:
    torch.manual_seed(0)
    module = BACKBONE_INSERTS.build("hybrid", channels=32, combine=combine).train()
    x = torch.randn(2, 32, 9, 7)
    y = module(x)
    assert y.shape == x.shape
    _zero_gate(module)
    torch.testing.assert_close(module(x), 1.5 * x)  # (1 + σ(0)) ⊙ X


def test_product_and_sum_differ_and_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    product = HybridAttention(32, combine="product").train()
    summed = HybridAttention(32, combine="sum").train()
    summed.load_state_dict(product.state_dict())
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    a_c = product.channel(x)[:, :, None, None]
    a_s = product.spatial(x)
    torch.testing.assert_close(product(x), (1 + torch.sigmoid(a_c * a_s)) * x)
    torch.testing.assert_close(summed(x), (1 + torch.sigmoid(a_c + a_s)) * x)
    product(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in product.parameters())
    assert x.grad is not None
    # reduction 16 and two dilation-4 3×3 convs in the spatial gate, as released
    convs = [m for m in product.spatial.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (32, 2, (1, 1), (1, 1)),
        (2, 2, (3, 3), (4, 4)),
        (2, 2, (3, 3), (4, 4)),
        (2, 1, (1, 1), (1, 1)),
    ]


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match="combine must be one of product, sum"):
        HybridAttention(16, combine="mean")
    with pytest.raises(ConfigError, match="reduction and dilation must be >= 1"):
        HybridAttention(16, dilation=0)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_insert_levels_choose_the_stages_and_the_rest_is_unchanged(name: str) -> None:
    torch.manual_seed(0)
    plain = BACKBONES.build(name, output_stride=16)
    levels = [info.name for info in plain.feature_info]
    inserted = BACKBONES.build(
        name, output_stride=16, insert="hybrid", insert_at="stage", insert_levels=levels[:-1]
    )
    assert inserted.insert_names == tuple(f"inserts.{n}" for n in levels[:-1])
    identity = BACKBONES.build(
        name, output_stride=16, insert="identity", insert_at="stage", insert_levels=levels[1:2]
    )
    identity.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = plain.eval().forward_features(x), identity.eval().forward_features(x)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # an inserted stage's output is the module's output: hybrid attention scales it by 1..2
    with torch.no_grad():
        feats = inserted.eval().forward_features(x)
    assert feats[levels[0]].shape[1] == plain.feature_info[0].channels


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"insert": "hybrid", "insert_at": "stage", "insert_levels": ["stage9"]},
            "must name some of its levels",
        ),
        ({"insert": "hybrid", "insert_at": "block", "insert_levels": ["stage1"]}, "set insert_at: stage"),
        ({"insert_levels": ["stage1"]}, "insert_levels is given but insert is not"),
    ],
)
def test_insert_levels_refusals(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BACKBONES.build("resnet50", **kwargs)
