"""AdvCAM (Lee et al., CVPR 2021), the CAM reader AMR's released inference uses, for any model
implementing :class:`wsss.cams.gradcam.GradCamModel`.

Why: a CAM lights only the most discriminative parts. Pushing the image *towards* the class (an
anti-adversarial step) makes further regions score; the Grad-CAM maps of all the steps are summed.
A regulariser stops the already-high region from simply growing instead.

Per present class and branch, from the pass's image and its mirror (perturbed together as one
tensor, as in AdvCAM's code), for t = 0 … steps−1:

* R_t = the Grad-CAM map of the current image (:func:`wsss.cams.gradcam.regions`), added to the output;
* s = the branch's class scores of each view (class maps: mean over positions of ReLU(map));
* L = Σ_views (2·s_c − Σ_k s_k) − λ·Σ_p |R_t − R_0|·1[R_t > τ·max R_t], the mask re-made each step;
* x ← clamp(x + ξ·∇_x L / max|∇_x L|, min x, max x), min and max over the image and its mirror.

The regulariser is *subtracted* in what is climbed (the code descends ``−logit_loss − λ·L_AD``
with ``logit_loss = Σ s − 2·s_c``). The step after the last map is skipped (it adds nothing).

AMR/AdvCAM code quirk (``short_scale``, off by default): at their second scale (0.5) the loop
runs 13 of 27 steps (``authors_steps``) and multiplies the maps by 2, but the multiplier is never
reset, so every later scale is doubled too and after per-class normalisation only the shorter
loop remains; that is what the keyword reproduces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from wsss.cams.gradcam import (
    check_fusion,
    check_grad_pool,
    class_regions,
    foreground,
    fuse_branches,
    pooled,
    require_grad,
    stack_branches,
    with_views,
)
from wsss.errors import ConfigError


class Climb(NamedTuple):
    """One anti-adversarial run over a chunk of J (image, class) jobs on one branch."""

    maps: Tensor  # J×h×w: Σ_t R_t
    images: Tensor  # J×V×3×H×W: the image whose map was added last
    branches: int  # how many branches the model has


def authors_steps(steps: int) -> int:
    """Steps AdvCAM's code runs at its short scale: half above 10, 5 from 6 to 10, all below 6."""
    return steps // 2 if steps > 10 else (5 if steps >= 6 else steps)


def growth_penalty(region: Tensor, start: Tensor, threshold: float) -> Tensor:
    """Σ_p |R − R_0| over the pixels where R > threshold·max R (per job, then summed)."""
    peak = region.detach().flatten(1).amax(1).view(-1, 1, 1)
    mask = region.detach() > threshold * peak
    return ((region - start).abs() * mask).sum()


def ascend(x: Tensor, grad: Tensor, xi: float) -> Tensor:
    """x + ξ·∇/max|∇| clamped to x's range, both per job (over its views, channels, pixels)."""
    per_job = (-1,) + (1,) * (x.ndim - 1)
    step = grad / (grad.abs().flatten(1).amax(1).view(per_job) + 1e-12)
    low, high = x.flatten(1).amin(1).view(per_job), x.flatten(1).amax(1).view(per_job)
    return torch.minimum(torch.maximum(x + xi * step, low), high)


def climb(
    model: nn.Module,
    views: Tensor,
    classes: Tensor,
    *,
    branch: int,
    steps: int,
    xi: float,
    lam: float,
    mask_threshold: float,
    grad_pool: str = "positive",
    num_classes: int,
) -> Climb:
    """Anti-adversarial steps of J jobs (``views`` J×V×3×H×W, target ``classes`` J) on one branch."""
    n_views = views.shape[1]
    rows = classes.repeat_interleave(n_views)[:, None]
    x, total, start, n_branches = views, None, None, 0
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        branches = model.gradcam_branches(x.flatten(0, 1))
        n_branches = len(branches)
        features, scores = branches[branch]
        fg = foreground(scores, num_classes)
        target = pooled(fg, "sum").gather(1, rows).sum()
        region = class_regions(features, target, n_views, grad_pool)
        start = region.detach() if start is None else start
        total = region.detach() if total is None else total + region.detach()
        if t == steps - 1:
            break
        s = pooled(fg, "mean")
        objective = (2 * s.gather(1, rows).sum() - s.sum()) - lam * growth_penalty(
            region, start, mask_threshold
        )
        (grad,) = torch.autograd.grad(objective, x)
        x = ascend(x.detach(), grad, xi)
    assert total is not None
    return Climb(total, x.detach(), n_branches)


@dataclass(frozen=True, kw_only=True)
class AdvCAM:
    """``CAM_EXTRACTORS["advcam"]``: accumulated Grad-CAM under anti-adversarial steps, per branch.

    ``steps`` (27), ``xi`` step size (0.08), ``lam`` regulariser weight (7), ``mask_threshold`` of
    the regularised region (0.5), ``fusion`` branch weights (None: equal), ``grad_pool`` Grad-CAM
    channel weights; ``max_jobs`` (image, class) pairs per forward, each with its mirror (1 = the
    authors' batch; more is faster on a GPU and equal unless the model's normalisation mixes
    rows); ``short_scale``: the scale that gets AdvCAM's shorter loop (AMR: 0.5; None: off).
    """

    steps: int = 27
    xi: float = 0.08
    lam: float = 7.0
    mask_threshold: float = 0.5
    fusion: Sequence[float] | None = None
    grad_pool: str = "positive"
    max_jobs: int = 1
    short_scale: float | None = None
    needs_grad: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_grad_pool(self.grad_pool)
        object.__setattr__(self, "fusion", check_fusion(self.fusion))
        if self.steps < 1 or self.max_jobs < 1:
            raise ConfigError(f"advcam steps and max_jobs must be >= 1, got {self.steps}, {self.max_jobs}")
        if self.xi <= 0 or self.lam < 0 or not 0 <= self.mask_threshold <= 1:
            raise ConfigError(
                f"advcam needs xi > 0, lam >= 0, 0 <= mask_threshold <= 1; "
                f"got {self.xi}, {self.lam}, {self.mask_threshold}"
            )

    def steps_at(self, scale: float) -> int:
        return authors_steps(self.steps) if scale == self.short_scale else self.steps

    def __call__(
        self, model: nn.Module, images: Tensor, labels: Tensor, *, flip: bool = True, scale: float = 1.0
    ) -> Tensor:
        """B×branches×(1+K)×h×w accumulated maps of ``images`` (B×3×H×W) for ``labels`` (B×K)."""
        require_grad()
        num = labels.shape[1]
        jobs = torch.nonzero(labels > 0.5)  # (image, class) rows, image-major
        if len(jobs) == 0:  # nothing to climb: zero maps of the right shape
            with torch.no_grad():
                branches = model.gradcam_branches(with_views(images, flip).flatten(0, 1))
            return images.new_zeros(len(images), len(branches), num + 1, *branches[0][0].shape[-2:])
        views = with_views(images, flip)
        run_jobs = partial(
            climb,
            model,
            steps=self.steps_at(scale),
            xi=self.xi,
            lam=self.lam,
            mask_threshold=self.mask_threshold,
            grad_pool=self.grad_pool,
            num_classes=num,
        )
        per_branch: list[Tensor] = []
        n_branches = 1
        while len(per_branch) < n_branches:
            maps = None
            for start in range(0, len(jobs), self.max_jobs):
                chunk = jobs[start : start + self.max_jobs]
                run = run_jobs(views[chunk[:, 0]], chunk[:, 1], branch=len(per_branch))
                n_branches = run.branches
                if maps is None:
                    maps = run.maps.new_zeros(len(images), num + 1, *run.maps.shape[-2:])
                maps[chunk[:, 0], 1 + chunk[:, 1]] = run.maps
            assert maps is not None
            per_branch.append(maps)
        return stack_branches(per_branch)

    def fuse(self, sums: Tensor, normalise: Callable[[Tensor], Tensor]) -> Tensor:
        """The stored maps from per-branch pass sums (:func:`wsss.cams.gradcam.fuse_branches`)."""
        return fuse_branches(sums, normalise, self.fusion)
