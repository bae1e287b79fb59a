"""SPU's stage-1 pair of networks (Liu et al., Visual Computer 2024; ``pur-suit/SPU``
``net/resnet50_cam.py``, ``net/SPM.py``).

Two plain CAM classifiers (:class:`PlainCAM`) of the same backbone type, trained together:

* **plain**: the IRN-style CAM net. Only it makes the CAMs (the released code discards the other).
* **SPM** (saliency perception module net): the same network with a ``BACKBONE_INSERTS`` module
  (SPU's hybrid attention, ``hybrid``) after every stage but the last (``insert_levels``).

The pixel-wise transfer loss (``losses/spu.py``) pulls the plain net's ``transfer_level`` features
(the released code: stage 3, raw) towards the SPM net's (after its hybrid attention), so the
plain net learns to spread its activation the way the attention does. ``cam_from: spm`` makes the
CAMs from the SPM net instead (an ablation the reference suggests).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.cam.plain_cam import PlainCAM, build_plain_cam
from wsss.registry import CAM_MODELS, suggest

CAM_SOURCES = ("plain", "spm")


class SPUOutput(NamedTuple):
    """One training forward: the plain net's raw maps B×(1+K)×h×w (channel 0 zeros) and their GAP
    logits, the SPM net's logits, and both nets' features at the transfer level."""

    cam: Tensor
    logits: Tensor
    logits_spm: Tensor
    transfer: Tensor
    transfer_spm: Tensor


class SPU(nn.Module):
    """The plain CAM net and the SPM net; CAMs from ``cam_from``."""

    def __init__(
        self, plain: PlainCAM, spm: PlainCAM, *, transfer_level: str, cam_from: str = "plain"
    ) -> None:
        super().__init__()
        if cam_from not in CAM_SOURCES:
            raise ConfigError(
                f"spu cam_from must be one of {', '.join(CAM_SOURCES)}, got {cam_from!r}{suggest(str(cam_from), CAM_SOURCES)}"
            )
        levels = [info.name for info in plain.backbone.feature_info]
        if transfer_level not in levels:
            raise ConfigError(
                f"spu transfer_level '{transfer_level}' is not a level of the backbone: {', '.join(levels)}"
            )
        if plain.output_stride != spm.output_stride or plain.num_classes != spm.num_classes:
            raise ConfigError("spu: the plain and SPM nets must share output stride and num_classes")
        self.plain = plain
        self.spm = spm
        self.transfer_level = transfer_level
        self.cam_from = cam_from
        self.num_classes = plain.num_classes
        self.output_stride = plain.output_stride

    @property
    def cam_net(self) -> PlainCAM:
        """The net that makes the CAMs."""
        return self.plain if self.cam_from == "plain" else self.spm

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """``train_cam.py``'s groups: both backbones at ``lr``; the new layers (both classifiers and
        the hybrid attention modules) at ``head_lr_mult``·lr (the released 10×); decay on all."""
        inserted = {
            id(p)
            for name in self.spm.backbone.insert_names
            for p in self.spm.backbone.get_submodule(name).parameters()
        }
        backbone = [
            p
            for net in (self.plain, self.spm)
            for p in net.backbone.parameters()
            if p.requires_grad and id(p) not in inserted
        ]
        new = [p for net in (self.plain, self.spm) for p in net.classifier.parameters() if p.requires_grad]
        new += [p for p in self.spm.backbone.parameters() if p.requires_grad and id(p) in inserted]
        groups = [
            {"name": "backbones", "params": backbone, "lr": lr, "weight_decay": weight_decay},
            {"name": "new_layers", "params": new, "lr": lr * head_lr_mult, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]

    def forward(self, x: Tensor, with_attention: bool = False) -> SPUOutput:
        """``with_attention`` is accepted for the training loop's uniform call; there is none."""
        p, s = self.plain(x), self.spm(x)
        return SPUOutput(
            p.cam, p.logits, s.logits, p.features[self.transfer_level], s.features[self.transfer_level]
        )

    def extract(self, x: Tensor, method: str = "cam") -> Tensor:
        """The CAM net's maps (``PlainCAM.extract``)."""
        return self.cam_net.extract(x, method)

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The CAM net's Grad-CAM branch, so AdvCAM and Grad-CAM work on SPU's CAMs too."""
        return self.cam_net.gradcam_branches(x)


@CAM_MODELS.register("spu")
def build_spu(
    backbone: str = "resnet50",
    num_classes: int = 21,
    pretrained: str | None = None,
    output_stride: int | None = None,
    frozen_stages: int | None = None,
    freeze_bn: bool | None = None,
    freeze_bn_affine: bool | None = None,
    feature_level: str | None = None,
    insert: str = "hybrid",
    insert_args: dict[str, Any] | None = None,
    insert_levels: list[str] | None = None,
    transfer_level: str | None = None,
    cam_from: str = "plain",
    backbone_args: dict[str, Any] | None = None,
) -> SPU:
    """SPU's plain + SPM nets on a registered CNN backbone, both from the same ImageNet weights.

    ``insert_levels`` (default: every level but the last: ResNet stages 1-3) get ``insert`` (SPU's
    hybrid attention) in the SPM net; ``transfer_level`` (default: the second-to-last level, ResNet's
    stage 3) is where the transfer loss compares the nets. The other keywords go to both nets.
    """
    if backbone_args and {"insert", "insert_args", "insert_at", "insert_levels"} & set(backbone_args):
        raise ConfigError(
            "spu: set insert, insert_args and insert_levels on the model (they apply to the SPM net only), "
            "not inside backbone_args (shared by both nets)"
        )
    shared = {
        "pretrained": pretrained,
        "output_stride": output_stride,
        "frozen_stages": frozen_stages,
        "freeze_bn": freeze_bn,
        "freeze_bn_affine": freeze_bn_affine,
        "feature_level": feature_level,
    }
    plain = build_plain_cam(backbone, num_classes, backbone_args=backbone_args, **shared)
    levels = [info.name for info in plain.backbone.feature_info]
    if len(levels) < 2:
        raise ConfigError(f"spu needs a backbone with at least two feature levels; '{backbone}' has {levels}")
    inserts = {
        "insert": insert,
        "insert_args": insert_args,
        "insert_at": "stage",
        "insert_levels": insert_levels if insert_levels is not None else levels[:-1],
    }
    spm = build_plain_cam(backbone, num_classes, backbone_args={**(backbone_args or {}), **inserts}, **shared)
    return SPU(plain, spm, transfer_level=transfer_level or levels[-2], cam_from=cam_from)
