"""Grad-CAM on every branch of a classifier, as AMR (and AdvCAM, whose code AMR reuses) read CAMs.

Why gradients: a Grad-CAM map weights the feature channels by how much they raise the class
score, so it needs ``∂score/∂features`` and runs with autograd on (``needs_grad``). The model
exposes what is differentiated through :class:`GradCamModel`; nothing is hooked.

Each call gets an image batch, the images' K-dim label vectors and the pass's flip and scale
(``needs_labels``) and returns B×branches×(1+K)×h×w maps, channel 0 zero, absent classes zero.
The flip is handled here, not by the caller, because AdvCAM's code treats an image and its
mirror as one tensor: one positive-gradient count for both, maps fused at feature resolution
(``R(x) + flip(R(flip x))``). Branches stay apart until ``make-cams`` has summed the passes:
AMR divides each branch's scale sum by its per-class max before the weighted fusion
(:func:`fuse_branches`).

Scores, as AdvCAM's ``gradCAM.py`` computes them: when the model gives class maps (B×K×h×w), the
Grad-CAM score of class c is Σ_positions ReLU(map_c); a model that gives logits (B×K) is scored
by its logit. The two are not interchangeable: on a linear head, with the positive-count weights
(below), a GAP-logit score weighs a pass by 1/(h·w) and a summed-map score does not, so the scales
of a multi-scale sum weigh differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.registry import suggest

GRAD_POOLS = ("positive", "mean")
"""Channel weights: ``positive`` = AdvCAM/AMR's ``gap2d_pos`` (gradient sum over positions divided
by the count of positive gradient entries of the image's whole tensor); ``mean`` = Grad-CAM's
average over positions."""


class GradCamModel(Protocol):
    """What gradient extractors need from a classifier."""

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per branch: (the feature map its class maps come from, B×C×h×w, in the autograd graph;
        its class scores: logits B×K or class maps B×K×h×w, optionally with a leading background
        column/channel, B×(1+K)…, which is ignored)."""
        ...


def require_grad() -> None:
    """Fail clearly instead of deep in autograd when called under ``torch.no_grad``."""
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "gradient CAM extractors need autograd: call them under torch.enable_grad() "
            "(multiscale_cams does so for extractors with needs_grad)"
        )


def check_grad_pool(grad_pool: str) -> None:
    if grad_pool not in GRAD_POOLS:
        raise ConfigError(
            f"unknown grad_pool {grad_pool!r}{suggest(grad_pool, GRAD_POOLS)}; choose from {GRAD_POOLS}"
        )


def check_fusion(fusion: Sequence[float] | None) -> tuple[float, ...] | None:
    """Branch weights as a tuple; they must be ≥ 0 and sum to 1 so fused maps stay in [0, 1]."""
    if fusion is None:
        return None
    weights = tuple(float(w) for w in fusion)
    if not weights or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"fusion weights must be >= 0 and sum to 1 (AMR: [0.5, 0.5]), got {list(fusion)}")
    return weights


def foreground(scores: Tensor, num_classes: int) -> Tensor:
    """The K foreground columns (channels) of a branch's scores; a leading background one is dropped."""
    extra = scores.shape[1] - num_classes
    if extra not in (0, 1):
        raise ValueError(
            f"gradcam_branches gave {scores.shape[1]} class scores for {num_classes} labelled classes"
        )
    return scores[:, extra:]


def pooled(scores: Tensor, pool: Literal["sum", "mean"]) -> Tensor:
    """B×K class scores: logits as given; class maps ReLU'd and pooled over positions (AdvCAM's
    code sums them for the Grad-CAM score and averages them in the anti-adversarial objective)."""
    if scores.ndim == 2:
        return scores
    flat = F.relu(scores).flatten(2)
    return flat.sum(-1) if pool == "sum" else flat.mean(-1)


def with_views(images: Tensor, flip: bool) -> Tensor:
    """B×3×H×W → B×V×3×H×W: each image, then (with ``flip``) its mirror."""
    return torch.stack([images, images.flip(-1)], 1) if flip else images[:, None]


def channel_weights(grads: Tensor, grad_pool: str) -> Tensor:
    """N×V×C×h×w gradients → N×V×C channel weights (``GRAD_POOLS``); the positive count is per
    image over all its views, as AdvCAM's tensor is always one image and its flip."""
    if grad_pool == "mean":
        return grads.mean((-2, -1))
    count = (grads > 0).flatten(1).sum(1).to(grads.dtype)
    return grads.sum((-2, -1)) / (count.view(-1, 1, 1) + 1e-12)


def regions(features: Tensor, grads: Tensor, views: int, grad_pool: str) -> Tensor:
    """Per image (N·V rows → N): ReLU(Σ_k w_k A_k) of each view, the mirror flipped back and added.

    The weights are constants; the map stays in the graph through ``features``, which AdvCAM's
    regulariser differentiates.
    """
    a = features.unflatten(0, (-1, views))
    w = channel_weights(grads.unflatten(0, (-1, views)), grad_pool)
    maps = F.relu(torch.einsum("nvc,nvchw->nvhw", w, a))
    return maps[:, 0] + maps[:, 1].flip(-1) if views == 2 else maps[:, 0]


def class_regions(features: Tensor, score: Tensor, views: int, grad_pool: str) -> Tensor:
    """Grad-CAM maps of the scalar ``score`` (a sum of per-row class scores); the graph is kept."""
    if not features.requires_grad:
        raise ValueError("gradcam_branches must return features that require grad (a graph node)")
    (grads,) = torch.autograd.grad(score, features, retain_graph=True)
    return regions(features, grads, views, grad_pool)


def stack_branches(maps: list[Tensor]) -> Tensor:
    """B×(1+K)×h×w per branch → B×branches×(1+K)×h×w (the branches must share a grid)."""
    if len({tuple(m.shape) for m in maps}) != 1:
        raise ValueError(
            f"gradcam_branches gave branches on different grids: {[tuple(m.shape) for m in maps]}"
        )
    return torch.stack(maps, 1)


def fuse_branches(
    sums: Tensor, normalise: Callable[[Tensor], Tensor], weights: Sequence[float] | None
) -> Tensor:
    """AMR's order: each branch's pass sum normalised per class, then weighted (branches×K×H×W →
    K×H×W; ``None`` = equal weights). One branch is exactly ``normalise``."""
    n = sums.shape[0]
    weights = [1.0 / n] * n if weights is None else list(weights)
    if len(weights) != n:
        raise ConfigError(f"fusion has {len(weights)} weights but the model has {n} branches")
    out = weights[0] * normalise(sums[0])
    for w, branch in zip(weights[1:], sums[1:]):
        out = out + w * normalise(branch)
    return out


@dataclass(frozen=True, kw_only=True)
class GradCAM:
    """``CAM_EXTRACTORS["gradcam"]``: Grad-CAM of every present class on every branch.

    ``grad_pool``: channel weights (:data:`GRAD_POOLS`, AMR: ``positive``); ``fusion``: branch
    weights applied after per-branch normalisation (None: equal, AMR's 0.5/0.5).
    """

    grad_pool: str = "positive"
    fusion: Sequence[float] | None = None
    needs_grad: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_grad_pool(self.grad_pool)
        object.__setattr__(self, "fusion", check_fusion(self.fusion))

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, *, flip: bool = True, scale: float = 1.0
    ) -> Tensor:
        """B×branches×(1+K)×h×w maps of ``images`` (normalised B×3×H×W) for their ``labels`` (B×K).

        One forward per call; one backward to the features per class present in the batch.
        """
        require_grad()
        views = 2 if flip else 1
        x = with_views(images, flip).flatten(0, 1)  # no input gradient: only the head is differentiated
        present = labels > 0.5
        out = []
        for features, scores in model.gradcam_branches(x):
            score = pooled(foreground(scores, labels.shape[1]), "sum")
            maps = features.new_zeros(len(images), labels.shape[1] + 1, *features.shape[-2:])
            for c in torch.nonzero(present.any(0)).flatten().tolist():
                rows = present[:, c]
                target = (score[:, c] * rows.repeat_interleave(views).to(score.dtype)).sum()
                maps[rows, 1 + c] = class_regions(features, target, views, self.grad_pool)[rows].detach()
            out.append(maps)
        return stack_branches(out)

    def fuse(self, sums: Tensor, normalise: Callable[[Tensor], Tensor]) -> Tensor:
        """The stored maps from per-branch pass sums (:func:`fuse_branches`)."""
        return fuse_branches(sums, normalise, self.fusion)
