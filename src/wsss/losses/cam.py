"""The plain CAM objective (IRN, PSA): multi-label soft-margin loss on the pooled class scores.

``L = MLSM(logits[:, 1:], y)`` where ``logits = GAP(CAM)`` comes from a ``PlainCAMOutput``; the
zero background column is never supervised. MLSM is the mean over classes and images of the
per-class logistic loss, ``-[y·log σ(s) + (1-y)·log(1-σ(s))]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError
from wsss.losses.objective import Objective
from wsss.models.cam.plain_cam import PlainCAMOutput
from wsss.registry import METHODS


class PlainCAMObjective(Objective):
    """Classification loss for the plain CAM; returns ``{'loss', 'cls'}``.

    ``needs_attention = False``: the training loop runs the model without attention maps.
    """

    needs_attention = False

    def forward(self, out: PlainCAMOutput, labels: Tensor) -> dict[str, Tensor]:
        logits = out.logits
        want = (logits.shape[0], logits.shape[1] - 1)
        if tuple(labels.shape) != want:
            raise ConfigError(
                f"image labels of shape {tuple(labels.shape)} do not fit a model with {logits.shape[1]} "
                f"classes including background (expected {want}); check the model's num_classes"
            )
        cls = F.multilabel_soft_margin_loss(logits[:, 1:], labels.to(logits.dtype))
        return {"loss": cls, "cls": cls}


@METHODS.register("cam")
def build_cam_objective() -> PlainCAMObjective:
    """IRN/PSA classifier training: MLSM on the foreground logits."""
    return PlainCAMObjective()
