"""DeepLab heads: LargeFOV (TransCAM/BNR), v2 ASPP (IRN family), a light v3 for CPU, UniA's decoder.

All three networks follow the contract of ``wsss.models.seg.base``: raw logits at the output
stride (``ceil(H/os)×ceil(W/os)``; no upsampling inside), ``head_names`` for DeepLab-style
parameter groups, and an explicit ``init`` (ImageNet backbone, or a full segmentation
checkpoint such as a COCO-pretrained DeepLab, logged as such).

**DeepLab-LargeFOV** (``deeplab_largefov``; transcam.md §2.8, TransCAM's ``deeplabv1``): on the
last level of ResNet-38 (4096 channels, output stride 8) ``conv_fov`` (3×3, dilation 12, 512,
no bias) → ``bn_fov`` → ReLU → ``conv_fov2`` (1×1, 512, no bias) → ``bn_fov2`` → ReLU →
``dropout1`` (element-wise, 0.5) → ``cls_conv`` (1×1 with bias). Module names are the authors',
so their checkpoints load by key. New convs get Kaiming-normal (fan-out) weights; ``cls_conv``'s
bias starts at 0. Every BatchNorm (backbone and head) uses running-statistics momentum 0.0003
and batch statistics during training, and every backbone stage trains (TransCAM never calls
its freezing ``train()`` override).

*The BN-affine quirk.* The authors' parameter groups collect Conv2d parameters only, so no
BatchNorm scale/shift is ever optimised: ``bn_fov``/``bn_fov2`` stay at 1/0 and the backbone
keeps its ImageNet affine values, while running statistics still update. ``train_bn_affine``
(default True, the clean choice) trains them; ``train_bn_affine=False`` reproduces the authors.

**DeepLab-v2** (``deeplab_v2``; seed_methods.md §2.1/§4.1, the IRN family's segmentation
network): ResNet-101 at output stride 8 and ``aspp`` = the *sum* of four 3×3 convs straight to
class logits with dilations 6/12/18/24 (bias on, weights N(0, 0.01), bias 0; submodules
``c0`` … ``c3``). As in DeepLab-v2 practice, backbone BatchNorms are frozen (running ImageNet
statistics, affine not trained); ``freeze_bn``/``train_bn_affine`` change that.

**DeepLab-v3-lite** (``deeplab_v3_lite``): a CPU-sized model for quick runs. MobileNetV2
(output stride 16, 320-channel last block) and a small ASPP: a 1×1 branch, three 3×3 branches
(dilations 6/12/18) and an image-pooling branch, 128 channels each, concatenated and
projected to 128 (1×1, BN, ReLU, dropout 0.1), then a 1×1 ``classifier``. The pooling
branch has no BatchNorm so a batch of one image trains. The dilations suit output stride 16;
at 8 DeepLab-v3 doubles them (pass ``rates``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone
from wsss.models.seg.base import (
    IMAGENET,
    SegmentationModel,
    backbone_bn_defaults,
    build_seg_backbone,
    check_bool,
    finish_init,
    freeze_affine,
    resolve_init,
    set_bn_momentum,
)
from wsss.registry import SEG_MODELS

LARGEFOV_BN_MOMENTUM = 0.0003  # TransCAM's deeplabv1 (PyTorch convention: weight of the new batch)
V2_RATES = (6, 12, 18, 24)
V3_LITE_RATES = (6, 12, 18)


def _kaiming(*convs: nn.Conv2d) -> None:
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def _check_rates(rates: Sequence[int], where: str) -> tuple[int, ...]:
    if isinstance(rates, (str, bytes)) or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates
    ):
        raise ConfigError(f"{where}: rates must be a list of positive integers, got {rates!r}")
    if not rates:
        raise ConfigError(f"{where}: rates must not be empty")
    return tuple(rates)


def _check_dropout(p: float, where: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ConfigError(f"{where}: dropout must be in [0, 1), got {p!r}")
    return float(p)


class DeepLabLargeFOV(SegmentationModel):
    """DeepLab-v1 LargeFOV head with TransCAM's module names (see the module docstring)."""

    head_names = ("conv_fov", "bn_fov", "conv_fov2", "bn_fov2", "cls_conv")
    classifier_names = ("cls_conv",)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_level: str | None = None,
        channels: int = 512,
        fov_dilation: int = 12,
        dropout: float = 0.5,
        bn_momentum: float = LARGEFOV_BN_MOMENTUM,
    ) -> None:
        super().__init__(backbone, num_classes, feature_level)
        self.conv_fov = nn.Conv2d(
            self.in_channels, channels, 3, padding=fov_dilation, dilation=fov_dilation, bias=False
        )
        self.bn_fov = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.conv_fov2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn_fov2 = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.dropout1 = nn.Dropout(_check_dropout(dropout, "deeplab_largefov"))
        self.cls_conv = nn.Conv2d(channels, num_classes, 1)
        _kaiming(self.conv_fov, self.conv_fov2, self.cls_conv)

    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        x = torch.relu(self.bn_fov(self.conv_fov(feats[self.feature_level])))
        x = torch.relu(self.bn_fov2(self.conv_fov2(x)))
        return self.cls_conv(self.dropout1(x))


class ASPPSum(nn.Module):
    """DeepLab-v2 ASPP: parallel dilated 3×3 convs to class logits, summed (``c0`` … ``c{n-1}``)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = V2_RATES) -> None:
        super().__init__()
        self.rates = tuple(rates)
        for i, rate in enumerate(self.rates):
            conv = nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{i}", conv)

    def forward(self, x: Tensor) -> Tensor:
        return sum(conv(x) for conv in self.children())  # type: ignore[return-value]


class DeepLabV2(SegmentationModel):
    """Backbone + :class:`ASPPSum` on the last level."""

    head_names = ("aspp",)
    classifier_names = ("aspp",)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_level: str | None = None,
        rates: Sequence[int] = V2_RATES,
    ) -> None:
        super().__init__(backbone, num_classes, feature_level)
        self.aspp = ASPPSum(self.in_channels, num_classes, _check_rates(rates, "deeplab_v2"))

    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        return self.aspp(feats[self.feature_level])


class LiteASPP(nn.Module):
    """DeepLab-v3 ASPP at small width: 1×1, dilated 3×3 branches and image pooling, projected."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        branches = [Conv2dNormActivation(in_channels, channels, 1)]
        branches += [Conv2dNormActivation(in_channels, channels, 3, dilation=r) for r in rates]
        self.branches = nn.ModuleList(branches)
        # no BatchNorm after global pooling: one image gives one value per channel
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            Conv2dNormActivation((len(branches) + 1) * channels, channels, 1), nn.Dropout(dropout)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _kaiming(m)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pooling(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Lite(SegmentationModel):
    """Backbone + :class:`LiteASPP` + 1×1 ``classifier``."""

    head_names = ("aspp", "classifier")
    classifier_names = ("classifier",)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_level: str | None = None,
        channels: int = 128,
        rates: Sequence[int] = V3_LITE_RATES,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(backbone, num_classes, feature_level)
        where = "deeplab_v3_lite"
        self.aspp = LiteASPP(
            self.in_channels, channels, _check_rates(rates, where), _check_dropout(dropout, where)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.aspp(feats[self.feature_level]))


class LargeFOVDecoder(nn.Module):
    """UniA's (ToCo-style) LargeFOV decoder on transformer features (seed_methods.md §5.2).

    ``conv_fov`` (3×3, dilation 5, 512) → ReLU → ``conv_fov2`` (3×3, dilation 5, 512) → ReLU →
    ``cls_conv`` (1×1), all without bias and without normalisation. A head module for
    single-stage networks, not a registered segmentation model; output keeps the input grid.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.conv_fov = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_fov2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.cls_conv = nn.Conv2d(channels, num_classes, 1, bias=False)
        _kaiming(self.conv_fov, self.conv_fov2, self.cls_conv)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv_fov(x))
        return self.cls_conv(torch.relu(self.conv_fov2(x)))


@SEG_MODELS.register("deeplab_largefov")
def build_deeplab_largefov(
    num_classes: int = 21,
    backbone: str = "resnet38",
    pretrained: str | None = None,
    init: str = IMAGENET,
    output_stride: int = 8,
    train_bn_affine: bool = True,
    freeze_bn: bool = False,
    bn_momentum: float = LARGEFOV_BN_MOMENTUM,
    dropout: float = 0.5,
    fov_dilation: int = 12,
    feature_level: str | None = None,
    backbone_args: dict[str, Any] | None = None,
) -> DeepLabLargeFOV:
    """TransCAM/BNR's DeepLab-LargeFOV; ``train_bn_affine=False`` is the authors' behaviour.

    ``pretrained``: the backbone's ImageNet file (ResNet-38: MXNet ``.params`` or converted);
    ``init``: ``"imagenet"`` or a full segmentation checkpoint; ``backbone_args``: other
    backbone keys (e.g. ``width_divisor``, ``frozen_stages``; every stage trains by default).
    """
    where = "deeplab_largefov"
    checkpoint, weights = resolve_init(init, pretrained, where)
    train_affine = check_bool(train_bn_affine, "train_bn_affine", where)
    net = build_seg_backbone(
        backbone,
        where=where,
        pretrained=weights,
        output_stride=output_stride,
        defaults=backbone_bn_defaults(freeze_bn, train_bn_affine, where),
        backbone_args=backbone_args,
    )
    set_bn_momentum(net, bn_momentum)
    model = DeepLabLargeFOV(
        net,
        num_classes,
        feature_level=feature_level,
        fov_dilation=fov_dilation,
        dropout=dropout,
        bn_momentum=bn_momentum,
    )
    if not train_affine:
        freeze_affine(model.bn_fov, model.bn_fov2)
    finish_init(model, checkpoint, weights)
    return model


@SEG_MODELS.register("deeplab_v2")
def build_deeplab_v2(
    num_classes: int = 21,
    backbone: str = "resnet101",
    pretrained: str | None = None,
    init: str = IMAGENET,
    output_stride: int = 8,
    freeze_bn: bool = True,
    train_bn_affine: bool = False,
    rates: Sequence[int] = V2_RATES,
    feature_level: str | None = None,
    backbone_args: dict[str, Any] | None = None,
) -> DeepLabV2:
    """DeepLab-v2 (ASPP-sum) on ResNet-101, output stride 8; BN frozen as in DeepLab-v2.

    ``pretrained``: a torchvision-layout ImageNet file or ``"torchvision"`` (download); ``init``:
    ``"imagenet"`` or a full segmentation checkpoint in this model's key layout.
    """
    where = "deeplab_v2"
    checkpoint, weights = resolve_init(init, pretrained, where)
    net = build_seg_backbone(
        backbone,
        where=where,
        pretrained=weights,
        output_stride=output_stride,
        defaults=backbone_bn_defaults(freeze_bn, train_bn_affine, where),
        backbone_args=backbone_args,
    )
    model = DeepLabV2(net, num_classes, feature_level=feature_level, rates=rates)
    finish_init(model, checkpoint, weights)
    return model


@SEG_MODELS.register("deeplab_v3_lite")
def build_deeplab_v3_lite(
    num_classes: int = 21,
    backbone: str = "mobilenet_v2",
    pretrained: str | None = None,
    init: str = IMAGENET,
    output_stride: int = 16,
    freeze_bn: bool = True,
    train_bn_affine: bool = True,
    channels: int = 128,
    rates: Sequence[int] = V3_LITE_RATES,
    dropout: float = 0.1,
    feature_level: str | None = None,
    backbone_args: dict[str, Any] | None = None,
) -> DeepLabV3Lite:
    """Light DeepLab-v3 for CPU: MobileNetV2 (OS 16, 320-channel block) + 128-channel ASPP.

    Backbone BN statistics stay at their ImageNet values by default (small CPU batches);
    ``pretrained``: a weight file, ``"offline"`` or ``"torchvision"`` for MobileNetV2.
    """
    where = "deeplab_v3_lite"
    checkpoint, weights = resolve_init(init, pretrained, where)
    train_affine = check_bool(train_bn_affine, "train_bn_affine", where)
    net = build_seg_backbone(
        backbone,
        where=where,
        pretrained=weights,
        output_stride=output_stride,
        defaults={**backbone_bn_defaults(freeze_bn, train_bn_affine, where), "last_conv": False},
        backbone_args=backbone_args,
    )
    model = DeepLabV3Lite(
        net, num_classes, feature_level=feature_level, channels=channels, rates=rates, dropout=dropout
    )
    if not train_affine:
        freeze_affine(model.aspp)
    finish_init(model, checkpoint, weights)
    return model
