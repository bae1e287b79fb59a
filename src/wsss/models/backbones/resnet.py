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
from collections.abc import Callable, Mapping

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision import models as tvm
from torchvision.models import WeightsEnum

from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.base import Backbone, FeatureInfo
from wsss.models.weights import LoadReport, load_checkpoint_file, load_weights, strip_prefixes
from wsss.registry import BACKBONES

log = logging.getLogger(__name__)

TORCHVISION = "torchvision"  # ``pretrained`` value that downloads torchvision's ImageNet weights

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


class FreezableBackbone(Backbone):
    """A backbone whose leading stages can be frozen and whose BatchNorms can be fixed.

    Subclasses list their stages in ``stage_modules`` (submodule names, stem first) and call
    ``configure_freezing`` at the end of ``__init__``. ``train()`` keeps frozen stages (and,
    with ``freeze_bn``, every BatchNorm) in eval mode; unlike IRN's override it still calls
    ``nn.Module.train`` so ``model.eval()`` really switches everything else to eval.
    """

    stage_modules: tuple[tuple[str, ...], ...] = ()
    frozen_stages: int = -1
    freeze_bn: bool = False
    freeze_bn_affine: bool = False

    def configure_freezing(self, frozen_stages: int, freeze_bn: bool, freeze_bn_affine: bool) -> None:
        """Set ``requires_grad=False`` on what is frozen and apply the eval-mode rules."""
        last = len(self.stage_modules) - 1
        if (
            isinstance(frozen_stages, bool)
            or not isinstance(frozen_stages, int)
            or not -1 <= frozen_stages <= last
        ):
            raise ConfigError(
                f"{type(self).__name__}: frozen_stages must be an integer from -1 (nothing frozen) to "
                f"{last} (every stage), got {frozen_stages!r}"
            )
        self.frozen_stages = frozen_stages
        self.freeze_bn = bool(freeze_bn)
        self.freeze_bn_affine = bool(freeze_bn_affine)
        for name in self.frozen_module_names():
            self.get_submodule(name).requires_grad_(False)
        if self.freeze_bn_affine:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.requires_grad_(False)
        self.train(self.training)

    def frozen_module_names(self) -> tuple[str, ...]:
        """Submodule names of the frozen stages, stem first."""
        return tuple(name for stage in self.stage_modules[: self.frozen_stages + 1] for name in stage)

    def train(self, mode: bool = True) -> FreezableBackbone:
        super().train(mode)
        if mode:
            for name in self.frozen_module_names():
                self.get_submodule(name).eval()
            if self.freeze_bn:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self


def loadable_keys(model: nn.Module) -> list[str]:
    """State keys a weight file is expected to provide (BN ``num_batches_tracked`` counters excepted:
    old torchvision and converted files do not carry them)."""
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def load_backbone_weights(
    model: nn.Module,
    source: str,
    *,
    skip: tuple[str, ...] = (),
    torchvision_weights: WeightsEnum | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> LoadReport:
    """Load ImageNet weights into a backbone by key; every loadable backbone tensor must match.

    ``source`` is a local file (``.pth``/``.pt``/``.safetensors``, bare or ``{'model': …}``,
    ``module.`` prefixes stripped) or ``"torchvision"``, which downloads ``torchvision_weights``
    through torchvision (needs internet; the only path that does). ``state`` (already read)
    overrides reading ``source``. ``skip`` lists key prefixes of heads to leave out (reported).
    """
    stripped = 0
    if state is None:
        if source == TORCHVISION:
            if torchvision_weights is None:
                raise ConfigError(
                    f"{type(model).__name__} has no torchvision weights; give a weight file path"
                )
            try:
                state = torchvision_weights.get_state_dict(progress=True)
            except Exception as exc:
                raise CheckpointError(
                    f"cannot download torchvision weights {torchvision_weights} ({type(exc).__name__}: {exc}); "
                    "download the file elsewhere and pass its local path as pretrained"
                ) from exc
        else:
            state, stripped = strip_prefixes(load_checkpoint_file(source))
    report = load_weights(model, state, min_matched=len(loadable_keys(model)), skip=skip, where=source)
    report.stripped = stripped
    return report


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
