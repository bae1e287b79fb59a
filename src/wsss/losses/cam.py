"""The plain CAM objective (IRN, PSA): multi-label soft-margin loss on the pooled class scores.

``L = MLSM(logits[:, 1:], y)`` where ``logits = GAP(CAM)`` comes from a ``PlainCAMOutput``; the
zero background column is never supervised. MLSM is the mean over classes and images of the
per-class logistic loss, ``-[y·log σ(s) + (1-y)·log(1-σ(s))]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from wsss.losses.objective import Objective, check_image_labels
from wsss.models.cam.plain_cam import PlainCAMOutput
from wsss.registry import METHODS


class PlainCAMObjective(Objective):
    """Classification loss for the plain CAM; returns ``{'loss', 'cls'}``.

    ``needs_attention = False``: the training loop runs the model without attention maps.
    """

    needs_attention = False

    def forward(self, out: PlainCAMOutput, labels: Tensor) -> dict[str, Tensor]:
        logits = out.logits
        check_image_labels(labels, logits)
        cls = F.multilabel_soft_margin_loss(logits[:, 1:], labels.to(logits.dtype))
        return {"loss": cls, "cls": cls}


@METHODS.register("cam")
def build_cam_objective() -> PlainCAMObjective:
    """IRN/PSA classifier training: MLSM on the foreground logits."""
    return PlainCAMObjective()
