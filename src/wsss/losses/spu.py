"""SPU's stage-1 objective (``pur-suit/SPU`` ``step/train_cam.py``).

L = w_plain·MLSM(logits_plain, y) + w_spm·MLSM(logits_spm, y) + w_pt·L_PT, with
L_PT = mean |F_plain − F_spm| over every element of the two nets' transfer-level features (the
pixel-wise transfer loss; released weights ½, ½, ½). The released code detaches neither side, so
the two nets are pulled towards each other; ``detach_target`` names a side to treat as a fixed
target instead (``spm``: only the plain net moves; ``plain``: only the SPM net moves).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError
from wsss.losses.objective import Objective, check_image_labels
from wsss.models.cam.spu import SPUOutput
from wsss.registry import METHODS, suggest

DETACH_TARGETS = ("none", "spm", "plain")


def pixel_transfer_loss(plain: Tensor, spm: Tensor, detach_target: str = "none") -> Tensor:
    """mean |plain − spm|, with the ``detach_target`` side cut from the graph."""
    if detach_target not in DETACH_TARGETS:
        raise ConfigError(
            f"spu detach_target must be one of {', '.join(DETACH_TARGETS)}, got {detach_target!r}"
            f"{suggest(str(detach_target), DETACH_TARGETS)}"
        )
    if plain.shape != spm.shape:
        raise ConfigError(
            f"spu transfer features differ in shape: plain {tuple(plain.shape)}, SPM {tuple(spm.shape)}"
        )
    if detach_target == "spm":
        spm = spm.detach()
    elif detach_target == "plain":
        plain = plain.detach()
    return (plain - spm).abs().mean()


class SPUObjective(Objective):
    """Returns ``{'loss', 'cls', 'cls_spm', 'pt'}``; held-out scores read the plain net's logits."""

    needs_attention = False

    def __init__(
        self, cls_weights: Sequence[float] = (0.5, 0.5), pt_weight: float = 0.5, detach_target: str = "none"
    ) -> None:
        super().__init__()
        weights = [float(w) for w in cls_weights]
        if len(weights) != 2:
            raise ConfigError(f"spu cls_weights must be two numbers (plain, SPM), got {cls_weights!r}")
        pixel_transfer_loss(Tensor([0.0]), Tensor([0.0]), detach_target)  # validates the name
        self.cls_weights = tuple(weights)
        self.pt_weight = float(pt_weight)
        self.detach_target = detach_target

    def forward(self, out: SPUOutput, labels: Tensor) -> dict[str, Tensor]:
        check_image_labels(labels, out.logits)
        y = labels.to(out.logits.dtype)
        cls = F.multilabel_soft_margin_loss(out.logits[:, 1:], y)
        cls_spm = F.multilabel_soft_margin_loss(out.logits_spm[:, 1:], y)
        pt = pixel_transfer_loss(out.transfer, out.transfer_spm, self.detach_target)
        w_p, w_s = self.cls_weights
        return {
            "loss": w_p * cls + w_s * cls_spm + self.pt_weight * pt,
            "cls": cls,
            "cls_spm": cls_spm,
            "pt": pt,
        }


@METHODS.register("spu")
def build_spu_objective(
    cls_weights: Sequence[float] = (0.5, 0.5), pt_weight: float = 0.5, detach_target: str = "none"
) -> SPUObjective:
    """SPU stage 1: both nets' classification + the pixel-wise transfer loss."""
    return SPUObjective(cls_weights, pt_weight, detach_target)
