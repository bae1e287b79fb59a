"""TransCAM's classification objective and the Background-Noise-Reduction term (Fujimori et al.).

``L = MLSM((GAP(M) + trans_logits)[:, 1:], y) + MLSM(GAP(M**)[:, 1:], y)`` with
``M* = A*·M`` (block-summed attention, class token dropped) and
``M** = k·Ā*·M*`` where ``Ā* = A*/depth`` is the block *mean*; hence ``M** = k·A*·A*·M/depth``
(transcam.md §3.2). The background channel is never supervised. Attention is not detached by
default, so the extra term trains the transformer's attention as well as the CAM head.
``noise_scale=None`` is the paper's "without noise" ablation (``M*`` fed to the loss directly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError
from wsss.losses.objective import Objective, check_image_labels
from wsss.models.cam.transcam import TransCAMOutput, a_star, refine
from wsss.registry import METHODS


def bnr_maps(
    cam: Tensor,
    attn_sum: Tensor,
    num_blocks: int,
    noise_scale: float | None = 1.0,
    detach_attention: bool = False,
) -> Tensor:
    """``M**`` (or ``M*`` when ``noise_scale`` is None) for a raw CAM and a block-summed attention."""
    attn = a_star(attn_sum)
    if detach_attention:
        attn = attn.detach()
    refined = refine(cam, attn)
    if noise_scale is None:
        return refined
    return refine(refined, attn * (noise_scale / num_blocks))


class BNRObjective(Objective):
    """Training loss on a ``TransCAMOutput``; ``use_bnr=False`` is plain TransCAM.

    ``needs_attention`` tells the training loop to run the model with ``with_attention=True``.
    Calling returns ``{'loss', 'cls'}`` plus ``'bnr'`` when the term is on. GAP runs over the
    whole token grid, so train on sizes that are multiples of 16 (the model zero-pads others).
    """

    def __init__(
        self, use_bnr: bool = True, noise_scale: float | None = 1.0, detach_attention: bool = False
    ) -> None:
        super().__init__()
        self.use_bnr = use_bnr
        self.noise_scale = _check_noise_scale(noise_scale)
        self.detach_attention = detach_attention
        self.needs_attention = use_bnr

    def class_probabilities(self, out: TransCAMOutput) -> Tensor:
        """σ of the summed conv and transformer logits, what the classification loss scores."""
        return torch.sigmoid((out.conv_logits + out.trans_logits)[:, 1:])

    def forward(self, out: TransCAMOutput, labels: Tensor) -> dict[str, Tensor]:
        labels = labels.to(out.conv_logits.dtype)
        check_image_labels(labels, out.conv_logits)
        cls = F.multilabel_soft_margin_loss((out.conv_logits + out.trans_logits)[:, 1:], labels)
        if not self.use_bnr:
            return {"loss": cls, "cls": cls}
        if out.attn_sum is None:
            raise ValueError("the BNR term needs attention: run the model with with_attention=True")
        maps = bnr_maps(out.cam, out.attn_sum, out.attn_blocks, self.noise_scale, self.detach_attention)
        bnr = F.multilabel_soft_margin_loss(maps.mean(dim=(2, 3))[:, 1:], labels)
        return {"loss": cls + bnr, "cls": cls, "bnr": bnr}

    def extra_repr(self) -> str:
        return f"use_bnr={self.use_bnr}, noise_scale={self.noise_scale}, detach_attention={self.detach_attention}"


def _check_noise_scale(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"bnr noise_scale must be a number or null (the 'without noise' ablation), got {value!r}"
        )
    return float(value)


@METHODS.register("bnr")
def build_bnr(noise_scale: float | None = 1.0, detach_attention: bool = False) -> BNRObjective:
    """TransCAM loss plus the BNR term (Fujimori et al.); ``noise_scale`` null = "without noise"."""
    return BNRObjective(use_bnr=True, noise_scale=noise_scale, detach_attention=detach_attention)


@METHODS.register("transcam")
def build_transcam_objective() -> BNRObjective:
    """TransCAM's own objective: the same loss with the BNR term off."""
    return BNRObjective(use_bnr=False)
