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

``insert`` names a ``BACKBONE_INSERTS`` module (built with each point's channel count) placed
after every bottleneck's ``bn3``, before the residual add (``insert_at="block"``: AMR's released
``resnet50(use_amm=True)``, 16 modules in ResNet-50) or after every ``layerN``
(``insert_at="stage"``: the AMR paper's figure, 4 modules). Keys stay torchvision's, plus
``layerN.i.insert.*`` or ``inserts.stageN.*``.

Inputs of any size work: every stride-2 layer pads so that an H×W input gives
``ceil(H/s)×ceil(W/s)`` features at stride ``s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum
from torchvision.models.resnet import Bottleneck

from wsss.errors import ConfigError
from wsss.models.backbones.base import (
    FeatureInfo,
    FreezableBackbone,
    build_insert,
    check_insert_options,
    insert_levels_of,
    load_backbone_weights,
)
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


class InsertedBottleneck(nn.Module):
    """torchvision's Bottleneck (same submodules, same keys) with ``insert`` between ``bn3`` and
    the residual add: out = ReLU(insert(bn3(conv3(·))) + residual), as AMR's released Bottleneck."""

    def __init__(self, block: Bottleneck, insert: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.conv3, self.bn3 = block.conv3, block.bn3
        self.relu, self.downsample, self.stride = block.relu, block.downsample, block.stride
        self.insert = insert

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.insert(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


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
        insert: str | None = None,
        insert_args: dict[str, Any] | None = None,
        insert_at: str = "block",
        insert_levels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_insert_options(f"ResNet-{depth}", insert, insert_args, insert_at, insert_levels=insert_levels)
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
        self.inserts = nn.ModuleDict()  # between-stage inserts, keyed by level name
        if insert is not None:
            self._insert(insert, insert_args, insert_at, f"ResNet-{depth}", insert_levels)
        self.configure_freezing(frozen_stages, freeze_bn, freeze_bn_affine)

    def _insert(
        self,
        insert: str,
        insert_args: dict[str, Any] | None,
        insert_at: str,
        owner: str,
        insert_levels: Sequence[str] | None = None,
    ) -> None:
        """Place the inserted modules; a stage's inserts freeze with that stage."""
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        names: list[str] = []
        levels = insert_levels_of(owner, self.feature_info, insert_at, insert_levels)
        if insert_at == "block":
            for k, layer in enumerate(layers, 1):
                for i, block in enumerate(layer):
                    module = build_insert(insert, insert_args, block.conv3.out_channels, owner)
                    layer[i] = InsertedBottleneck(block, module)
                    names.append(f"layer{k}.{i}.insert")
        else:
            for info in self.feature_info:
                if info.name in levels:
                    self.inserts[info.name] = build_insert(insert, insert_args, info.channels, owner)
                    names.append(f"inserts.{info.name}")
            self.stage_modules = (
                self.stage_modules[0],
                *((f"layer{k}", *(n for n in names if n == f"inserts.stage{k}")) for k in range(1, 5)),
            )
        self.insert_names = tuple(names)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, Tensor] = {}
        for k, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), 1):
            x = layer(x)
            name = f"stage{k}"
            if name in self.inserts:
                x = self.inserts[name](x)
            out[name] = x
        return out


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
    insert: str | None = None,
    insert_args: dict[str, Any] | None = None,
    insert_at: str = "block",
    insert_levels: Sequence[str] | None = None,
) -> ResNet:
    """A ResNet backbone; ``pretrained`` is a local weight file or ``"torchvision"`` (download)."""
    model = ResNet(
        depth,
        output_stride=output_stride,
        dilate=dilate,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        freeze_bn_affine=freeze_bn_affine,
        insert=insert,
        insert_args=insert_args,
        insert_at=insert_at,
        insert_levels=insert_levels,
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
    insert: str | None = None,
    insert_args: dict[str, Any] | None = None,
    insert_at: str = "block",
    insert_levels: Sequence[str] | None = None,
) -> ResNet:
    """ResNet-50 (IRN/SPU/AMR CAM backbone); ``pretrained``: weight file or ``"torchvision"``."""
    return build_resnet(
        50,
        pretrained,
        output_stride,
        dilate,
        frozen_stages,
        freeze_bn,
        freeze_bn_affine,
        insert,
        insert_args,
        insert_at,
        insert_levels,
    )


@BACKBONES.register("resnet101")
def build_resnet101(
    pretrained: str | None = None,
    output_stride: int = 16,
    dilate: bool = True,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = False,
    insert: str | None = None,
    insert_args: dict[str, Any] | None = None,
    insert_at: str = "block",
    insert_levels: Sequence[str] | None = None,
) -> ResNet:
    """ResNet-101 (DeepLab-v2 segmentation backbone); ``pretrained``: weight file or ``"torchvision"``."""
    return build_resnet(
        101,
        pretrained,
        output_stride,
        dilate,
        frozen_stages,
        freeze_bn,
        freeze_bn_affine,
        insert,
        insert_args,
        insert_at,
        insert_levels,
    )
