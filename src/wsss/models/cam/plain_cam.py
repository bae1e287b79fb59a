"""The plain CAM classifier of IRN (and PSA): a CNN backbone, GAP and a bias-free 1×1 classifier.

Training logits are ``W·GAP(f)`` for the foreground classes; because the classifier is linear
and has no bias this equals ``GAP(W·f)``, the mean of the class activation map, so the map
used at inference is exactly what training scored. CAM = ReLU(conv(f, W)) (IRN's ``CAM``
class, PSA's ``forward_cam``), on the backbone's last level.

To fit the toolkit's CAM contract every map and logit vector has ``num_classes`` channels
(background included): channel 0 is all zeros (the CAM stage ignores it; background comes from
thresholding). PSA's ResNet-38 classifier drops out the features before pooling
(``dropout=0.5``) and initialises the classifier with Xavier (``classifier_init="xavier"``);
IRN uses neither.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone, build_cnn_backbone
from wsss.registry import CAM_MODELS, suggest

EXTRACT_METHODS = ("cam", "conv")
CLASSIFIER_INITS = ("default", "xavier")


class PlainCAMOutput(NamedTuple):
    """One forward pass (a NamedTuple so DDP and ``torch.utils._pytree`` see its tensors).

    ``cam``: raw (pre-ReLU) class maps B×(1+K)×h×w, channel 0 zeros; ``logits`` = ``GAP(cam)``
    (B×(1+K), column 0 zeros); ``features``: every backbone level, for plug-in losses.
    """

    cam: Tensor
    logits: Tensor
    features: dict[str, Tensor]


def with_background(fg: Tensor) -> Tensor:
    """Prepend the zero background channel along dim 1."""
    return torch.cat([fg.new_zeros((fg.shape[0], 1, *fg.shape[2:])), fg], dim=1)


def requiring_grad(features: Tensor) -> Tensor:
    """``features`` as a graph node gradients can be taken at: unchanged when it already requires
    grad (e.g. the input image does), else a detached leaf that does (a frozen backbone's output)."""
    return features if features.requires_grad else features.detach().requires_grad_(True)


class PlainCAM(nn.Module):
    """Backbone + ``classifier`` (1×1 conv, no bias, K = ``num_classes - 1`` outputs)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature_level: str | None = None,
        dropout: float = 0.0,
        classifier_init: str = "default",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(
                f"plain CAM num_classes counts background and must be >= 2, got {num_classes!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"plain CAM dropout must be in [0, 1), got {dropout}")
        if classifier_init not in CLASSIFIER_INITS:
            raise ConfigError(
                f"unknown classifier_init '{classifier_init}'{suggest(classifier_init, CLASSIFIER_INITS)}; "
                f"available: {', '.join(CLASSIFIER_INITS)}"
            )
        self.backbone = backbone
        self.feature_level = feature_level or backbone.feature_info[-1].name
        try:
            level = backbone.level(self.feature_level)
        except KeyError as exc:
            raise ConfigError(f"plain CAM feature_level: {exc.args[0]}") from exc
        self.output_stride = level.stride
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(level.channels, num_classes - 1, kernel_size=1, bias=False)
        if classifier_init == "xavier":
            nn.init.xavier_uniform_(self.classifier.weight)

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """IRN's ``train_cam.py`` groups: the trainable backbone at ``lr``, the new classifier at
        ``head_lr_mult·lr`` (IRN: 10), weight decay on both (norm and bias parameters included)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"name": "backbone", "params": backbone, "lr": lr, "weight_decay": weight_decay}]
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        groups.append(
            {"name": "classifier", "params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay}
        )
        return [g for g in groups if g["params"]]

    def forward(self, x: Tensor, with_attention: bool = False) -> PlainCAMOutput:
        """``with_attention`` is accepted for the training loop's uniform call; there is no attention."""
        feats = self.backbone.forward_features(x)
        cam = with_background(self.classifier(self.dropout(feats[self.feature_level])))
        return PlainCAMOutput(cam=cam, logits=cam.mean(dim=(2, 3)), features=feats)

    def gradcam_branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f, maps): the feature map the class maps are computed from (B×C×h×w, always requiring
        grad) and the raw foreground class maps W·f, B×K×h×w (no background channel, no dropout).
        Maps rather than their GAP logits: AdvCAM scores a class by Σ ReLU(map), which weighs the
        scales of a multi-scale sum differently from the mean a logit takes."""
        with torch.enable_grad():
            feats = requiring_grad(self.backbone.forward_features(x)[self.feature_level])
            maps = F.conv2d(feats, self.classifier.weight)
        return feats, maps

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per branch (one here), what Grad-CAM/AdvCAM extractors differentiate: see ``gradcam_branch``."""
        return [self.gradcam_branch(x)]

    def extract(self, x: Tensor, method: str = "cam") -> Tensor:
        """B×(1+K)×h×w maps at ``output_stride``: ``cam`` = ReLU(conv(f, W)), ``conv`` = raw conv(f, W)."""
        if method not in EXTRACT_METHODS:
            raise ConfigError(
                f"unknown CAM extraction method '{method}' for the plain CAM{suggest(method, EXTRACT_METHODS)}; "
                f"available: {', '.join(EXTRACT_METHODS)}"
            )
        feats = self.backbone.forward_features(x)[self.feature_level]
        fg = F.conv2d(feats, self.classifier.weight)
        return with_background(F.relu(fg) if method == "cam" else fg)


@CAM_MODELS.register("cam")
def build_plain_cam(
    backbone: str = "resnet50",
    num_classes: int = 21,
    pretrained: str | None = None,
    output_stride: int | None = None,
    frozen_stages: int | None = None,
    freeze_bn: bool | None = None,
    freeze_bn_affine: bool | None = None,
    feature_level: str | None = None,
    dropout: float = 0.0,
    classifier_init: str = "default",
    backbone_args: dict[str, Any] | None = None,
) -> PlainCAM:
    """IRN-style CAM classifier on a registered CNN backbone.

    ``pretrained``/``output_stride`` and the freezing options go to the backbone builder;
    None keeps that backbone's own default. ``backbone_args`` passes any other backbone keyword.
    """
    given = {
        "pretrained": pretrained,
        "output_stride": output_stride,
        "frozen_stages": frozen_stages,
        "freeze_bn": freeze_bn,
        "freeze_bn_affine": freeze_bn_affine,
    }
    net = build_cnn_backbone(backbone, "the plain CAM", given, backbone_args)
    return PlainCAM(
        net, num_classes, feature_level=feature_level, dropout=dropout, classifier_init=classifier_init
    )
