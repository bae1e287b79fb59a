"""PSPNet, the segmentation network of PMM (seed_methods.md §3.7), with an optional auxiliary head.

Layout as in mmsegmentation's ``PSPHead``/``FCNHead`` (key names follow it):

* ``decode_head.psp_modules``: for each pool scale s in (1, 2, 3, 6), adaptive average pooling
  to s×s, then 1×1 conv → BN → ReLU (512 channels), upsampled bilinearly
  (``align_corners=False``) back to the feature grid;
* ``decode_head.bottleneck``: the input and the four pooled maps concatenated, 3×3 conv → BN →
  ReLU (512); ``Dropout2d`` 0.1; ``decode_head.conv_seg`` 1×1 to the classes.
* ``auxiliary_head`` (deep supervision, training only): on the third level (``stage3`` of a
  ResNet, 1024 channels, or ``conv5`` of ResNet-38): 3×3 conv → BN → ReLU (256), ``Dropout2d``
  0.1, ``conv_seg``. Its loss is added with weight ``aux_weight`` (PMM/mmseg: 0.4; PUF is
  applied to both heads there). ``aux_weight=0`` builds no auxiliary head. Call
  ``model(x, with_aux=True)`` in training to get both logits; inference ignores the head.

The backbone (ResNet-101 at output stride 8 by default; PMM also used WideResNet-38 and
Res2Net-101) trains every stage with batch statistics (mmseg ``norm_eval=False``; PMM used
SyncBN, which ``wsss.engine.distributed.wrap_ddp(sync_bn=True)`` provides). The 1×1 pooling
branch normalises one value per channel and image, so training needs at least two images per
process (PMM: 2 per GPU); a batch of one raises a ``ConfigError`` saying so.

Output: raw logits at the output stride, ``ceil(H/os)×ceil(W/os)``; any input size works
(adaptive pooling accepts grids smaller than the pool scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
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
    level_of,
    resolve_init,
)
from wsss.registry import SEG_MODELS

POOL_SCALES = (1, 2, 3, 6)
PMM_AUX_WEIGHT = 0.4


def _init_head(head: nn.Module, classifier: nn.Conv2d) -> None:
    """Kaiming-normal convs, N(0, 0.01) classifier with zero bias (mmseg's choices)."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d) and m is not classifier:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


class PSPHead(nn.Module):
    """Pyramid pooling module, 3×3 fuse conv, dropout and classifier (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = POOL_SCALES,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), Conv2dNormActivation(in_channels, channels, 1))
            for s in self.pool_scales
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(self.pool_scales) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.conv_seg)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2 and 1 in self.pool_scales:
            raise ConfigError(
                "PSPNet training needs at least 2 images per batch and process: its 1×1 pyramid-pooling "
                "branch has one value per channel and image for BatchNorm (PMM used 2 per GPU); "
                f"got a batch of {x.shape[0]}"
            )
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.psp_modules
        ]
        fused = self.bottleneck(torch.cat([x, *pooled], dim=1))
        return self.conv_seg(self.dropout(fused))


class FCNHead(nn.Module):
    """mmseg's one-conv FCN head, used as PSPNet's auxiliary head."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = Conv2dNormActivation(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.conv_seg)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class PSPNet(SegmentationModel):
    """Backbone + :class:`PSPHead` on the last level (+ :class:`FCNHead` when ``aux_weight`` > 0)."""

    classifier_names = ("decode_head.conv_seg", "auxiliary_head.conv_seg")
    optional_names = ("auxiliary_head",)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_level: str | None = None,
        channels: int = 512,
        pool_scales: Sequence[int] = POOL_SCALES,
        dropout: float = 0.1,
        aux_weight: float = PMM_AUX_WEIGHT,
        aux_level: str | None = None,
        aux_channels: int = 256,
    ) -> None:
        super().__init__(backbone, num_classes, feature_level)
        if (
            isinstance(pool_scales, (str, bytes))
            or not pool_scales
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pool_scales)
        ):
            raise ConfigError(f"pspnet: pool_scales must be a list of positive integers, got {pool_scales!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"pspnet: dropout must be in [0, 1), got {dropout}")
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
            raise ConfigError(
                f"pspnet: aux_weight must be a number >= 0 (0: no auxiliary head), got {aux_weight!r}"
            )
        self.decode_head = PSPHead(self.in_channels, num_classes, channels, pool_scales, dropout)
        self.aux_weight = float(aux_weight)
        self.aux_level: str | None = None
        self.auxiliary_head: FCNHead | None = None
        self.head_names = ("decode_head",)
        if self.aux_weight > 0:
            if len(backbone.feature_info) < 2 and aux_level is None:
                raise ConfigError(
                    "pspnet: the backbone has one feature level; give aux_level or aux_weight: 0"
                )
            self.aux_level = aux_level or backbone.feature_info[-2].name
            aux_in = level_of(backbone, self.aux_level, "pspnet auxiliary head").channels
            self.auxiliary_head = FCNHead(aux_in, num_classes, aux_channels, dropout)
            self.head_names = ("decode_head", "auxiliary_head")

    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        return self.decode_head(feats[self.feature_level])

    def auxiliary(self, feats: dict[str, Tensor]) -> Tensor | None:
        if self.auxiliary_head is None or self.aux_level is None:
            return None
        return self.auxiliary_head(feats[self.aux_level])


@SEG_MODELS.register("pspnet")
def build_pspnet(
    num_classes: int = 21,
    backbone: str = "resnet101",
    pretrained: str | None = None,
    init: str = IMAGENET,
    output_stride: int = 8,
    freeze_bn: bool = False,
    train_bn_affine: bool = True,
    channels: int = 512,
    pool_scales: Sequence[int] = POOL_SCALES,
    dropout: float = 0.1,
    aux_weight: float = PMM_AUX_WEIGHT,
    aux_level: str | None = None,
    aux_channels: int = 256,
    feature_level: str | None = None,
    backbone_args: dict[str, Any] | None = None,
) -> PSPNet:
    """PMM's PSPNet on ResNet-101 (OS 8), auxiliary head on the third level with weight 0.4.

    ``pretrained``: the backbone's ImageNet file; ``init``: ``"imagenet"`` or a full
    segmentation checkpoint (the auxiliary head may be absent from it).
    """
    where = "pspnet"
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
    model = PSPNet(
        net,
        num_classes,
        feature_level=feature_level,
        channels=channels,
        pool_scales=pool_scales,
        dropout=dropout,
        aux_weight=aux_weight,
        aux_level=aux_level,
        aux_channels=aux_channels,
    )
    if not train_affine:
        freeze_affine(model.decode_head)
        if model.auxiliary_head is not None:
            freeze_affine(model.auxiliary_head)
    finish_init(model, checkpoint, weights)
    return model
