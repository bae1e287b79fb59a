"""TransCAM model: heads, A*·M refinement, extraction methods, official-weight loading."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.conformer import Attention
from wsss.models.cam.transcam import TransCAM, a_star, class_token_attention, refine
from wsss.registry import BACKBONES, CAM_MODELS


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """SDPA and explicit attention differ by float rounding; untrained eval-mode activations are large."""
    torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def nano(num_classes: int = 5) -> TransCAM:
    return CAM_MODELS.build(
        "transcam", backbone="conformer_nano", num_classes=num_classes, drop_path_rate=0.0
    )


def test_refine_matches_explicit_double_loop():
    torch.manual_seed(0)
    b, c, h, w = 2, 3, 2, 3
    n = h * w
    cam = torch.randn(b, c, h, w)
    attn = torch.rand(b, n, n)
    out = refine(cam, attn)
    flat = cam.reshape(b, c, n)
    expected = torch.zeros(b, c, n)
    for bi in range(b):
        for ci in range(c):
            for i in range(n):
                for j in range(n):
                    expected[bi, ci, i] += attn[bi, i, j] * flat[bi, ci, j]
    torch.testing.assert_close(out, expected.reshape(b, c, h, w))
    # rows are queries: a permutation matrix moves values from key j to query i
    perm = torch.eye(n)[torch.tensor([1, 2, 3, 4, 5, 0])].expand(b, n, n)
    torch.testing.assert_close(refine(cam, perm).reshape(b, c, n), flat[:, :, [1, 2, 3, 4, 5, 0]])


def test_refine_rejects_wrong_grid():
    with pytest.raises(ValueError, match="does not fit"):
        refine(torch.zeros(1, 2, 2, 2), torch.zeros(1, 5, 5))


def test_a_star_drops_class_token_without_renormalising():
    attn_sum = torch.arange(2 * 5 * 5, dtype=torch.float).reshape(2, 5, 5)
    assert torch.equal(a_star(attn_sum), attn_sum[:, 1:, 1:])
    assert torch.equal(class_token_attention(attn_sum, (2, 2)), attn_sum[:, 0, 1:].reshape(2, 1, 2, 2))


def test_heads_and_last_fusion_stride():
    model = nano(num_classes=7)
    head = model.conv_cls_head
    assert isinstance(head, torch.nn.Conv2d)
    assert head.kernel_size == (3, 3) and head.padding == (1, 1) and head.bias is not None
    assert head.out_channels == 7 and head.in_channels == model.out_channels
    assert model.conv_trans_12.fusion_block.conv2.stride == (1, 1)
    assert model.conv_trans_12.fusion_block.residual_conv.stride == (1, 1)
    assert model.trans_cls_head.out_features == 7
    assert torch.count_nonzero(model.trans_cls_head.bias) == 0


def test_forward_outputs_and_identities():
    torch.manual_seed(1)
    model = nano().eval()
    x = torch.randn(2, 3, 64, 64)
    captured = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: captured.append(o[1]))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    with torch.no_grad():
        out = model(x, with_attention=True)
        for hk in hooks:
            hk.remove()
        plain = model(x)
    assert out.cam.shape == (2, 5, 4, 4) and out.grid == (4, 4)
    torch.testing.assert_close(out.conv_logits, out.cam.mean(dim=(2, 3)))
    assert out.trans_logits.shape == (2, 5)
    # the running sum equals the sum of the 12 per-block head means
    assert len(captured) == 12 and out.attn_blocks == 12
    torch.testing.assert_close(out.attn_sum, torch.stack(captured).sum(0))
    # attention off: no attention at all, same predictions through SDPA
    assert plain.attn_sum is None and plain.attn_blocks == 0
    close(plain.cam, out.cam)
    close(plain.trans_logits, out.trans_logits)


def test_extract_methods():
    torch.manual_seed(2)
    model = nano().eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = model(x, with_attention=True)
        conv = model.extract(x, "conv")
        trans = model.extract(x, "transcam")
        cls = model.extract(x, "clsattn")
    close(conv, out.cam)
    torch.testing.assert_close(trans, refine(out.cam, out.attn_sum[:, 1:, 1:]))
    torch.testing.assert_close(cls, out.attn_sum[:, 0, 1:].reshape(2, 1, 3, 4) * out.cam)
    assert trans.shape == cls.shape == (2, 5, 3, 4)
    with pytest.raises(ConfigError, match="transcam"):
        model.extract(x, "transcm")


@pytest.mark.parametrize(("size", "grid"), [((64, 96), (4, 6)), ((70, 50), (5, 4))])
def test_rectangular_and_odd_inputs(size, grid):
    model = nano().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), with_attention=True)
        cams = model.extract(torch.randn(1, 3, *size), "transcam")
    assert out.grid == grid and out.input_size == size
    assert out.cam.shape == (1, 5, *grid) and cams.shape == (1, 5, *grid)
    assert out.attn_sum.shape == (1, 1 + grid[0] * grid[1], 1 + grid[0] * grid[1])


def test_builder_rejects_non_conformer_backbone():
    with pytest.raises(ConfigError, match="Conformer"):
        CAM_MODELS.build("transcam", backbone="resnet50")
    with pytest.raises(ConfigError, match="conformer_nano"):
        CAM_MODELS.build("transcam", backbone="conformer_nao")


@pytest.fixture(scope="module")
def official_small_file(tmp_path_factory):
    """An ImageNet-format Conformer-S checkpoint (official keys, 1000-class heads), wrapped like main.py."""
    torch.manual_seed(3)
    state = BACKBONES.build("conformer_small").state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "Conformer_small_patch16.pth"
    torch.save({"model": state, "epoch": 299}, path)
    return path, state


def test_official_small_weights_load_with_only_heads_missing(official_small_file):
    path, state = official_small_file
    model = CAM_MODELS.build("transcam", backbone="conformer_small", pretrained=str(path))
    sd = model.state_dict()
    assert len(sd) == 718
    key = "conv_trans_9.trans_block.attn.qkv.weight"
    assert torch.equal(sd[key], state[key])
    assert torch.equal(
        sd["conv_trans_12.fusion_block.residual_bn.running_var"],
        state["conv_trans_12.fusion_block.residual_bn.running_var"],
    )

    from wsss.models.backbones.conformer import load_conformer_pretrained

    report = load_conformer_pretrained(model, str(path))
    assert len(report.matched) == 714
    assert sorted(report.not_loaded) == sorted(
        ["conv_cls_head.weight", "conv_cls_head.bias", "trans_cls_head.weight", "trans_cls_head.bias"]
    )
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []


def test_wrongly_prefixed_checkpoint_fails_with_counts(tmp_path):
    state = BACKBONES.build("conformer_nano").state_dict()
    path = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        CAM_MODELS.build("transcam", backbone="conformer_nano", pretrained=str(path))
    msg = str(err.value)
    assert "prefixed.pth" in msg and "0/718 model tensors matched" in msg and "at least 714" in msg
    assert "'backbone.'" in msg


def test_module_prefix_is_stripped(tmp_path):
    torch.manual_seed(4)
    src = CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=5)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    model = CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=5, pretrained=str(path))
    # same class count: TransCAM's own weights load completely, heads included
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
