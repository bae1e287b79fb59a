"""Conformer: official key scheme, variant sizes, padding/rectangles, attention output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.models.conformer_layout import (
    official_conv_strides,
    official_dw_stride,
    official_keys,
    official_layout,
)
from wsss.errors import ConfigError
from wsss.models.backbones.conformer import (
    CONFORMER_VARIANTS,
    Attention,
    Conformer,
    conformer_spec,
    pad_to_multiple,
    token_grid,
)
from wsss.registry import BACKBONES


@pytest.fixture(scope="module")
def small() -> Conformer:
    return BACKBONES.build("conformer_small")


def test_registry_has_all_variants():
    assert {"conformer_nano", "conformer_tiny", "conformer_small", "conformer_base"} <= set(BACKBONES.names())


def test_small_state_dict_matches_official_key_list(small):
    sd = small.state_dict()
    expected = official_keys()
    assert len(expected) == 718
    assert list(sd) == expected
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 85


def test_small_official_shapes(small):
    sd = small.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == official_layout()
    assert tuple(sd["trans_patch_conv.weight"].shape) == (384, 64, 4, 4)
    assert tuple(sd["conv_trans_12.fusion_block.residual_conv.weight"].shape) == (1024, 1024, 1, 1)


@pytest.mark.parametrize(("ratio", "dim", "millions"), [(1, 384, 23.52), (4, 384, 37.67), (6, 576, 83.29)])
def test_reference_layout_reproduces_paper_parameter_counts(ratio, dim, millions):
    """The hand-written layout is itself right: its parameters add up to the published sizes."""
    layout = official_layout(channel_ratio=ratio, embed_dim=dim)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    n = sum(math.prod(shape) for key, shape in layout if not key.endswith(stats))
    assert round(n / 1e6, 2) == millions


@pytest.mark.parametrize("last_fusion_stride", [2, 1])
def test_conv_strides_and_token_strides_follow_official_model(last_fusion_stride):
    model = BACKBONES.build("conformer_nano", last_fusion_stride=last_fusion_stride)
    strides = {
        name: m.stride[0]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)
    }
    assert strides == official_conv_strides(last_fusion_stride=last_fusion_stride)
    for i in range(2, 13):
        block = model.get_submodule(f"conv_trans_{i}")
        assert block.squeeze_block.sample_pooling.kernel_size == official_dw_stride(i)
        assert block.expand_block.up_stride == official_dw_stride(i)


@pytest.mark.parametrize(
    ("name", "millions"), [("conformer_tiny", 23.52), ("conformer_small", 37.67), ("conformer_base", 83.29)]
)
def test_parameter_counts_match_paper(name, millions):
    model = Conformer(conformer_spec(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


def test_nano_has_same_key_names_as_small(small):
    nano = BACKBONES.build("conformer_nano")
    assert list(nano.state_dict()) == list(small.state_dict())


def test_norm_epsilons_follow_official_model(small):
    assert small.bn1.eps == 1e-5 and small.trans_norm.eps == 1e-5
    assert small.conv_trans_3.cnn_block.bn2.eps == 1e-6
    assert small.trans_1.norm1.eps == 1e-6


def test_stage_strides_and_last_fusion():
    x = torch.randn(1, 3, 64, 64)
    official = BACKBONES.build("conformer_nano", drop_path_rate=0.0).eval()
    transcam_like = BACKBONES.build("conformer_nano", drop_path_rate=0.0, last_fusion_stride=1).eval()
    with torch.no_grad():
        f2 = official.forward_features(x)
        f1 = transcam_like.forward_features(x)
    c3 = CONFORMER_VARIANTS["conformer_nano"].stage_channels[2]
    assert f2.cnn.shape == (1, c3, 2, 2)  # 1/32
    assert f1.cnn.shape == (1, c3, 4, 4)  # 1/16 = token grid
    assert f1.grid == (4, 4) and f1.tokens.shape == (1, 17, 48)


def test_forward_returns_two_logit_vectors():
    model = BACKBONES.build("conformer_nano", num_classes=7).eval()
    conv, trans = model(torch.randn(2, 3, 32, 48))
    assert conv.shape == (2, 7) and trans.shape == (2, 7)


@pytest.mark.parametrize(("size", "grid"), [((64, 96), (4, 6)), ((70, 50), (5, 4)), ((16, 16), (1, 1))])
def test_rectangular_and_odd_inputs_run(size, grid):
    model = BACKBONES.build("conformer_nano", last_fusion_stride=1).eval()
    with torch.no_grad():
        f = model.forward_features(torch.randn(2, 3, *size), with_attention=True)
    assert f.grid == grid == token_grid(size)
    assert f.input_size == size
    assert f.padded_size == (grid[0] * 16, grid[1] * 16)
    assert f.cnn.shape[-2:] == grid
    n = grid[0] * grid[1]
    assert f.tokens.shape == (2, 1 + n, 48)
    assert f.attn_sum.shape == (2, 1 + n, 1 + n)


def test_odd_input_equals_explicitly_zero_padded_input():
    model = BACKBONES.build("conformer_nano").eval()
    x = torch.randn(1, 3, 70, 50)
    padded = torch.zeros(1, 3, 80, 64)
    padded[..., :70, :50] = x
    with torch.no_grad():
        a = model.forward_features(x)
        b = model.forward_features(padded)
    torch.testing.assert_close(a.cnn, b.cnn)
    torch.testing.assert_close(a.tokens, b.tokens)


def test_pad_to_multiple():
    x = torch.ones(1, 1, 5, 16)
    y = pad_to_multiple(x, 16)
    assert y.shape == (1, 1, 16, 16)
    assert y[..., :5, :].sum() == 80 and y[..., 5:, :].abs().sum() == 0
    assert pad_to_multiple(y, 16) is y


def test_attention_weights_are_head_mean_softmax_and_match_sdpa():
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3).eval()
    x = torch.randn(2, 5, 12)
    out_sdpa, none = attn(x)
    out_manual, weights = attn(x, need_weights=True)
    assert none is None
    torch.testing.assert_close(out_manual, out_sdpa, atol=1e-5, rtol=1e-5)
    q, k, _ = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    expected = torch.stack([F.softmax(q[:, h] @ k[:, h].transpose(1, 2) / 2.0, dim=-1) for h in range(3)], 1)
    torch.testing.assert_close(weights, expected.mean(1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))


def test_attention_sum_has_one_unit_row_per_block():
    model = BACKBONES.build("conformer_nano").eval()
    with torch.no_grad():
        f = model.forward_features(torch.randn(1, 3, 32, 32), with_attention=True)
        g = model.forward_features(torch.randn(1, 3, 32, 32))
    assert f.attn_blocks == 12
    torch.testing.assert_close(f.attn_sum.sum(-1), torch.full((1, 5), 12.0))
    assert g.attn_sum is None and g.attn_blocks == 0


def test_drop_path_schedule_and_eval_determinism():
    model = BACKBONES.build("conformer_nano", drop_path_rate=0.1)
    assert isinstance(model.trans_1.drop_path, torch.nn.Identity)  # index 0 → rate 0
    assert model.conv_trans_12.trans_block.drop_path.p == pytest.approx(0.1)
    assert model.conv_trans_2.trans_block.drop_path.p == pytest.approx(0.1 / 11)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x)[0])


def test_unknown_variant_suggests_name():
    with pytest.raises(ConfigError, match="conformer_small"):
        conformer_spec("conformer_smal")
