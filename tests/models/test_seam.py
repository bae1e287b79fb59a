"""SEAM network: PCM affinity and CAM normalisation by hand, gradient paths, extraction, builders, groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wsss.errors import ConfigError
from wsss.models.cam.seam import SEAM, SEAMOutput, pcm_affinity, propagate, seam_cam_norm
from wsss.registry import CAM_MODELS

E = 1e-5  # SEAM's eps


def tiny_resnet38(num_classes: int = 4, **kwargs) -> SEAM:
    torch.manual_seed(0)
    return CAM_MODELS.build(
        "seam", backbone="resnet38", num_classes=num_classes, backbone_args={"width_divisor": 16}, **kwargs
    )


def test_pcm_affinity_is_relu_cosine_normalised_per_column_by_hand():
    # four pixels with 2-d features: (1,0), (0,1), (1,1), (-1,0)
    f = torch.tensor([[1.0, 0.0, 1.0, -1.0], [0.0, 1.0, 1.0, 0.0]]).view(1, 2, 1, 4)
    r = 1 / math.sqrt(2)
    cos = [[1, 0, r, 0], [0, 1, r, 0], [r, r, 1, 0], [0, 0, 0, 1]]  # ReLU(cos), -1 and -r clipped
    sums = [sum(cos[i][j] for i in range(4)) for j in range(4)]
    want = torch.tensor([[cos[i][j] / sums[j] for j in range(4)] for i in range(4)])
    aff = pcm_affinity(f)[0]
    torch.testing.assert_close(aff, want, atol=1e-4, rtol=0)
    assert not torch.allclose(aff.sum(dim=1), torch.ones(4), atol=1e-3)  # rows do not sum to 1


def test_model_affinity_columns_sum_to_one_and_are_non_negative():
    model = tiny_resnet38().eval()
    with torch.no_grad():
        aff = model.affinity(torch.randn(2, 3, 32, 48))
    assert aff.shape == (2, 24, 24)
    assert bool((aff >= 0).all())
    torch.testing.assert_close(aff.sum(dim=1), torch.ones(2, 24), atol=1e-6, rtol=0)


def test_cam_norm_follows_seam_background_and_zeroes_non_max_foreground():
    bg = [5.0, -3.0, 2.0]  # the raw background channel plays no part
    fg1, fg2 = [2.0, -1.0, 1.0], [1.0, 4.0, 1.0]
    cam = torch.tensor([bg, fg1, fg2]).view(1, 3, 1, 3)
    n1 = [max(0.0, max(0.0, v) - E) / (2 + E) for v in fg1]  # ReLU, then / (max + eps)
    n2 = [max(0.0, max(0.0, v) - E) / (4 + E) for v in fg2]
    top = [max(a, b) for a, b in zip(n1, n2)]
    want = [
        [1 - t for t in top],
        [a if a >= t else 0.0 for a, t in zip(n1, top)],
        [b if b >= t else 0.0 for b, t in zip(n2, top)],
    ]
    out = seam_cam_norm(cam.requires_grad_())
    torch.testing.assert_close(out, torch.tensor(want).view(1, 3, 1, 3))
    assert not out.requires_grad


def test_propagate_is_cam_times_column_affinity_by_hand():
    cam = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)  # 2 channels, 2 pixels
    aff = torch.tensor([[[0.75, 0.5], [0.25, 0.5]]])  # a_ij, columns sum to 1
    want = [[1 * 0.75 + 0 * 0.25, 1 * 0.5 + 0 * 0.5], [0 * 0.75 + 2 * 0.25, 0 * 0.5 + 2 * 0.5]]
    torch.testing.assert_close(propagate(cam, aff), torch.tensor(want).view(1, 2, 1, 2))


def test_revised_map_sums_to_one_over_channels():
    # bg + the kept max fg = 1 at every pixel and columns sum to 1, so Σ_c cam_rv = 1 everywhere;
    # fails if bg were formed differently, non-max fg were kept or rows were normalised
    model = tiny_resnet38().eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SEAMOutput)
    assert out.cam.shape == out.cam_rv.shape == (2, 4, 5, 7) and out.logits.shape == (2, 4)
    torch.testing.assert_close(out.cam_rv.sum(dim=1), torch.ones(2, 5, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, out.cam.mean(dim=(2, 3)))
    assert bool((out.cam_rv[:, 1:] > 0.05).any())  # foreground really propagated


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_pcm_gradients_reach_f9_but_neither_fc8_nor_the_backbone():
    model = tiny_resnet38(dropout=0.0).train()
    out = model(torch.randn(2, 3, 32, 32))
    (out.cam_rv[:, 1:] ** 2).sum().backward()
    for name in ("f9", "f8_3", "f8_4"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name
    assert model.fc8.weight.grad is None
    backbone = _grads(model.backbone)
    assert backbone and all(g is None for g in backbone)


def test_cam_gradients_reach_fc8_and_the_backbone_but_not_pcm():
    model = tiny_resnet38(dropout=0.0).train()
    out = model(torch.randn(2, 3, 32, 32))
    (out.cam**2).sum().backward()
    assert model.fc8.weight.grad.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(model.backbone))
    assert model.f9.weight.grad is None


def test_extract_shapes_and_channel_zero():
    model = tiny_resnet38(num_classes=3).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        out = model(x)
        rv, cam, raw = (model.extract(x, m) for m in ("rv", "cam", "conv"))
    assert model.output_stride == 8
    for maps in (rv, cam, raw):
        assert maps.shape == (2, 3, 5, 7)
    torch.testing.assert_close(rv, out.cam_rv)
    assert torch.equal(cam[:, 0], torch.zeros(2, 5, 7)) and torch.equal(raw[:, 0], torch.zeros(2, 5, 7))
    torch.testing.assert_close(raw[:, 1:], out.cam[:, 1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cam, raw.clamp(min=0))
    assert bool((raw < 0).any()) and bool((cam[:, 1:] > 0).any())
    with pytest.raises(ConfigError, match="did you mean 'rv'"):
        model.extract(x, "rvv")


def test_builder_on_mobilenet_without_weights():
    torch.manual_seed(0)
    model = CAM_MODELS.build("seam", backbone="mobilenet_v2", num_classes=4, pretrained=None)
    assert model.pcm_levels == ("stage2", "stage3") and model.output_stride == 8
    assert (model.f8_3.in_channels, model.f8_4.in_channels) == (24, 32)
    assert (model.f8_3.out_channels, model.f8_4.out_channels) == (64, 128)
    assert (model.f9.in_channels, model.f9.out_channels) == (195, 192)
    assert model.fc8.weight.shape == (4, 1280, 1, 1)
    assert all(getattr(model, n).bias is None for n in ("fc8", "f8_3", "f8_4", "f9"))
    assert isinstance(model.dropout, nn.Identity)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 33, 47))  # stage2 (stride 4) resized to the 5×6 grid
    assert out.cam.shape == out.cam_rv.shape == (1, 4, 5, 6)
    other = CAM_MODELS.build("seam", backbone="mobilenet_v2", num_classes=4, pcm_levels=["stage3", "stage4"])
    assert (other.f8_3.in_channels, other.f8_4.in_channels) == (32, 1280)
    with pytest.raises(ConfigError, match="no feature level 'conv4'"):
        CAM_MODELS.build("seam", backbone="mobilenet_v2", pcm_levels=["conv4", "conv5"])
    with pytest.raises(ConfigError, match="both directly and in backbone_args"):
        CAM_MODELS.build("seam", backbone="mobilenet_v2", freeze_bn=True, backbone_args={"freeze_bn": True})


def test_builder_on_small_resnets_uses_seam_and_pmm_levels():
    model = tiny_resnet38()
    assert model.pcm_levels == ("conv4", "conv5")  # SEAM's f8_3/f8_4 inputs (512/1024 at full width)
    assert (model.f8_3.in_channels, model.f8_4.in_channels) == (512 // 16, 1024 // 16)
    assert isinstance(model.dropout, nn.Dropout2d) and model.dropout.p == 0.5  # SEAM's dropout7
    resnet = CAM_MODELS.build("seam", backbone="resnet50", num_classes=3, output_stride=16)
    assert resnet.pcm_levels == ("stage2", "stage3")  # PMM's x2/x3
    assert (resnet.f8_3.in_channels, resnet.f8_4.in_channels) == (512, 1024)
    assert resnet.output_stride == 16 and isinstance(resnet.dropout, nn.Identity)
    with torch.no_grad():
        out = resnet.eval()(torch.randn(1, 3, 48, 64))  # stage2 at stride 8 resized to the 3×4 grid
    assert out.cam_rv.shape == (1, 3, 3, 4)
    torch.testing.assert_close(out.cam_rv.sum(dim=1), torch.ones(1, 3, 4), atol=1e-5, rtol=0)


def test_seam_optimizer_groups():
    model = tiny_resnet38()
    groups = {g["name"]: g for g in model.optimizer_groups(0.01, 5e-4, 10.0)}
    # BatchNorm is frozen and every conv is bias-free: SEAM's two bias groups are empty
    assert set(groups) == {"backbone_weight", "head_weight"}
    assert (groups["backbone_weight"]["lr"], groups["backbone_weight"]["weight_decay"]) == (0.01, 5e-4)
    assert groups["head_weight"]["lr"] == pytest.approx(0.1) and groups["head_weight"]["weight_decay"] == 5e-4
    head = {id(getattr(model, n).weight) for n in ("fc8", "f8_3", "f8_4", "f9")}
    assert {id(p) for p in groups["head_weight"]["params"]} == head
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    listed = [id(p) for g in groups.values() for p in g["params"]]
    assert len(listed) == len(set(listed)) and set(listed) == trainable

    mobile = CAM_MODELS.build("seam", backbone="mobilenet_v2", freeze_bn_affine=False)
    groups = {g["name"]: g for g in mobile.optimizer_groups(0.01, 5e-4, 10.0)}
    bias = groups["backbone_bias"]
    assert (bias["lr"], bias["weight_decay"]) == (0.02, 0.0) and all(p.ndim == 1 for p in bias["params"])

    plain = tiny_resnet38(optimizer_grouping="plain").optimizer_groups(0.01, 5e-4, 10.0)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in plain] == [
        ("backbone", 0.01, 5e-4),
        ("head", pytest.approx(0.1), 5e-4),
    ]
    with pytest.raises(ConfigError, match="did you mean 'seam'"):
        tiny_resnet38(optimizer_grouping="seem")
