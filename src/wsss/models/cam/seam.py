"""SEAM's CAM network (Wang et al., CVPR 2020), the classifier PMM trains: a CNN backbone, a
bias-free 1×1 classifier ``fc8`` over background + K classes, and the Pixel Correlation Module.

PCM revises the CAM with an affinity learnt from shallow features (``YudeWang/SEAM``
``network/resnet38_SEAM.py``; PMM ``network/scalenet_SEAM.py``, seed_methods.md §3.2):

* features f = concat[image resized to the CAM grid (bilinear, align corners),
  ReLU(``f8_3``(mid level)) → 64, ReLU(``f8_4``(late level)) → 128], then ``f9`` (195 → 192);
  the backbone levels are detached, so PCM's losses never reach the backbone;
* affinity a_ij = ReLU(cos(f_i, f_j)), each column divided by its sum;
* ``cam_rv = cam_dnorm · A`` with ``cam_dnorm`` the detached CAM after ReLU, divided by its
  per-channel spatial max; background = 1 − max over foreground; at every pixel the foreground
  channels below that max are zeroed (ties are all kept). Hence PCM gets gradients only through A.

Levels (``pcm_levels``; default: the two levels before the last): ResNet-38 ``conv4``/``conv5``
(512/1024 channels at the entry of ``b5``/``b6``, SEAM's names and levels), ResNets
``stage2``/``stage3`` (PMM's ``x2``/``x3`` = layer2/layer3, 512/1024), MobileNetV2
``stage2``/``stage3``. A level whose grid differs from the CAM's is resized bilinearly.

Backbones: ``resnet38`` (SEAM, PMM Phase A); ``resnet101`` stands in for PMM's ScaleNet-101
(and the Res2Net-101 of its segmentation stage), whose ImageNet weights are not public here
(PMM's ScaleNet runs at output stride 8 without dilation: ``output_stride=8`` with
``backbone_args: {dilate: false}``; conv1/bn1/layer1 frozen = ``frozen_stages=1``; every BN fixed
with frozen affine = ``freeze_bn_affine=True``);
``mobilenet_v2`` for CPU recipes.

Differences from the authors' code, all numerically negligible: column sums get eps 1e-8 rather
than 1e-5 (so columns sum to 1; the eps only guards an all-zero column); maps stay on the CAM
grid (the objective upsamples them, as SEAM's forward does). ``dropout`` before ``fc8`` is SEAM's
``dropout7`` (0.5 on ResNet-38; PMM's ScaleNet has none). ``fc8`` is Xavier-initialised (SEAM,
PMM's ScaleNet; PMM's ResNet-38 keeps PyTorch's default: ``classifier_init="default"``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone, build_cnn_backbone
from wsss.registry import CAM_MODELS, suggest

EXTRACT_METHODS = ("rv", "cam", "conv")
CLASSIFIER_INITS = ("xavier", "default")
OPTIMIZER_GROUPINGS = ("seam", "plain")
PCM_CHANNELS = (64, 128)  # ``f8_3``, ``f8_4`` outputs
PCM_OUT = 192  # ``f9`` output
NORM_EPS = 1e-5  # SEAM's eps in the feature norm and the CAM max-normalisation
COLUMN_EPS = 1e-8
HEAD_MODULES = ("fc8", "f8_3", "f8_4", "f9")  # SEAM's ``from_scratch_layers``
SEAM_DROPOUT = 0.5  # SEAM's ``dropout7`` on ResNet-38


class SEAMOutput(NamedTuple):
    """One forward pass, on the CAM grid (a NamedTuple so DDP and pytree see its tensors).

    ``cam``: raw class maps B×(1+K)×h×w (channel 0 is SEAM's learnt background);
    ``cam_rv``: the PCM-revised map, same shape; ``logits`` = ``GAP(cam)``, B×(1+K).
    """

    cam: Tensor
    cam_rv: Tensor
    logits: Tensor


def seam_cam_norm(cam: Tensor) -> Tensor:
    """The detached map PCM propagates: max-normalised, bg = 1 − max fg, non-max fg zeroed."""
    c = F.relu(cam.detach())
    peak = c.amax(dim=(2, 3), keepdim=True) + NORM_EPS
    norm = F.relu(c - NORM_EPS) / peak
    fg = norm[:, 1:]
    top = fg.amax(dim=1, keepdim=True)
    fg = torch.where(fg < top, torch.zeros_like(fg), fg)
    return torch.cat([1.0 - top, fg], dim=1)


def pcm_affinity(f: Tensor) -> Tensor:
    """B×C×h×w features → B×hw×hw affinity ReLU(cos(f_i, f_j)) whose columns sum to 1."""
    flat = f.flatten(2)
    flat = flat / (flat.norm(dim=1, keepdim=True) + NORM_EPS)
    aff = F.relu(flat.transpose(1, 2) @ flat)
    return aff / (aff.sum(dim=1, keepdim=True) + COLUMN_EPS)


def propagate(cam: Tensor, aff: Tensor) -> Tensor:
    """``cam_rv[:, :, j] = Σ_i cam[:, :, i]·a_ij`` for a B×C×h×w map and a B×hw×hw affinity."""
    b, c, h, w = cam.shape
    return (cam.flatten(2) @ aff).view(b, c, h, w)


def _with_zero_background(fg: Tensor) -> Tensor:
    return torch.cat([fg.new_zeros((fg.shape[0], 1, *fg.shape[2:])), fg], dim=1)


def _resized(x: Tensor, size: tuple[int, int], align_corners: bool) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class SEAM(nn.Module):
    """Backbone + ``fc8`` (1×1, no bias, 1+K outputs) + PCM (``f8_3``, ``f8_4``, ``f9``)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        pcm_levels: tuple[str, str] | list[str] | None = None,
        dropout: float = 0.0,
        classifier_init: str = "xavier",
        optimizer_grouping: str = "seam",
    ) -> None:
        super().__init__()
        _check_choices(num_classes, dropout, classifier_init, optimizer_grouping)
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_grouping = optimizer_grouping
        last = backbone.feature_info[-1]
        self.feature_level = last.name
        self.output_stride = last.stride
        mid, late = _pcm_levels(backbone, pcm_levels)
        self.pcm_levels = (mid.name, late.name)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.fc8 = nn.Conv2d(last.channels, num_classes, 1, bias=False)
        self.f8_3 = nn.Conv2d(mid.channels, PCM_CHANNELS[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(late.channels, PCM_CHANNELS[1], 1, bias=False)
        self.f9 = nn.Conv2d(3 + sum(PCM_CHANNELS), PCM_OUT, 1, bias=False)
        if classifier_init == "xavier":
            nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def forward(self, x: Tensor, with_attention: bool = False) -> SEAMOutput:
        """``with_attention`` is accepted for the training loop's uniform call; there is none."""
        feats = self.backbone.forward_features(x)
        cam = self.fc8(self.dropout(feats[self.feature_level]))
        aff = self._affinity(x, feats, (cam.shape[-2], cam.shape[-1]))
        cam_rv = propagate(seam_cam_norm(cam), aff)
        return SEAMOutput(cam=cam, cam_rv=cam_rv, logits=cam.mean(dim=(2, 3)))

    def affinity(self, x: Tensor) -> Tensor:
        """PCM's B×hw×hw affinity for an input (for inspection; ``forward`` computes the same)."""
        feats = self.backbone.forward_features(x)
        last = feats[self.feature_level]
        return self._affinity(x, feats, (last.shape[-2], last.shape[-1]))

    def _affinity(self, x: Tensor, feats: dict[str, Tensor], size: tuple[int, int]) -> Tensor:
        mid, late = (_resized(feats[n].detach(), size, align_corners=False) for n in self.pcm_levels)
        f = torch.cat(
            [
                _resized(x, size, align_corners=True),
                F.relu(self.f8_3(mid)),
                F.relu(self.f8_4(late)),
            ],
            dim=1,
        )
        return pcm_affinity(self.f9(f))

    def extract(self, x: Tensor, method: str = "rv") -> Tensor:
        """B×(1+K)×h×w maps at ``output_stride``.

        ``rv``: PCM's revised map (what SEAM and PMM infer with; channel 0 its revised
        background); ``cam``: ReLU of the foreground maps; ``conv``: the raw foreground maps;
        the last two with a zero channel 0, like the plain CAM's.
        """
        if method not in EXTRACT_METHODS:
            raise ConfigError(
                f"unknown CAM extraction method '{method}' for SEAM{suggest(method, EXTRACT_METHODS)}; "
                f"available: {', '.join(EXTRACT_METHODS)}"
            )
        if method == "rv":
            return self(x).cam_rv
        feats = self.backbone.forward_features(x)[self.feature_level]
        fg = F.conv2d(feats, self.fc8.weight[1:])
        return _with_zero_background(F.relu(fg) if method == "cam" else fg)

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """SEAM's ``train_SEAM.py`` groups (``seam``): backbone weights at lr with decay, backbone
        biases 2·lr without, new layers' weights ``head_lr_mult``·lr (SEAM: 10) with decay, their
        biases twice that without. SEAM never trains BatchNorm; unfrozen norm parameters go with
        the biases. ``plain``: the plain CAM's two groups (lr, ``head_lr_mult``·lr, decay on all)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for name in HEAD_MODULES for p in getattr(self, name).parameters() if p.requires_grad]
        if self.optimizer_grouping == "plain":
            groups = [
                _group("backbone", backbone, lr, weight_decay),
                _group("head", head, lr * head_lr_mult, weight_decay),
            ]
        else:
            groups = [
                _group("backbone_weight", [p for p in backbone if p.ndim > 1], lr, weight_decay),
                _group("backbone_bias", [p for p in backbone if p.ndim <= 1], 2 * lr, 0.0),
                _group("head_weight", [p for p in head if p.ndim > 1], head_lr_mult * lr, weight_decay),
                _group("head_bias", [p for p in head if p.ndim <= 1], 2 * head_lr_mult * lr, 0.0),
            ]
        return [g for g in groups if g["params"]]


def _group(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> dict[str, Any]:
    return {"name": name, "params": params, "lr": lr, "weight_decay": weight_decay}


def _check_choices(num_classes: int, dropout: float, classifier_init: str, grouping: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"SEAM num_classes counts background and must be >= 2, got {num_classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"SEAM dropout must be in [0, 1), got {dropout}")
    for key, value, choices in (
        ("classifier_init", classifier_init, CLASSIFIER_INITS),
        ("optimizer_grouping", grouping, OPTIMIZER_GROUPINGS),
    ):
        if value not in choices:
            raise ConfigError(
                f"unknown SEAM {key} '{value}'{suggest(value, choices)}; available: {', '.join(choices)}"
            )


def _pcm_levels(backbone: Backbone, names: tuple[str, str] | list[str] | None) -> tuple[Any, Any]:
    """The (mid, late) feature levels feeding PCM; default: the two before the last."""
    if names is None:
        if len(backbone.feature_info) < 3:
            raise ConfigError(
                f"SEAM needs two feature levels before the last for PCM; {type(backbone).__name__} has "
                f"{len(backbone.feature_info)}: set pcm_levels"
            )
        return backbone.feature_info[-3], backbone.feature_info[-2]
    if isinstance(names, str) or len(names) != 2:
        raise ConfigError(f"SEAM pcm_levels must name two feature levels (mid, late), got {names!r}")
    try:
        return backbone.level(names[0]), backbone.level(names[1])
    except KeyError as exc:
        raise ConfigError(f"SEAM pcm_levels: {exc.args[0]}") from exc


@CAM_MODELS.register("seam")
def build_seam(
    backbone: str = "resnet38",
    num_classes: int = 21,
    pretrained: str | None = None,
    output_stride: int | None = 8,
    frozen_stages: int | None = None,
    freeze_bn: bool | None = None,
    freeze_bn_affine: bool | None = None,
    pcm_levels: list[str] | None = None,
    dropout: float | None = None,
    classifier_init: str = "xavier",
    optimizer_grouping: str = "seam",
    backbone_args: dict[str, Any] | None = None,
) -> SEAM:
    """SEAM/PMM CAM network on a registered CNN backbone (output stride 8 as SEAM and PMM run it).

    ``pretrained``/``output_stride`` and the freezing options go to the backbone builder (None
    keeps its default); ``backbone_args`` passes any other backbone keyword. ``dropout`` None:
    SEAM's 0.5 on ``resnet38``, none on other backbones (PMM's ScaleNet has none).
    """
    given = {
        "pretrained": pretrained,
        "output_stride": output_stride,
        "frozen_stages": frozen_stages,
        "freeze_bn": freeze_bn,
        "freeze_bn_affine": freeze_bn_affine,
    }
    net = build_cnn_backbone(backbone, "SEAM", given, backbone_args)
    if dropout is None:
        dropout = SEAM_DROPOUT if backbone == "resnet38" else 0.0
    return SEAM(
        net,
        num_classes,
        pcm_levels=pcm_levels,
        dropout=dropout,
        classifier_init=classifier_init,
        optimizer_grouping=optimizer_grouping,
    )
