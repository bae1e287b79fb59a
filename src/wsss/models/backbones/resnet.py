"""ResNet-50/101 backbones (torchvision's definitions) and the freezing rules the IRN family uses.

The modules are torchvision's own, re-hung on a ``Backbone`` under torchvision's attribute
names (``conv1``, ``bn1``, ``layer1`` … ``layer4``), so a torchvision ImageNet state_dict
loads by key with only ``fc.*`` left out. Output stride 16 (default) or 8 comes from
torchvision's ``replace_stride_with_dilation``; 32 is the plain classification network.

Freezing, as the IRN-family code does it (``jiwoon-ahn/irn``, SPU, AMR; seed_methods.md §1, §2.2):

* ``freeze_bn`` (default True): every BatchNorm normalises with its running (ImageNet)
  statistics and never updates them, i.e. IRN's ``FixedBatchNorm``. CAM training runs with
  small per-GPU batches where batch statistics are noisy.
* ``freeze_bn_affine`` (default False): also stop training BN's scale/shift. IRN leaves them
  trainable; PSA's ResNet-38 freezes them.
* ``frozen_stages`` (default 0): -1 freezes nothing, 0 the stem (``conv1``/``bn1``), k >= 1
  the stem and ``layer1`` … ``layer{k}`` (parameters get ``requires_grad=False`` and the
  modules stay in eval mode). Every IRN-family network freezes ``conv1``/``bn1`` explicitly,
  hence the default. IRN's released ``resnet50_cam`` additionally detaches the output of
  ``layer2`` (so stem … ``layer2`` never train): ``frozen_stages=2`` reproduces it; AMR's
  compensation branch detaches after ``layer1`` (``frozen_stages=1``).

IRN's own ResNet-50 makes ``layer4`` stride 1 *without* dilation; ``dilate=False`` reproduces
that (same weights, smaller receptive field). The default dilates, as torchvision and DeepLab do.

Inputs of any size work: every stride-2 layer pads so that an H×W input gives
``ceil(H/s)×ceil(W/s)`` features at stride ``s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from wsss.errors import ConfigError
from wsss.models.backbones.base import FeatureInfo, FreezableBackbone, load_backbone_weights
from wsss.registry import BACKBONES

log = logging.getLogger(__name__)

# (factory, ImageNet weights). V1 is the original Caffe-era training (resnet50-19c8e357 lineage)
# that IRN, SPU and AMR start from.
RESNET_DEPTHS: dict[int, tuple[Callable[..., tvm.ResNet], WeightsEnum]] = {
    50: (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    101: (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
}
# output stride → torchvision's replace_stride_with_dilation for layer2, layer3, layer4
DILATION_PATTERNS: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


class ResNet(FreezableBackbone):
    """torchvision ResNet-50/101 without ``avgpool``/``fc``; levels ``stage1`` … ``stage4``."""

    stage_modules = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

    def __init__(
        self,
        depth: int = 50,
        *,
        output_stride: int = 16,
        dilate: bool = True,
        frozen_stages: int = 0,
        freeze_bn: bool = True,
        freeze_bn_affine: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ConfigError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if output_stride not in DILATION_PATTERNS:
            raise ConfigError(
                f"ResNet-{depth} output_stride must be one of {sorted(DILATION_PATTERNS)}, got {output_stride}"
            )
        pattern = DILATION_PATTERNS[output_stride]
        net = RESNET_DEPTHS[depth][0](weights=None, replace_stride_with_dilation=list(pattern))
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        layers = (self.layer2, self.layer3, self.layer4)
        if not dilate:
            for layer, replaced in zip(layers, pattern):
                if replaced:
                    _undilate(layer)
        strides, stride = [4], 4
        for replaced in pattern:
            stride = stride if replaced else stride * 2
            strides.append(stride)
        channels = (256, 512, 1024, 2048)
        self.feature_info = tuple(
            FeatureInfo(f"stage{i + 1}", c, s) for i, (c, s) in enumerate(zip(channels, strides))
        )
        self.configure_freezing(frozen_stages, freeze_bn, freeze_bn_affine)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return {"stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4}


def _undilate(layer: nn.Sequential) -> None:
    """Give every 3×3 conv of a stride-less layer dilation 1 again (IRN's ResNet-50)."""
    for block in layer:
        block.conv2.dilation = (1, 1)
        block.conv2.padding = (1, 1)


def build_resnet(
    depth: int,
    pretrained: str | None = None,
    output_stride: int = 16,
    dilate: bool = True,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = False,
) -> ResNet:
    """A ResNet backbone; ``pretrained`` is a local weight file or ``"torchvision"`` (download)."""
    model = ResNet(
        depth,
        output_stride=output_stride,
        dilate=dilate,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        freeze_bn_affine=freeze_bn_affine,
    )
    if pretrained is not None:
        report = load_backbone_weights(
            model, pretrained, skip=("fc.",), torchvision_weights=RESNET_DEPTHS[depth][1]
        )
        log.info("ResNet-%d weights: %s", depth, report.summary())
    return model


@BACKBONES.register("resnet50")
def build_resnet50(
    pretrained: str | None = None,
    output_stride: int = 16,
    dilate: bool = True,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = False,
) -> ResNet:
    """ResNet-50 (IRN/SPU/AMR CAM backbone); ``pretrained``: weight file or ``"torchvision"``."""
    return build_resnet(50, pretrained, output_stride, dilate, frozen_stages, freeze_bn, freeze_bn_affine)


@BACKBONES.register("resnet101")
def build_resnet101(
    pretrained: str | None = None,
    output_stride: int = 16,
    dilate: bool = True,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = False,
) -> ResNet:
    """ResNet-101 (DeepLab-v2 segmentation backbone); ``pretrained``: weight file or ``"torchvision"``."""
    return build_resnet(101, pretrained, output_stride, dilate, frozen_stages, freeze_bn, freeze_bn_affine)
