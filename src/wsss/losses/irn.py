"""IRN's training loss (``jiwoon-ahn/irn`` ``step/train_irn.py``): boundary-derived affinities (+ displacements).

With path affinities ``a = 1 − max edge`` (:mod:`wsss.refine.path_index`) and the pair masks of
:func:`wsss.refine.pairs.affinity_labels` on the stride-4 confident-label grid (radius 10,
crop layout in IRN), every term is a masked sum over the batch divided by ``count + 1e-5``:

* ``bg = Σ bg_pos · −log(a + ε)``, ``fg = Σ fg_pos · −log(a + ε)``, ``pos = bg/2 + fg/2``;
* ``neg = Σ neg · −log(1 + ε − a)``;
* displacement (IRN's instance part, optional): ``D(src) − D(dst)`` should equal the pair's
  offset ``dst − src`` (in grid cells, dy then dx) for same-class foreground pairs —
  ``dp_fg = Σ fg_pos · |D(src) − D(dst) − offset|₁ / (2·count + ε)`` — and zero for background
  pairs, ``dp_bg = Σ bg_pos · |D(src) − D(dst)|₁ / (2·count + ε)`` (the 2 averages the two
  channels);
* ``loss = (pos + neg)/2 (+ (dp_fg + dp_bg)/2)``.

A displacement ``D(p)`` that points from ``p`` to its instance centroid satisfies the foreground
rule exactly: ``(c − p) − (c − q) = q − p``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.registry import LOSSES

EPS = 1e-5


def _masked_mean(mask: Tensor, per_pair: Tensor, eps: float, scale: float = 1.0) -> Tensor:
    weight = mask.to(per_pair.dtype)
    return (weight * per_pair).sum() / (scale * weight.sum() + eps)


def _check_masks(shape: torch.Size, **masks: Tensor) -> None:
    for name, mask in masks.items():
        if mask.shape != shape:
            raise ValueError(f"{name} mask shape {tuple(mask.shape)} != affinity shape {tuple(shape)}")


def irn_affinity_loss(
    aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor, eps: float = EPS
) -> dict[str, Tensor]:
    """``{'loss', 'pos', 'neg', 'bg', 'fg'}`` with ``loss = (pos + neg)/2`` for affinities ``(B, P)``."""
    _check_masks(aff.shape, bg_pos=bg_pos, fg_pos=fg_pos, neg=neg)
    pos_nll = -torch.log(aff + eps)
    bg = _masked_mean(bg_pos, pos_nll, eps)
    fg = _masked_mean(fg_pos, pos_nll, eps)
    pos = bg / 2 + fg / 2
    neg_loss = _masked_mean(neg, -torch.log(1.0 + eps - aff), eps)
    return {"loss": (pos + neg_loss) / 2, "pos": pos, "neg": neg_loss, "bg": bg, "fg": fg}


def pair_offsets(src: Tensor, dst: Tensor, width: int) -> Tensor:
    """``(2, P)`` offsets ``dst − src`` (dy, dx) of flat pairs on a grid ``width`` cells wide."""
    dy = torch.div(dst, width, rounding_mode="floor") - torch.div(src, width, rounding_mode="floor")
    dx = dst % width - src % width
    return torch.stack([dy, dx])


def displacement_loss(
    displacement: Tensor, src: Tensor, dst: Tensor, bg_pos: Tensor, fg_pos: Tensor, eps: float = EPS
) -> dict[str, Tensor]:
    """``{'dp_fg', 'dp_bg'}`` for a field ``(B, 2, h, w)`` and masks ``(B, P)`` on pairs ``(src, dst)``."""
    if displacement.dim() != 4 or displacement.shape[1] != 2:
        raise ValueError(f"displacement must be (B, 2, h, w), got shape {tuple(displacement.shape)}")
    b, _, _, w = displacement.shape
    shape = torch.Size((b, src.numel()))
    _check_masks(shape, bg_pos=bg_pos, fg_pos=fg_pos)
    src, dst = src.to(displacement.device), dst.to(displacement.device)
    flat = displacement.flatten(2)
    diff = flat.index_select(2, src) - flat.index_select(2, dst)  # (B, 2, P)
    target = pair_offsets(src, dst, w).to(diff.dtype)
    fg_l1 = (diff - target).abs().sum(dim=1)
    bg_l1 = diff.abs().sum(dim=1)
    return {
        "dp_fg": _masked_mean(fg_pos, fg_l1, eps, scale=2.0),
        "dp_bg": _masked_mean(bg_pos, bg_l1, eps, scale=2.0),
    }


def irn_loss(
    aff: Tensor,
    bg_pos: Tensor,
    fg_pos: Tensor,
    neg: Tensor,
    displacement: Tensor | None = None,
    src: Tensor | None = None,
    dst: Tensor | None = None,
    eps: float = EPS,
) -> dict[str, Tensor]:
    """The affinity terms, plus the displacement terms when ``displacement`` (and its pairs) are given."""
    out = irn_affinity_loss(aff, bg_pos, fg_pos, neg, eps)
    if displacement is None:
        return out
    if src is None or dst is None:
        raise ValueError("the displacement loss needs the pair indices src and dst")
    dp = displacement_loss(displacement, src, dst, bg_pos, fg_pos, eps)
    out.update(dp)
    out["loss"] = out["loss"] + (dp["dp_fg"] + dp["dp_bg"]) / 2
    return out


class IRNLoss(nn.Module):
    """Module form of :func:`irn_loss` for recipes (``LOSSES`` name ``irn``)."""

    def __init__(self, eps: float = EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self,
        aff: Tensor,
        bg_pos: Tensor,
        fg_pos: Tensor,
        neg: Tensor,
        displacement: Tensor | None = None,
        src: Tensor | None = None,
        dst: Tensor | None = None,
    ) -> dict[str, Tensor]:
        return irn_loss(aff, bg_pos, fg_pos, neg, displacement, src, dst, self.eps)


@LOSSES.register("irn")
def build_irn_loss(eps: float = EPS) -> IRNLoss:
    """IRN's boundary-affinity loss (+ displacement terms when a field is passed)."""
    return IRNLoss(eps)
