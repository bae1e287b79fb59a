"""AMR's dual-branch CAM network (Qin et al., AAAI 2022; ``jieqin-ai/AMR`` ``net/resnet50_amr.py``).

Two plain CAM classifiers (:class:`PlainCAM`) of the same backbone type:

* **spotlight**: the classifier stage 1 trained alone (stage ``pretrain-cls``), handed over by
  ``load_pretrained_stage``; its backbone is frozen. In training its features and logits are
  detached, as in the released code, so its classification loss gives no gradient and the only
  spotlight weights that learn are its classifier's, through the CPS term (authors, issue #12:
  "some parameters of spotlight branch are fixed").
* **compensation**: a fresh (ImageNet) backbone with a ``BACKBONE_INSERTS`` module (AMM) after every
  block (``insert_at="block"``, the released code) or stage (the paper's figure), frozen through
  ``frozen_stages`` (1: the released code detaches the output of ``layer1``), and its own classifier.

The model refuses to train without the stage-1 weights (``needs_pretrained_stage``): users of the
released code who skipped stage 1 trained against a random spotlight and reported results below
the plain CAM baseline (issues #5, #9).

CAMs: ``extract(x, "cam")`` fuses the branches per forward pass: each branch's ReLU CAM divided by
its per-image, per-class max (+1e-5), weighted by ``branch_weights`` (0.5/0.5, the released
``--weight``); ``"spotlight"`` / ``"compensation"`` give one branch's ReLU CAM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.engine.checkpoint import load_model_state
from wsss.errors import ConfigError
from wsss.models.backbones.base import FreezableBackbone
from wsss.models.cam.plain_cam import PlainCAM, build_plain_cam, requiring_grad, with_background
from wsss.registry import CAM_MODELS, suggest

EXTRACT_METHODS = ("cam", "spotlight", "compensation")
EPS = 1e-5  # the released code's max-normalisation epsilon


class AMROutput(NamedTuple):
    """One training forward. Maps are raw (pre-ReLU) B×(1+K)×h×w with a zero channel 0, logits
    ``GAP(map)``. The spotlight map comes from detached features (gradient reaches only its
    classifier) and its logits are detached."""

    cam_s: Tensor
    logits_s: Tensor
    cam_c: Tensor
    logits_c: Tensor


def max_normalise(cams: Tensor) -> Tensor:
    """Divide every (image, class) map by its maximum over positions (+1e-5)."""
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + EPS)


class AMR(nn.Module):
    """Spotlight (frozen backbone) + compensation (with inserts) plain CAM branches."""

    needs_pretrained_stage = True

    def __init__(
        self, spotlight: PlainCAM, compensation: PlainCAM, *, branch_weights: Sequence[float] = (0.5, 0.5)
    ) -> None:
        super().__init__()
        if spotlight.output_stride != compensation.output_stride:
            raise ConfigError(
                f"AMR branches must share an output stride, got spotlight {spotlight.output_stride} and "
                f"compensation {compensation.output_stride}"
            )
        if spotlight.num_classes != compensation.num_classes:
            raise ConfigError("AMR branches must have the same num_classes")
        weights = [float(w) for w in branch_weights]
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"AMR branch_weights must be two non-negative numbers (spotlight, compensation), got {branch_weights!r}"
            )
        if not isinstance(spotlight.backbone, FreezableBackbone):
            raise ConfigError("AMR's spotlight needs a freezable CNN backbone (resnet50, mobilenet_v2 …)")
        self.spotlight = spotlight
        self.compensation = compensation
        self.branch_weights = tuple(weights)
        self.num_classes = compensation.num_classes
        self.output_stride = compensation.output_stride
        spotlight.backbone.freeze_all()

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """``train_amr.py``'s groups: the trainable compensation backbone (AMMs included) at
        ``head_lr_mult``·lr (the released 10×), both classifiers at lr, decay on every group. The
        frozen spotlight backbone has nothing to train (the released code lists it at lr, but it
        only ever sees detached features)."""
        groups = [
            {
                "name": "compensation_backbone",
                "params": [p for p in self.compensation.backbone.parameters() if p.requires_grad],
                "lr": lr * head_lr_mult,
                "weight_decay": weight_decay,
            },
            {
                "name": "classifiers",
                "params": [
                    p
                    for branch in (self.spotlight, self.compensation)
                    for p in branch.classifier.parameters()
                    if p.requires_grad
                ],
                "lr": lr,
                "weight_decay": weight_decay,
            },
        ]
        return [g for g in groups if g["params"]]

    def load_pretrained_stage(
        self, state_dict: Mapping[str, Tensor], *, source: str = "the pretrain stage's weights"
    ) -> None:
        """Load the stage-1 plain CAM classifier into the spotlight branch (strictly, by key)."""
        load_model_state(self.spotlight, state_dict, source=source)

    def _spotlight_features(self, x: Tensor) -> Tensor:
        return self.spotlight.backbone.forward_features(x)[self.spotlight.feature_level]

    def forward(self, x: Tensor, with_attention: bool = False) -> AMROutput:
        """``with_attention`` is accepted for the training loop's uniform call; there is no attention."""
        with torch.no_grad():
            feats = self._spotlight_features(x)
        cam_s = with_background(F.conv2d(feats, self.spotlight.classifier.weight))
        out_c = self.compensation(x)
        return AMROutput(cam_s, cam_s.mean(dim=(2, 3)).detach(), out_c.cam, out_c.logits)

    def extract(self, x: Tensor, method: str = "cam") -> Tensor:
        """B×(1+K)×h×w maps at ``output_stride`` (channel 0 zeros): ``cam`` = the weighted sum of the
        branches' max-normalised ReLU CAMs, ``spotlight``/``compensation`` = one branch's ReLU CAM."""
        if method not in EXTRACT_METHODS:
            raise ConfigError(
                f"unknown CAM extraction method '{method}' for AMR{suggest(method, EXTRACT_METHODS)}; "
                f"available: {', '.join(EXTRACT_METHODS)}"
            )
        if method == "compensation":
            return self.compensation.extract(x, "cam")
        cam_s = F.relu(F.conv2d(self._spotlight_features(x), self.spotlight.classifier.weight))
        if method == "spotlight":
            return with_background(cam_s)
        cam_c = self.compensation.extract(x, "cam")[:, 1:]
        w_s, w_c = self.branch_weights
        return with_background(w_s * max_normalise(cam_s) + w_c * max_normalise(cam_c))

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[(f_S, maps_S), (f_C, maps_C)]: per branch the feature map its class maps are computed
        from (B×C×h×w, requiring grad even though the spotlight backbone is frozen) and its raw
        foreground class maps W·f, B×K×h×w (``PlainCAM.gradcam_branch``); the released code fuses
        the branches' normalised Grad-CAMs with ``branch_weights``."""
        with torch.enable_grad():
            feats = requiring_grad(self._spotlight_features(x))
            maps = F.conv2d(feats, self.spotlight.classifier.weight)
        return [(feats, maps), self.compensation.gradcam_branch(x)]


@CAM_MODELS.register("amr")
def build_amr(
    backbone: str = "resnet50",
    num_classes: int = 21,
    pretrained: str | None = None,
    output_stride: int | None = None,
    frozen_stages: int | None = 1,
    freeze_bn: bool | None = None,
    freeze_bn_affine: bool | None = None,
    feature_level: str | None = None,
    insert: str | None = "amm",
    insert_args: dict[str, Any] | None = None,
    insert_at: str = "block",
    backbone_args: dict[str, Any] | None = None,
    branch_weights: Sequence[float] = (0.5, 0.5),
) -> AMR:
    """AMR on a registered CNN backbone.

    ``pretrained`` (ImageNet), ``frozen_stages``, ``freeze_bn`` and ``freeze_bn_affine`` are the
    compensation branch's (the spotlight is frozen whole); the spotlight is built untrained and gets
    stage 1's weights from ``load_pretrained_stage``. ``output_stride``, ``feature_level`` and
    ``backbone_args`` (e.g. ``dilate``) go to both branches and must match the pretrain section's.
    ``insert``/``insert_args``/``insert_at`` place the compensation branch's modules (AMM per block).
    """
    if backbone_args and {"insert", "insert_args", "insert_at"} & set(backbone_args):
        raise ConfigError(
            "amr: set insert, insert_args and insert_at on the model (they apply to the compensation "
            "branch only), not inside backbone_args (shared by both branches)"
        )
    shared = {"output_stride": output_stride, "feature_level": feature_level}
    spotlight = build_plain_cam(backbone, num_classes, backbone_args=backbone_args, **shared)
    inserts = {} if insert is None else {"insert": insert, "insert_args": insert_args, "insert_at": insert_at}
    if insert is None and insert_args:
        raise ConfigError("amr: insert_args is given but insert is null; name the module (insert: amm)")
    compensation = build_plain_cam(
        backbone,
        num_classes,
        pretrained=pretrained,
        frozen_stages=frozen_stages,
        freeze_bn=freeze_bn,
        freeze_bn_affine=freeze_bn_affine,
        backbone_args={**(backbone_args or {}), **inserts},
        **shared,
    )
    return AMR(spotlight, compensation, branch_weights=branch_weights)
