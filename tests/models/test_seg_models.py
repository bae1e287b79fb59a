"""Segmentation networks: output grid and stride, head names and parameter groups, BN rules, init loading."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from wsss.engine.optim import param_groups
from wsss.errors import CheckpointError, ConfigError
from wsss.models.seg import ASPPSum, LargeFOVDecoder, SegOutput
from wsss.registry import SEG_MODELS


@pytest.fixture(scope="module")
def largefov():
    torch.manual_seed(0)
    return SEG_MODELS.build("deeplab_largefov", backbone_args={"width_divisor": 16}).eval()


@pytest.fixture(scope="module")
def deeplab_v2():
    torch.manual_seed(0)
    return SEG_MODELS.build("deeplab_v2").eval()


@pytest.fixture(scope="module")
def pspnet():
    torch.manual_seed(0)
    return SEG_MODELS.build("pspnet").eval()


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return SEG_MODELS.build("deeplab_v3_lite", num_classes=5).eval()


ALL = ("largefov", "deeplab_v2", "pspnet", "lite")
STRIDES = {"largefov": 8, "deeplab_v2": 8, "pspnet": 8, "lite": 16}
CLASSES = {"largefov": 21, "deeplab_v2": 21, "pspnet": 21, "lite": 5}


@pytest.mark.parametrize("name", ALL)
def test_raw_logits_on_the_ceil_grid_of_any_input_size(name, request):
    model = request.getfixturevalue(name)
    stride = STRIDES[name]
    assert model.output_stride == stride
    for h, w in ((65, 65), (33, 47)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (1, CLASSES[name], math.ceil(h / stride), math.ceil(w / stride))


@pytest.mark.parametrize("name", ALL)
def test_head_names_select_exactly_the_new_layers(name, request):
    model = request.getfixturevalue(name)
    names = [n for n, _ in model.named_parameters()]
    in_head = {n for n in names if any(n == h or n.startswith(h + ".") for h in model.head_names)}
    assert in_head
    assert in_head == {n for n in names if not n.startswith("backbone.")}


def _lr_by_param(model):
    groups = param_groups(model, model.head_names, lr=0.01, weight_decay=5e-4)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: by_id.get(id(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["largefov", "lite", "pspnet"])
def test_param_groups_give_the_head_ten_times_the_lr(name, request):
    model = request.getfixturevalue(name)
    lrs = _lr_by_param(model)
    heads = tuple(h + "." for h in model.head_names)
    for param_name, setting in lrs.items():
        param = model.get_parameter(param_name)
        if not param.requires_grad:
            assert setting is None, param_name
            continue
        lr, decay = setting
        base = 0.1 if param_name.startswith(heads) else 0.01
        if param_name.endswith(".bias"):
            assert (lr, decay) == pytest.approx((2 * base, 0.0)), param_name
        else:
            assert lr == pytest.approx(base), param_name
    assert any(setting is not None for n, setting in lrs.items() if n.startswith("backbone."))


def test_largefov_keeps_the_authors_module_names(largefov):
    keys = set(largefov.state_dict())
    for key in (
        "conv_fov.weight",
        "bn_fov.running_var",
        "conv_fov2.weight",
        "bn_fov2.weight",
        "cls_conv.bias",
    ):
        assert key in keys
    assert "conv_fov.bias" not in keys and "conv_fov2.bias" not in keys
    assert largefov.conv_fov.dilation == (12, 12) and largefov.conv_fov.padding == (12, 12)
    assert largefov.conv_fov.in_channels == 4096 // 16
    assert isinstance(largefov.dropout1, nn.Dropout) and largefov.dropout1.p == 0.5


def test_largefov_bn_affine_quirk_and_momentum():
    torch.manual_seed(0)
    clean = SEG_MODELS.build("deeplab_largefov", backbone_args={"width_divisor": 16})
    authors = SEG_MODELS.build("deeplab_largefov", train_bn_affine=False, backbone_args={"width_divisor": 16})
    bns = [m for m in authors.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.0003 for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert all(
        p.requires_grad for m in clean.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )
    # every conv of the authors' model still trains (conv1a included), only BN affine is left out
    assert all(p.requires_grad for m in authors.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    assert authors.backbone.conv1a.weight.requires_grad

    # BN uses batch statistics in training and updates running stats with momentum 0.0003
    authors.train()
    seen = {}
    authors.conv_fov.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out.detach()))
    with torch.no_grad():
        authors(torch.randn(2, 3, 40, 40))
    torch.testing.assert_close(authors.bn_fov.running_mean, 0.0003 * seen["x"].mean(dim=(0, 2, 3)))
    assert authors.backbone.bn7.training  # backbone BN not frozen (TransCAM never calls its train() override)


def test_deeplab_v2_sums_four_dilated_convs_and_freezes_bn(deeplab_v2):
    aspp = deeplab_v2.aspp
    assert [c.dilation for c in aspp.children()] == [(r, r) for r in (6, 12, 18, 24)]
    assert aspp.c0.in_channels == 2048 and aspp.c0.out_channels == 21
    torch.manual_seed(1)
    small = ASPPSum(2, 3, rates=(1, 2))
    x = torch.randn(1, 2, 7, 6)
    want = F.conv2d(x, small.c0.weight, small.c0.bias, padding=1, dilation=1) + F.conv2d(
        x, small.c1.weight, small.c1.bias, padding=2, dilation=2
    )
    torch.testing.assert_close(small(x), want)
    deeplab_v2.train()
    try:
        assert not deeplab_v2.backbone.bn1.training and not deeplab_v2.backbone.layer4[0].bn2.training
        assert not deeplab_v2.backbone.layer1[0].bn1.weight.requires_grad
        assert deeplab_v2.backbone.conv1.weight.requires_grad
    finally:
        deeplab_v2.eval()


def test_pspnet_aux_head_on_stage3(pspnet):
    assert pspnet.aux_weight == 0.4 and pspnet.aux_level == "stage3"
    assert pspnet.auxiliary_head.convs[0].in_channels == 1024
    assert pspnet.decode_head.pool_scales == (1, 2, 3, 6)
    assert pspnet.decode_head.bottleneck[0].in_channels == 2048 + 4 * 512
    with torch.no_grad():
        out = pspnet(torch.randn(1, 3, 41, 41), with_aux=True)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == out.aux.shape == (1, 21, 6, 6)


def test_pspnet_without_aux_and_batch_of_one():
    model = SEG_MODELS.build("pspnet", backbone="mobilenet_v2", output_stride=16, aux_weight=0, num_classes=3)
    assert model.auxiliary_head is None and model.head_names == ("decode_head",)
    model.train()
    out = model(torch.randn(2, 3, 32, 32), with_aux=True)
    assert out.aux is None and out.logits.shape == (2, 3, 2, 2)
    with pytest.raises(ConfigError, match="at least 2 images"):
        model(torch.randn(1, 3, 32, 32))


def test_models_without_aux_return_none_aux(lite):
    with torch.no_grad():
        out = lite(torch.randn(1, 3, 32, 32), with_aux=True)
    assert out.aux is None and out.logits.shape == (1, 5, 2, 2)


def test_lite_uses_the_320_channel_block_and_trains_with_one_image():
    model = SEG_MODELS.build("deeplab_v3_lite", num_classes=4).train()
    assert model.in_channels == 320
    assert [b[0].dilation for b in model.aspp.branches[1:]] == [(6, 6), (12, 12), (18, 18)]
    out = model(torch.randn(1, 3, 48, 48))
    out.sum().backward()
    assert model.classifier.weight.grad is not None
    assert not model.backbone.features[5].conv[0][1].training  # backbone BN statistics fixed by default


def _save(model, path, prefix=""):
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()}, "step": 3}, path)


def test_init_checkpoint_restores_every_weight(tmp_path):
    torch.manual_seed(0)
    source = SEG_MODELS.build("deeplab_v3_lite", num_classes=5)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    path = tmp_path / "seg.pth"
    _save(source, path, prefix="module.")  # DDP-style prefix, wrapped as a training state
    torch.manual_seed(1)
    loaded = SEG_MODELS.build("deeplab_v3_lite", num_classes=5, init=str(path), pretrained="missing.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    assert "full segmentation checkpoint" in loaded.init_source and str(path) in loaded.init_source
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source.eval()(x))

    # another class count (e.g. a COCO-trained checkpoint): classifier fresh, everything else loaded
    torch.manual_seed(2)
    other = SEG_MODELS.build("deeplab_v3_lite", num_classes=3, init=str(path))
    assert other.classifier.weight.shape == (3, 128, 1, 1)
    assert other.classifier.weight.abs().max() < 0.1  # N(0, 0.01) init, not the perturbed source values
    torch.testing.assert_close(other.aspp.project[0][0].weight, source.aspp.project[0][0].weight)
    torch.testing.assert_close(
        other.backbone.features[3].conv[1][0].weight, source.backbone.features[3].conv[1][0].weight
    )


def test_init_checkpoint_may_lack_the_aux_head(tmp_path):
    torch.manual_seed(0)
    source = SEG_MODELS.build(
        "pspnet", backbone="mobilenet_v2", output_stride=16, num_classes=3, aux_weight=0
    )
    path = tmp_path / "psp.pth"
    _save(source, path)
    loaded = SEG_MODELS.build(
        "pspnet", backbone="mobilenet_v2", output_stride=16, num_classes=3, init=str(path)
    )
    assert loaded.auxiliary_head is not None
    torch.testing.assert_close(loaded.decode_head.conv_seg.weight, source.decode_head.conv_seg.weight)


def test_bad_init_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SEG_MODELS.build("deeplab_v3_lite", init=str(tmp_path / "nope.pth"))
    torch.manual_seed(0)
    source = SEG_MODELS.build("deeplab_v3_lite", num_classes=5)
    state = source.state_dict()
    del state["aspp.project.0.0.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. aspp.project.0.0.weight\)"):
        SEG_MODELS.build("deeplab_v3_lite", num_classes=5, init=str(partial))
    caffe = tmp_path / "init.pth"
    torch.save(
        {"base.layer1.conv1.conv.weight": torch.zeros(64, 3, 7, 7), "base.aspp.c0.weight": torch.zeros(1)},
        caffe,
    )
    with pytest.raises(CheckpointError, match="kazuto1011"):
        SEG_MODELS.build("deeplab_v3_lite", init=str(caffe))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train_bn_affine must be true or false"):
        SEG_MODELS.build("deeplab_v3_lite", train_bn_affine="false")
    with pytest.raises(ConfigError, match="model's own keys"):
        SEG_MODELS.build("deeplab_v3_lite", backbone_args={"pretrained": "x.pth"})
    with pytest.raises(ConfigError, match="num_classes"):
        SEG_MODELS.build("deeplab_v3_lite", num_classes=1)
    with pytest.raises(ConfigError, match="aux_weigth"):
        SEG_MODELS.build("pspnet", aux_weigth=0.4)
    with pytest.raises(ConfigError, match="output stride 8 only"):
        SEG_MODELS.build("deeplab_largefov", output_stride=16)


def test_unia_largefov_decoder_keeps_the_grid():
    head = LargeFOVDecoder(16, 21)
    assert all(m.bias is None for m in head.modules() if isinstance(m, nn.Conv2d))
    assert head.conv_fov.dilation == (5, 5) and head.conv_fov2.kernel_size == (3, 3)
    assert head(torch.randn(2, 16, 7, 9)).shape == (2, 21, 7, 9)
