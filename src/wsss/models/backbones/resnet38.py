"""ResNet-38 (Wu et al.'s wide ResNet "model A1") as PSA, SEAM, TransCAM and PMM use it.

Pre-activation residual blocks; output stride 8 (``b2``/``b3``/``b4`` halve the resolution,
``b5`` is dilated 2 and ``b6``/``b7`` 4). Layout (transcam.md §2.6, ``jiwoon-ahn/psa``
``network/resnet38d.py``): ``conv1a`` (3×3, 64) → ``b2, b2_1, b2_2`` (128) → ``b3 … b3_2``
(256) → ``b4 … b4_5`` (512) → ``b5 … b5_2`` (512→1024, dilation 2) → ``b6`` (bottleneck to 2048,
dilation 4, dropout 0.3) → ``b7`` (bottleneck to 4096, dilation 4, dropout 0.5) → ``bn7``.
Submodule names are PSA's, so a converted ImageNet file or any PSA-family checkpoint loads by
key. Dropout is ``Dropout2d`` before the two inner convolutions of ``b6``/``b7`` (PSA's
placement; the MXNet training symbol drops after the last one).

Feature levels (channels, stride): ``conv2`` (128, 2) and ``conv3`` (256, 4) are the BN+ReLU
activations at the entry of ``b3`` and ``b4``; ``conv4`` (512, 8) the one at the entry of ``b5``,
``conv5`` (1024, 8) at the entry of ``b6`` and ``conv6`` (4096, 8) = ReLU(``bn7``(``b7``)). The
affinity head uses ``conv4``/``conv5``/``conv6``. Any input size works; the grid is
``ceil(H/8)×ceil(W/8)``.

Freezing defaults follow PSA's classifier and AffinityNet (the ``train()`` override of
``resnet38_cls.py`` / ``resnet38_aff.py``): ``conv1a`` and ``b2 … b2_2`` frozen
(``frozen_stages=1``; stage 0 is ``conv1a``, stage k the ``b{k+1}`` group), every BatchNorm in
eval mode with its affine parameters frozen. TransCAM's DeepLab stage never calls ``train()``
and so trains BN statistics: ``frozen_stages=-1, freeze_bn=False, freeze_bn_affine=True``.

BatchNorm eps is PyTorch's 1e-5, as in PSA (the MXNet model used 1.001e-5; the difference is
negligible). ``width_divisor`` > 1 divides every channel count (same keys, tiny model for CPU tests).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn
from torch.nn import functional as F

from wsss.errors import ConfigError
from wsss.models.backbones.base import FeatureInfo, FreezableBackbone, load_backbone_weights
from wsss.models.backbones.mxnet_params import convert_resnet38_params, read_params
from wsss.models.weights import LoadReport
from wsss.registry import BACKBONES

log = logging.getLogger(__name__)

OUTPUT_STRIDE = 8
# (name, in, mid, out, stride, first dilation, dilation) of every two-conv block
_BASIC_BLOCKS = (
    ("b2", 64, 128, 128, 2, 1, 1),
    ("b2_1", 128, 128, 128, 1, 1, 1),
    ("b2_2", 128, 128, 128, 1, 1, 1),
    ("b3", 128, 256, 256, 2, 1, 1),
    ("b3_1", 256, 256, 256, 1, 1, 1),
    ("b3_2", 256, 256, 256, 1, 1, 1),
    ("b4", 256, 512, 512, 2, 1, 1),
    *((f"b4_{i}", 512, 512, 512, 1, 1, 1) for i in range(1, 6)),
    ("b5", 512, 512, 1024, 1, 1, 2),
    ("b5_1", 1024, 512, 1024, 1, 2, 2),
    ("b5_2", 1024, 512, 1024, 1, 2, 2),
)
# Levels taken at the entry of a block: name → (block whose entry activation it is, channels, stride)
_ENTRY_LEVELS = {
    "b3": ("conv2", 128, 2),
    "b4": ("conv3", 256, 4),
    "b5": ("conv4", 512, 8),
    "b6": ("conv5", 1024, 8),
}


class PreActBlock(nn.Module):
    """PSA's ``ResBlock``: BN-ReLU, 3×3 conv (stride, first dilation), BN-ReLU, 3×3 conv, + shortcut.

    The shortcut is the input itself when shapes agree, else a 1×1 conv of the *activated*
    input. ``forward`` also returns that entry activation (a feature level for some blocks).
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        stride: int = 1,
        first_dilation: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(
            in_ch, mid_ch, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        entry = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(entry)
        out = self.conv_branch2a(entry)
        out = self.conv_branch2b1(F.relu(self.bn_branch2b1(out)))
        return shortcut + out, entry


class PreActBottleneck(nn.Module):
    """PSA's ``ResBlock_bot``: BN-ReLU, 1×1 (out/4), BN-ReLU-drop, 3×3 dilated (out/2), BN-ReLU-drop, 1×1 (out)."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.same_shape = in_ch == out_ch
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        entry = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(entry)
        out = self.conv_branch2a(entry)
        out = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(out))))
        out = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(out))))
        return shortcut + out, entry


class ResNet38(FreezableBackbone):
    """ResNet-38 with PSA's module names; levels ``conv2`` … ``conv6`` (see the module docstring)."""

    stage_modules = (
        ("conv1a",),
        ("b2", "b2_1", "b2_2"),
        ("b3", "b3_1", "b3_2"),
        ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"),
        ("b5", "b5_1", "b5_2"),
        ("b6",),
        ("b7", "bn7"),
    )

    def __init__(
        self,
        *,
        b6_dropout: float = 0.3,
        b7_dropout: float = 0.5,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        freeze_bn_affine: bool = True,
        width_divisor: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(width_divisor, bool) or not isinstance(width_divisor, int) or width_divisor < 1:
            raise ConfigError(f"ResNet-38 width_divisor must be a positive integer, got {width_divisor!r}")
        if 64 % width_divisor:
            raise ConfigError(f"ResNet-38 width_divisor must divide 64, got {width_divisor}")

        def w(channels: int) -> int:
            return channels // width_divisor

        self.conv1a = nn.Conv2d(3, w(64), 3, padding=1, bias=False)
        self._block_names: list[str] = []
        for name, cin, cmid, cout, stride, first, dil in _BASIC_BLOCKS:
            self.add_module(name, PreActBlock(w(cin), w(cmid), w(cout), stride, first, dil))
            self._block_names.append(name)
        self.b6 = PreActBottleneck(w(1024), w(2048), dilation=4, dropout=b6_dropout)
        self.b7 = PreActBottleneck(w(2048), w(4096), dilation=4, dropout=b7_dropout)
        self._block_names += ["b6", "b7"]
        self.bn7 = nn.BatchNorm2d(w(4096))
        entry = [FeatureInfo(level, w(ch), stride) for level, ch, stride in _ENTRY_LEVELS.values()]
        self.feature_info = (*entry, FeatureInfo("conv6", w(4096), OUTPUT_STRIDE))
        self.configure_freezing(frozen_stages, freeze_bn, freeze_bn_affine)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        x = self.conv1a(x)
        for name in self._block_names:
            x, entry = getattr(self, name)(x)
            if name in _ENTRY_LEVELS:
                out[_ENTRY_LEVELS[name][0]] = entry
        out["conv6"] = F.relu(self.bn7(x))
        return out


def load_resnet38_pretrained(model: ResNet38, path: str | Path) -> LoadReport:
    """Load ImageNet ResNet-38 weights by key: an MXNet ``.params`` file (converted on the fly)
    or a torch/safetensors file already under PSA's key names. Every backbone tensor must match."""
    path = Path(path)
    state = convert_resnet38_params(read_params(path)) if path.suffix.lower() == ".params" else None
    report = load_backbone_weights(model, str(path), state=state)
    log.info("ResNet-38 weights: %s", report.summary())
    return report


@BACKBONES.register("resnet38")
def build_resnet38(
    pretrained: str | None = None,
    output_stride: int = OUTPUT_STRIDE,
    b6_dropout: float = 0.3,
    b7_dropout: float = 0.5,
    frozen_stages: int = 1,
    freeze_bn: bool = True,
    freeze_bn_affine: bool = True,
    width_divisor: int = 1,
) -> ResNet38:
    """ResNet-38 (output stride 8 only); ``pretrained``: ``.params`` (MXNet) or converted weight file."""
    if output_stride != OUTPUT_STRIDE:
        raise ConfigError(
            f"ResNet-38 has output stride {OUTPUT_STRIDE} only, got output_stride={output_stride}"
        )
    model = ResNet38(
        b6_dropout=b6_dropout,
        b7_dropout=b7_dropout,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        freeze_bn_affine=freeze_bn_affine,
        width_divisor=width_divisor,
    )
    if pretrained is not None:
        load_resnet38_pretrained(model, pretrained)
    return model
