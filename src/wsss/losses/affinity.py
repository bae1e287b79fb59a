"""PSA's AffinityNet loss: cross-entropy on pair affinities, balanced over three pair sets.

With affinities ``a`` in (0, 1] and boolean pair masks from
:func:`wsss.refine.pairs.affinity_labels`:

* ``bg = −Σ bg_pos · log(a + ε) / |bg_pos|`` (both pixels background: pull together),
* ``fg = −Σ fg_pos · log(a + ε) / |fg_pos|`` (same foreground class),
* ``neg = −Σ neg · log(1 + ε − a) / |neg|`` (different labels: push apart),
* ``loss = bg/4 + fg/4 + neg/2`` (the paper's ``L_bg + L_fg + 2·L_neg`` up to scale).

Sums and counts run over the whole batch, as in PSA/TransCAM. ε = 1e-5. Counts are clamped
at 1, so a set with no pair contributes 0 instead of dividing by (almost) zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.registry import LOSSES

EPS = 1e-5


def _mean_over(mask: Tensor, per_pair: Tensor) -> Tensor:
    weight = mask.to(per_pair.dtype)
    return (weight * per_pair).sum() / weight.sum().clamp_min(1.0)


def affinity_loss(
    aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor, eps: float = EPS
) -> dict[str, Tensor]:
    """``{'loss', 'bg', 'fg', 'neg'}`` for affinities ``aff`` and masks of the same shape."""
    for name, mask in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        if mask.shape != aff.shape:
            raise ValueError(f"{name} mask shape {tuple(mask.shape)} != affinity shape {tuple(aff.shape)}")
    pos_nll = -torch.log(aff + eps)
    bg = _mean_over(bg_pos, pos_nll)
    fg = _mean_over(fg_pos, pos_nll)
    neg_loss = _mean_over(neg, -torch.log(1.0 + eps - aff))
    return {"loss": bg / 4 + fg / 4 + neg_loss / 2, "bg": bg, "fg": fg, "neg": neg_loss}


class AffinityLoss(nn.Module):
    """Module form of :func:`affinity_loss` for recipes (``LOSSES`` name ``psa_affinity``)."""

    def __init__(self, eps: float = EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        return affinity_loss(aff, bg_pos, fg_pos, neg, self.eps)


@LOSSES.register("psa_affinity")
def build_affinity_loss(eps: float = EPS) -> AffinityLoss:
    """PSA/TransCAM AffinityNet loss."""
    return AffinityLoss(eps)
